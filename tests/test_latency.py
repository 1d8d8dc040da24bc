"""Inference figures: model size and latency per chip (trainer/commands/latency.py)."""
from __future__ import annotations

import io
import math
import time

import pytest
import torch
from torch import nn

from trainer.commands import latency


class Sleeper(nn.Module):
    """A 'model' whose forward takes a known wall time whatever the batch size."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return torch.zeros(x.shape[0], 2)


def tiny_model() -> nn.Module:
    from trainer.models import build_model

    return build_model({"name": "resnet_cifar", "depth": 8, "width": 4}, 4)


def test_parameter_count_and_state_dict_bytes() -> None:
    model = nn.Sequential(nn.Linear(10, 20), nn.BatchNorm1d(20))
    assert latency.parameter_count(model) == 10 * 20 + 20 + 20 + 20
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    assert latency.state_dict_bytes(model) == len(buf.getvalue())
    # fp32 weights plus BN buffers plus the pickle's overhead: at least 4 bytes per parameter.
    assert latency.state_dict_bytes(model) > 4 * latency.parameter_count(model)


def test_latency_is_median_wall_time_divided_by_batch() -> None:
    model = Sleeper(0.01)
    one = latency.latency_per_chip(model, 1, 8, torch.device("cpu"), warmup=1, repeats=3)
    ten = latency.latency_per_chip(model, 10, 8, torch.device("cpu"), warmup=1, repeats=3)
    # Loose upper bounds: the machine is shared, sleeps overshoot under load.
    assert 0.009 < one < 0.1
    assert 0.0009 < ten < 0.01


def test_measure_reports_every_figure_and_restores_mode() -> None:
    model = tiny_model().train()
    fig = latency.measure(model, 16, device=torch.device("cpu"), large_batch=8, tta_views=1,
                            warmup=1, repeats=2)
    assert model.training, "measure must give the model back in the mode it came in"
    assert fig["parameters"] == sum(p.numel() for p in model.parameters())
    assert math.isclose(fig["state_dict_mib"], fig["state_dict_bytes"] / 2**20)
    assert set(fig["latency_s_per_chip"]) == {"batch_1", "batch_8"}
    assert all(0 < v < 1 for v in fig["latency_s_per_chip"].values())
    assert fig["device"].startswith("cpu")
    md = latency.to_markdown(fig)
    assert "| 1 | 1 (none) |" in md and "| 8 | 1 (none) |" in md and "MiB" in md


def test_measure_with_tta_uses_the_evaluation_tta() -> None:
    pytest.importorskip("trainer.evaluate.metrics")
    fig = latency.measure(tiny_model(), 16, device=torch.device("cpu"), large_batch=4, tta_views=3,
                            warmup=1, repeats=2)
    lat = fig["latency_s_per_chip"]
    assert set(lat) == {"batch_1", "batch_1_tta3", "batch_4", "batch_4_tta3"}
    assert "| 4 | 3 |" in latency.to_markdown(fig)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_on_cuda() -> None:
    fig = latency.measure(tiny_model(), 16, device=torch.device("cuda"), large_batch=64, tta_views=1,
                            warmup=2, repeats=3)
    assert fig["device"].startswith("cuda")
    assert all(v > 0 for v in fig["latency_s_per_chip"].values())
