"""What a run shows in a log file: progress lines, validation lines, the end-of-run summary;
and history.jsonl counting steps the same way in train and val rows."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from trainer.train.progress import format_seconds
from trainer_helpers import PYTHON, REPO, TINY, build_tiny


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny"), with_test=False)


def test_format_seconds():
    assert format_seconds(4.21) == "4.2s"
    assert format_seconds(65) == "1m05s"
    assert format_seconds(3725) == "1h02m05s"
    assert format_seconds(float("nan")) == "?"


@pytest.mark.slow
def test_sixty_step_run_logged_to_a_file(shards, tmp_path):
    run, log = tmp_path / "run", tmp_path / "train.log"
    tiny = [o for o in TINY if not o.startswith(("run.log_every", "run.progress_bar"))]
    cmd = [PYTHON, "-m", "trainer", "--config", "joint_mini", f"data.shards={shards}", f"run.dir={run}",
           *tiny, "stages.0.steps=60", "run.log_every=4"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:   # stdout and stderr to a file, as a batch job's log
        done = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=600)
    text = log.read_text()
    assert done.returncode == 0, text
    lines = text.splitlines()
    steps = [s for s in lines if s.startswith("stage 0 joint step ")]
    assert len(steps) >= 3 and all(" loss " in s and " img/s " in s and " ETA " in s for s in steps), text
    done_steps, total = steps[-1].split()[4].split("/")   # 60 steps resolve to whole epochs
    assert done_steps == total and abs(int(total) - 60) < 10
    assert any(" val top1 " in s for s in lines)
    end = next(i for i, s in enumerate(lines) if s.startswith("finished in "))
    assert end > lines.index(steps[-1])
    assert f"run folder {run}" in lines[end]
    assert "metrics.json" in text and f"python -m trainer report {run}" in text
    assert len((run / "metrics_per_class.csv").read_text().splitlines()) == 5   # header + 4 classes
    assert "\r" not in text  # no progress bar in a log file
    assert "  CPU threads: 1 per process (OMP_NUM_THREADS)" in lines

    history = [json.loads(s) for s in (run / "history.jsonl").read_text().splitlines()]
    per_epoch = history[0]["step"] if history[0]["kind"] == "train" else None
    assert per_epoch is not None
    for row, nxt in zip(history, history[1:]):   # an epoch's last train row and its val row agree
        if nxt["kind"] == "val":
            assert row["kind"] == "train" and row["step"] == nxt["step"] and row["epoch"] == nxt["epoch"]
    assert max(h["step"] for h in history) == int(total)
