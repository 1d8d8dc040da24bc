"""One stage's mechanics: head transition, trainable part, optimizer and LR schedule."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.spec.resolve import OptimSpec, StageSpec


# ---------------------------------------------------------------- head
def apply_head(model: nn.Module, stage: StageSpec, num_classes: int,
               restored: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    """keep | subset (rows of the listed classes kept) | expand (back to all classes, learned
    rows kept; `restored` gives (weight, bias) rows for classes added back) | reset (fresh
    classifier over the same classes, as cRT does)."""
    head = model.classifier
    if stage.head == "subset":
        head.subset(stage.head_classes)
    elif stage.head == "expand":
        added = [c for c in range(num_classes) if c not in head.classes]
        head.expand(num_classes)
        with torch.no_grad():
            for c in added if restored else []:
                head.weight[c].copy_(restored[c][0])
                if head.bias is not None:
                    head.bias[c].copy_(restored[c][1])
    elif stage.head == "reset":
        head.subset(head.classes)  # same classes …
        with torch.no_grad():       # … fresh rows, initialised like nn.Linear
            fresh = type(head)(head.in_features, head.classes, head.normalized).to(head.weight.device)
            head.weight.copy_(fresh.weight)
            if head.bias is not None:
                head.bias.copy_(fresh.bias)


# ---------------------------------------------------------------- trainable part
def trainable_modules(model: nn.Module, part: str) -> list[nn.Module]:
    if part == "all":
        return [model]
    if part == "classifier":
        return [model.classifier]
    if part == "last_block":
        if not hasattr(model, "last_block"):
            raise ConfigError(f"train: last_block: model {type(model).__name__} has no last_block()")
        return [model.last_block(), model.classifier]
    raise ConfigError(f"train: {part!r} is not one of all, classifier, last_block")


def set_trainable(model: nn.Module, part: str) -> list[nn.Parameter]:
    """Freeze everything outside `part`; return the parameters that train."""
    model.requires_grad_(False)
    for m in trainable_modules(model, part):
        m.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: nn.Module, part: str) -> None:
    """Frozen modules stay in eval mode, so their BatchNorm running statistics do not move
    (and Shake-Shake uses its deterministic evaluation mix in a frozen backbone)."""
    model.eval()
    for m in trainable_modules(model, part):
        m.train()


# ---------------------------------------------------------------- optimizer and schedule
def build_optimizer(params: list[nn.Parameter], opt: OptimSpec, impl: str = "auto") -> torch.optim.Optimizer:
    """SGD with momentum; `impl` picks torch's foreach or fused kernels (auto: fused on CUDA).
    The learning rate is set before every step by `set_lr`."""
    flags = {}
    cuda = bool(params) and params[0].is_cuda
    if impl == "auto":
        impl = "fused" if cuda else "foreach"
    if impl in ("foreach", "fused"):
        flags[impl] = True
    return torch.optim.SGD(params, lr=opt.lr, momentum=opt.momentum,
                           nesterov=opt.nesterov and opt.momentum > 0,
                           weight_decay=opt.weight_decay, **flags)


def lr_at(step: int, total_steps: int, warmup_steps: int, opt: OptimSpec) -> float:
    """Linear warmup, then cosine (or constant) down to min_lr. A pure function of the step, so
    resume needs no scheduler state (and Accelerate's per-process scheduler stepping is moot)."""
    base, low = opt.lr, opt.min_lr
    if warmup_steps > 0 and step < warmup_steps:
        return base * (step + 1) / warmup_steps
    if opt.schedule == "constant":
        return base
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return low + (base - low) * 0.5 * (1 + math.cos(math.pi * t))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclass
class Schedule:
    micro_per_epoch: int      # batches per rank per epoch
    grad_accum: int
    epochs: int
    warmup_epochs: float

    @property
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.micro_per_epoch / self.grad_accum))

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_epochs * self.steps_per_epoch))
