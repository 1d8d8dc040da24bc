"""Inference figures of a model: size (parameters, MiB of the saved state_dict) and latency per
chip at batch 1 and at a large batch, with and without test-time augmentation, on one device.

Latency is wall time of a full forward pass (no autograd) after warmup, the median over repeats,
divided by the batch size. On CUDA the device is synchronised around every timed call, so the
number is the time until the logits exist, not the launch time.
"""
from __future__ import annotations

import io
import os
import platform
import statistics
import time
from typing import Callable

import torch
from torch import nn

from trainer.evaluate.scoring import tta_logits


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def state_dict_bytes(model: nn.Module) -> int:
    """Bytes that `torch.save(model.state_dict())` writes (what a stage's model.pt holds)."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _forward_fn(model: nn.Module, tta_views: int) -> Callable[[torch.Tensor], torch.Tensor]:
    if tta_views <= 1:
        return model
    return lambda x: tta_logits(model, x, tta_views)  # the same TTA the evaluation uses


def latency_per_chip(model: nn.Module, batch: int, input_size: int, device: torch.device, *,
                     tta_views: int = 1, warmup: int = 3, repeats: int = 10, channels: int = 1) -> float:
    """Median seconds per chip of a forward pass of `batch` chips (random input, same shape as
    the real chips: [B, channels, S, S])."""
    fn = _forward_fn(model, tta_views)
    x = torch.randn(batch, channels, input_size, input_size, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            t0 = time.perf_counter()
            fn(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) / batch


def measure(model: nn.Module, input_size: int, *, device: torch.device | str | None = None,
            large_batch: int = 256, tta_views: int = 3, warmup: int = 3, repeats: int = 10,
            channels: int = 1) -> dict:
    """All inference figures as a JSON-ready dict (seconds per chip under `latency_s_per_chip`)."""
    device = torch.device(device) if device is not None else default_device()
    was_training = model.training
    model = model.to(device).eval()
    n_bytes = state_dict_bytes(model)
    latency = {}
    for name, batch in (("batch_1", 1), (f"batch_{large_batch}", large_batch)):
        for views in sorted({1, tta_views}):
            key = name if views == 1 else f"{name}_tta{views}"
            latency[key] = latency_per_chip(model, batch, input_size, device, tta_views=views,
                                            warmup=warmup, repeats=repeats, channels=channels)
    model.train(was_training)
    return {"parameters": parameter_count(model), "state_dict_bytes": n_bytes,
            "state_dict_mib": n_bytes / 2**20, "device": device_name(device),
            "input_size": input_size, "large_batch": large_batch, "tta_views": tta_views,
            "warmup": warmup, "repeats": repeats, "latency_s_per_chip": latency,
            "torch": torch.__version__, "host": os.uname().nodename}


def to_markdown(fig: dict) -> str:
    """The figures as a short markdown table, latencies in ms per chip."""
    lines = [f"- parameters: {fig['parameters']:,} ({fig['parameters'] / 1e6:.3g} M)",
             f"- saved state_dict: {fig['state_dict_mib']:.2f} MiB ({fig['state_dict_bytes']:,} bytes)",
             f"- device: {fig['device']} (torch {fig['torch']}), input {fig['input_size']}×{fig['input_size']},"
             f" fp32, median of {fig['repeats']} repeats after {fig['warmup']} warmup",
             "", "| batch | TTA views | latency per chip (ms) | chips/s |", "|---|---|---|---|"]
    for key, sec in fig["latency_s_per_chip"].items():
        batch = key.split("_")[1]
        views = key.split("_tta")[1] if "_tta" in key else "1 (none)"
        lines.append(f"| {batch} | {views} | {1000 * sec:.3f} | {1 / sec:,.0f} |")
    return "\n".join(lines)
