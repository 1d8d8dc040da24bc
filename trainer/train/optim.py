"""The optimizer of a stage: SGD with momentum; the learning rate is set before every step
from the stage's schedule (trainer.spec.schedule)."""
from __future__ import annotations

import torch
from torch import nn

from trainer.spec.resolve import OptimSpec


def build_optimizer(params: list[nn.Parameter], settings: OptimSpec, impl: str = "auto") -> torch.optim.Optimizer:
    """SGD with momentum; `impl` picks torch's foreach or fused kernels (auto: fused on CUDA).
    The learning rate is set before every step by `set_lr`."""
    flags = {}
    cuda = bool(params) and params[0].is_cuda
    if impl == "auto":
        impl = "fused" if cuda else "foreach"
    if impl in ("foreach", "fused"):
        flags[impl] = True
    return torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum,
                           nesterov=settings.nesterov and settings.momentum > 0,
                           weight_decay=settings.weight_decay, **flags)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
