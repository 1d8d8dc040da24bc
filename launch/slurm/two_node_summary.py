"""The two-node check's summary: OUT/two_node_check.json from the run's run.json and the timings.

    python launch/slurm/two_node_summary.py OUT.json RUN/run.json WHAT ACC name=seconds ...
"""
import ast
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))   # the repository, as `python -m` would

from shards.atomic import write_json  # noqa: E402


def main(argv: list[str]) -> None:
    path, run_json, what, acc, *parts = argv
    seconds = {k: float(v) for k, v in (p.split("=") for p in parts)}
    run = json.loads(Path(run_json).read_text())
    write_json(path, {"ok": True, "hosts": run["hosts"], "world_size": run["world_size"], "seconds": seconds,
                      "test_per_class_acc": ast.literal_eval(acc), "unreachable_head": what}, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
