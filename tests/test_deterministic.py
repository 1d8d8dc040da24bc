"""speed.deterministic: the recipe option that makes CUDA reruns (and a resume) bit-identical."""
from __future__ import annotations

import os

import pytest
import torch

from trainer.spec.config import validate
from trainer.errors import ConfigError
from trainer.preflight import SpeedSpec, set_deterministic


def recipe(**speed) -> dict:
    return validate({"data": {"shards": "-"}, "speed": speed, "stages": [{"name": "s", "epochs": 1}]})


@pytest.fixture
def restore_flags(monkeypatch):
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]


def test_off_by_default_and_checked():
    assert recipe()["speed"]["deterministic"] is False
    assert recipe(deterministic=True)["speed"]["deterministic"] is True
    with pytest.raises(ConfigError, match="deterministic"):
        recipe(deterministic="yes")


def test_deterministic_turns_cudnn_autotuning_off():
    on_cuda = SpeedSpec.resolve(recipe()["speed"], cuda=True)
    assert on_cuda.cudnn_benchmark and not on_cuda.deterministic
    det = SpeedSpec.resolve(recipe(deterministic=True)["speed"], cuda=True)
    assert det.deterministic and not det.cudnn_benchmark
    assert SpeedSpec.resolve(recipe(deterministic=True, cudnn_benchmark=True)["speed"], cuda=True).cudnn_benchmark is False


def test_set_deterministic_sets_every_switch(restore_flags):
    torch.backends.cudnn.benchmark = True
    set_deterministic()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark


def test_a_workspace_setting_given_by_the_launcher_is_kept(restore_flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    set_deterministic()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
