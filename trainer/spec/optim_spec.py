"""A stage's optimizer settings (no torch: the recipe schema reads its defaults before torch loads)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimSpec:
    """A stage's optimizer settings: the global `optim` with the stage's `optim` on top. The
    defaults are the recipe's (trainer.spec.schema reads them from here)."""
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    schedule: str = "cosine"          # cosine | constant | step (trainer.spec.schedule)
    min_lr: float = 0.0
    grad_accum: int = 1
