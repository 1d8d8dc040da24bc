"""`python -m trainer bench`: both loops run the same steps, the ratio is printed side by side."""
from __future__ import annotations

import json
import pytest
import torch

from trainer.__main__ import main
from trainer.commands.bench import bare_epoch, make_batches, trainer_setup

SMALL = ["--model", "resnet_cifar", "--depth", "8", "--width", "8", "--size", "16", "--batch", "8",
         "--steps", "2", "--repeats", "1"]


def test_bench_prints_ratio(capsys):
    assert main(["bench", "step", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "trainer" in out and "bare" in out and "ratio trainer/bare" in out


def test_bench_json(capsys):
    assert main(["bench", "step", *SMALL, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    r = res[0]
    assert r["trainer_images_per_s"] > 0 and r["bare_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["trainer_images_per_s"] / r["bare_images_per_s"])


def test_bench_bad_arguments(capsys):
    assert main(["bench", "step", "--steps", "0"]) == 2
    assert "error:" in capsys.readouterr().err


def test_trainer_step_equals_bare_step():
    """Same start, same batches: the trainer's epoch and the bare loop end with the same weights
    (so the benchmark compares equal work)."""
    batches = make_batches(3, 8, 16, 10, torch.device("cpu"))
    cfg = {"name": "resnet_cifar", "depth": 8, "width": 8}
    # the bare loop has a fixed LR
    acc, run_epoch, model, bare, bare_opt = trainer_setup(cfg, batches, "no", 10, lr_schedule="constant")
    run_epoch(0)
    bare_epoch(bare, bare_opt, batches)
    a, b = acc.unwrap_model(model).state_dict(), bare.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)

