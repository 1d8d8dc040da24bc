"""A stage's structural change: the head transition, and which part of the model trains
(recipe key `train`)."""
from __future__ import annotations

import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.spec.resolve import StageSpec


def apply_head(model: nn.Module, stage: StageSpec, num_classes: int,
               restored: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    """keep | subset (rows of the listed classes kept) | expand (back to all classes, learned
    rows kept; `restored` gives (weight, bias) rows for classes added back) | reset (fresh
    classifier over the same classes, as cRT does)."""
    head = model.classifier
    if stage.head_change == "subset":
        head.subset(stage.head_classes)
    elif stage.head_change == "expand":
        added = [c for c in range(num_classes) if c not in head.classes]
        head.expand(num_classes)
        with torch.no_grad():
            for c in added if restored else []:
                head.weight[c].copy_(restored[c][0])
                if head.bias is not None:
                    head.bias[c].copy_(restored[c][1])
    elif stage.head_change == "reset":
        head.subset(head.classes)  # same classes …
        with torch.no_grad():       # … fresh rows, initialised like nn.Linear
            fresh = head.like()
            head.weight.copy_(fresh.weight)
            if head.bias is not None:
                head.bias.copy_(fresh.bias)


def trainable_modules(model: nn.Module, train: str) -> list[nn.Module]:
    if train == "all":
        return [model]
    if train == "classifier":
        return [model.classifier]
    if train == "last_block":
        if not hasattr(model, "last_block"):
            raise ConfigError(f"train: last_block: model {type(model).__name__} has no last_block()")
        return [model.last_block(), model.classifier]
    raise ConfigError(f"train: {train!r} is not one of all, classifier, last_block")


def set_trainable(model: nn.Module, train: str) -> list[nn.Parameter]:
    """Freeze everything outside the part `train` names (all | classifier | last_block);
    return the parameters that train."""
    model.requires_grad_(False)
    for m in trainable_modules(model, train):
        m.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_train_mode(model: nn.Module, train: str, bn: str = "eval") -> None:
    """Frozen modules stay in eval mode, so their BatchNorm running statistics do not move
    (and Shake-Shake uses its deterministic evaluation mix in a frozen backbone); bn: train puts
    the BatchNorm layers of the frozen part in train mode, which re-estimates their statistics
    on the stage's batches (classifier-balancing's cRT) and leaves Shake-Shake's mix alone."""
    model.eval()
    if bn == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    for m in trainable_modules(model, train):
        m.train()


