"""The hostile-input tests can write what each case did as a Markdown table row: set
CASE_TABLE=FILE (e.g. `CASE_TABLE=cases.md pytest tests/test_hostile.py tests/test_hostile_run.py`).
Rows are appended: case, exit code, the error line, the paths that changed."""
from __future__ import annotations

import os


def record(case: str, code: int, line: str, changed: set[str]) -> None:
    path = os.environ.get("CASE_TABLE")
    if not path:
        return
    left = ", ".join(f"`{p}`" for p in sorted(changed)[:4]) + (" …" if len(changed) > 4 else "")
    cell = line.replace("|", "\\|")
    with open(path, "a") as f:
        f.write(f"| {case} | {code} | `{cell}` | {left or 'nothing'} |\n")
