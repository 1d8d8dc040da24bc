"""A stage's length and learning-rate schedule: the one place steps, epochs and lr(step) are computed.

`StageSpec.schedule` (trainer.spec.resolve) is built from the recipe against the shards; the
start banner reads it, the training loop uses it with the stream's real batch count
(`with_batches`), and post-hoc head training builds one the same way. `lr(step)` is a pure
function of the step, so resume needs no scheduler state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

LENGTHS = ("epochs", "steps", "samples")   # a stage (or a post-hoc head) gives at most one


@dataclass(frozen=True)
class Schedule:
    micro_per_epoch: int      # batches per rank per epoch
    epochs: int
    lr_max: float
    grad_accum: int = 1
    warmup_epochs: float = 0.0
    kind: str = "cosine"      # cosine | constant | step
    lr_min: float = 0.0

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.micro_per_epoch / self.grad_accum))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_epochs * self.steps_per_epoch))

    def with_batches(self, micro_per_epoch: int) -> "Schedule":
        """The same schedule over the batches a stream really yields per rank and epoch."""
        return replace(self, micro_per_epoch=micro_per_epoch)

    def lr(self, step: int) -> float:
        """Linear warmup, then cosine down to lr_min, constant, or step: ×0.01 from 80% of the
        stage's steps and ×0.0001 from 90% (kaidic/LDAM-DRW's CIFAR schedule, epochs 160 and
        180 of 200; lr_min is not used)."""
        warm = self.warmup_steps
        if warm > 0 and step < warm:
            return self.lr_max * (step + 1) / warm
        if self.kind == "constant":
            return self.lr_max
        if self.kind == "step":
            done = step / max(1, self.total_steps)
            return self.lr_max * (1e-4 if done >= 0.9 else 1e-2 if done >= 0.8 else 1.0)
        t = min(1.0, (step - warm) / max(1, self.total_steps - warm))
        return self.lr_min + (self.lr_max - self.lr_min) * 0.5 * (1 + math.cos(math.pi * t))


def micro_batches(samples: int, global_batch: int, grad_accum: int) -> int:
    """Micro-batches per rank in an epoch of `samples` (as datasets.sampling.rank_batches cuts it)."""
    return math.ceil(samples * grad_accum / global_batch)


def epochs_for(lengths: dict, steps_per_epoch: int, global_batch: int) -> tuple[int, str]:
    """Whole epochs closest to the length asked for (`epochs | steps | samples`, at least 1
    unless epochs: 0 is given), and the length as given, e.g. "600 steps"."""
    given = [k for k in LENGTHS if lengths.get(k) is not None]
    if not given:
        return 1, "1 epochs"
    key, value = given[0], int(lengths[given[0]])
    if key == "epochs":
        return value, f"{value} epochs"
    steps = value if key == "steps" else math.ceil(value / global_batch)
    return max(1, round(steps / steps_per_epoch)), f"{value} {key}"
