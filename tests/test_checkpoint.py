"""Atomic checkpoints: a complete folder or the previous one, never a half-written one; a
checkpoint of another model is refused with a clear error."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from trainer.train import checkpoint
from trainer.errors import TrainingError
from trainer.models import build_model


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def prepared(accelerator, width=8):
    accelerator.free_memory()
    torch.manual_seed(0)
    model = build_model({"name": "resnet_cifar", "depth": 8, "width": width}, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return accelerator.prepare(model, opt)


def test_save_load_roundtrip_and_progress(accelerator, tmp_path):
    model, opt = prepared(accelerator)
    sig = checkpoint.model_signature(model, {"name": "resnet_cifar"}, [0, 1, 2, 3])
    checkpoint.save(accelerator, tmp_path, {"stage": 1, "epoch": 2, "batch": 0, "model_signature": sig})
    assert checkpoint.read_progress(tmp_path)["epoch"] == 2
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["last"]  # temp and old folders are gone
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.rand(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    checkpoint.load(accelerator, root / "last")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.rand(3), rng)  # RNG state restored to the save point

    checkpoint.save(accelerator, tmp_path, {"stage": 1, "epoch": 3, "batch": 5, "model_signature": sig})
    assert checkpoint.read_progress(tmp_path)["batch"] == 5


def test_crash_between_renames_keeps_previous_checkpoint(accelerator, tmp_path):
    model, _ = prepared(accelerator)
    checkpoint.save(accelerator, tmp_path, {"stage": 0, "epoch": 1, "batch": 0})
    root = tmp_path / "checkpoints"
    # Simulate a kill after `last` was moved aside and before the new one was renamed in.
    (root / "last").rename(root / checkpoint.OLD)
    shutil.copytree(root / checkpoint.OLD, root / checkpoint.TMP)
    (root / checkpoint.TMP / "progress.json").unlink()  # the new one never completed
    assert checkpoint.latest(tmp_path) == root / checkpoint.OLD
    assert checkpoint.read_progress(tmp_path)["epoch"] == 1
    checkpoint.save(accelerator, tmp_path, {"stage": 0, "epoch": 2, "batch": 0})
    assert checkpoint.latest(tmp_path) == root / "last"
    assert sorted(p.name for p in root.iterdir()) == ["last"]


def test_no_checkpoint(tmp_path):
    assert checkpoint.latest(tmp_path) is None and checkpoint.read_progress(tmp_path) is None


def test_unreadable_progress(tmp_path):
    folder = tmp_path / "checkpoints" / "last"
    folder.mkdir(parents=True)
    (folder / "progress.json").write_text("{broken")
    with pytest.raises(TrainingError, match="progress.json"):
        checkpoint.read_progress(tmp_path)


def test_other_model_is_refused(accelerator, tmp_path):
    model, _ = prepared(accelerator, width=8)
    sig = checkpoint.model_signature(model, {"name": "resnet_cifar", "width": 8}, [0, 1, 2, 3])
    checkpoint.save(accelerator, tmp_path, {"stage": 0, "epoch": 1, "batch": 0, "model_signature": sig})
    other, _ = prepared(accelerator, width=16)
    want = checkpoint.model_signature(other, {"name": "resnet_cifar", "width": 16}, [0, 1, 2, 3])
    progress = checkpoint.read_progress(tmp_path)
    with pytest.raises(TrainingError, match="checkpoint is from another model"):
        checkpoint.check_compatible(progress, want, tmp_path / "checkpoints" / "last")
    # Even without the signature check, loading the state itself fails cleanly.
    with pytest.raises(TrainingError, match="cannot load checkpoint"):
        checkpoint.load(accelerator, tmp_path / "checkpoints" / "last")


def test_progress_is_json(accelerator, tmp_path):
    prepared(accelerator)
    checkpoint.save(accelerator, tmp_path, {"stage": 2, "epoch": 0, "batch": 3, "best": None})
    data = json.loads((tmp_path / "checkpoints" / "last" / "progress.json").read_text())
    assert data == {"stage": 2, "epoch": 0, "batch": 3, "best": None}
