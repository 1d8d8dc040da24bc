"""RUN/history.jsonl: one JSON record per logged train window and per validation."""
from __future__ import annotations

import json
from pathlib import Path

from shards.atomic import write_atomic


class History:
    """Written by the main process only; truncated on resume to what the checkpoint covers."""

    def __init__(self, path: Path, keep_lines: int | None, enabled: bool) -> None:
        self.path, self.enabled, self.lines = path, enabled, 0
        if not enabled:
            return
        old = path.read_text().splitlines() if path.is_file() else []
        old = old[:keep_lines] if keep_lines is not None else []
        write_atomic(path, "".join(line + "\n" for line in old))
        self.lines = len(old)
        self.file = open(path, "a")

    def write(self, record: dict) -> None:
        if self.enabled:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            self.lines += 1

    def close(self) -> None:
        if self.enabled:
            self.file.close()
