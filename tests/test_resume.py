"""Exact resume: a run killed (SIGKILL), preempted (SIGTERM, mid-epoch) or crashed at step k
and then resumed ends with the same weights and metrics as an uninterrupted run.

The recipe has three stages with head changes (subset, expand), Shake-Shake (random forward
mixing), random augmentation and class-balanced sampling, so any lost RNG state or sampler
position would show in the final numbers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from trainer_helpers import PYTHON, REPO, TINY, build_tiny

pytestmark = pytest.mark.slow

RECIPE = {
    "seed": 3,
    "data": {"shards": None, "tta": 2},
    "model": {"name": "shake_shake", "depth": 8, "width": 8},
    "optim": {"lr": 0.05, "warmup_epochs": 0.5},
    "stages": [
        {"name": "all", "epochs": 1, "augment": {"rotate": "free", "hflip": True, "speckle": 0.2}},
        {"name": "rest", "epochs": 2, "head": "subset", "sampler": {"classes": [1, 2, 3]},
         "augment": {"rotate": "right", "translate": 2}},
        {"name": "balanced", "epochs": 1, "head": "expand", "train": "last_block",
         "sampler": {"kind": "class", "per_class": 8}, "augment": {"crop_scale": [0.7, 1.0]}},
    ],
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    shards = build_tiny(root, with_test=False)
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "data": {**RECIPE["data"], "shards": str(shards)}}))
    reference = root / "reference"
    proc = launch(recipe, reference)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    return recipe, reference


def command(recipe: Path, run: Path, fail_at_step: int | None = None) -> list[str]:
    if fail_at_step is None:
        return [PYTHON, "-m", "trainer", "--config", str(recipe), f"run.dir={run}", *TINY]
    return [PYTHON, str(REPO / "tests" / "hooked_trainer.py"), "--fail-at-step", str(fail_at_step),
            "--config", str(recipe), f"run.dir={run}", *TINY]


def launch(recipe: Path, run: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command(recipe, run), cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def progress(run: Path) -> dict | None:
    try:
        return json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before the kill point: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("kill point never reached")


def resume(run: Path) -> None:
    r = subprocess.run([PYTHON, "-m", "trainer", "resume", str(run)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def assert_same_result(run: Path, reference: Path) -> None:
    a = json.loads((run / "metrics.json").read_text())
    b = json.loads((reference / "metrics.json").read_text())
    assert a == b
    for folder in sorted((reference / "stages").iterdir()):
        wa = torch.load(run / "stages" / folder.name / "model.pt", weights_only=True)
        wb = torch.load(folder / "model.pt", weights_only=True)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), folder.name
    ha = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (reference / "history.jsonl").read_text().splitlines()]
    val = lambda h: [(r["stage"], r["epoch"], r["top1"]) for r in h if r["kind"] == "val"]
    assert val(ha) == val(hb)  # no duplicated or lost epochs in the history


def test_sigkill_mid_stage_then_resume(setup, tmp_path):
    recipe, reference = setup
    run = tmp_path / "run"
    proc = launch(recipe, run)
    # Kill right after the first checkpoint of stage 1 (head subset): mid-stage, mid-epoch.
    wait_for(lambda: (p := progress(run)) is not None and p["stage"] == 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()
    resume(run)
    assert_same_result(run, reference)


def test_preempted_mid_epoch_then_same_command_again(setup, tmp_path):
    recipe, reference = setup
    run = tmp_path / "run"
    proc = launch(recipe, run, env={"SAR_PREEMPT_TEST_DELAY": "0.15"})
    wait_for(lambda: (p := progress(run)) is not None and p["stage"] == 1, proc)
    time.sleep(0.4)  # a couple of steps into the epoch
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, proc.stderr.read()
    p = progress(run)
    assert p["batch"] > 0, p  # the checkpoint is mid-epoch
    assert not (run / "metrics.json").exists()
    r = subprocess.run(command(recipe, run), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_same_result(run, reference)


def test_crash_at_step_then_resume(setup, tmp_path):
    recipe, reference = setup
    run = tmp_path / "run"
    # 7 steps in stage 0, 3 per epoch in stage 1: step 12 is in stage 1, epoch 1.
    r = subprocess.run(command(recipe, run, fail_at_step=12), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0 and "injected failure at global step 12" in r.stderr
    assert (progress(run)["stage"], progress(run)["epoch"]) == (1, 1)
    resume(run)
    assert_same_result(run, reference)


def test_resume_refuses_other_model_checkpoint(setup, tmp_path):
    recipe, reference = setup
    run = tmp_path / "run"
    r = subprocess.run(command(recipe, run, fail_at_step=9), cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode != 0
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["model"]["width"] = 16  # someone edits the run's recipe: the checkpoint no longer fits
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([PYTHON, "-m", "trainer", "resume", str(run)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert "checkpoint is from another model" in r.stderr and r.stderr.startswith("error: ")
