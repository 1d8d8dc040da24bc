"""The one loop that trains a classifier head on a frozen representation (cRT, LWS).

SGD with momentum and a cosine schedule (trainer.spec.schedule) with cross-entropy, on
class-balanced batches of features. The batches come either from augmented chips through the
frozen backbone (`features: stream`, as classifier-balancing trains cRT; trainer.posthoc.fit
makes them) or from one unaugmented view computed once (`features: cached`, `feature_batches`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError
from trainer.spec.schedule import LENGTHS, Schedule, epochs_for, micro_batches

Batches = Callable[[int], Iterable[tuple[torch.Tensor, torch.Tensor]]]   # epoch -> (features, targets)


@dataclass(frozen=True)
class HeadTrainingOptions:
    """The recipe's posthoc.crt / posthoc.lws section. No length given: the classifier's default epochs."""
    features: str = field(default="stream", metadata={"choices": ("stream", "cached")})
    epochs: int | None = None
    steps: int | None = None
    samples: int | None = None
    batch_size: int = 512
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 5e-4
    # train: the frozen backbone's BatchNorm layers re-estimate their statistics on the
    # class-balanced batches, kept with the classifier (trainer.posthoc.batchnorm), as
    # classifier-balancing does; eval: the model's statistics (no effect with features: cached)
    bn: str = field(default="train", metadata={"choices": ("train", "eval")})
    # best: the epoch with the best validation score (eval.select_metric), as the reference; last
    select: str = field(default="best", metadata={"choices": ("best", "last")})


@dataclass(frozen=True)
class HeadTrainingSpec:
    features: str                      # stream (augmented, through the backbone) | cached
    epochs: int                        # class-balanced epochs of the train split's size
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    bn: str = "train"                  # train | eval (HeadTrainingOptions)
    select: str = "best"               # best | last

    def schedule(self, batches_per_epoch: int) -> Schedule:
        return Schedule(batches_per_epoch, self.epochs, self.lr)


def head_training(name: str, options: dict, train_counts: np.ndarray, default_epochs: int) -> HeadTrainingSpec:
    """posthoc.<name> resolved: its length in epochs of the train split's size."""
    opts = HeadTrainingOptions(**options)
    if opts.batch_size < 1:
        raise ConfigError(f"posthoc.{name}.batch_size: must be >= 1")
    lengths = {k: getattr(opts, k) for k in LENGTHS}
    if all(v is None for v in lengths.values()):
        lengths["epochs"] = default_epochs
    per_epoch = Schedule(micro_batches(int(np.sum(train_counts)), opts.batch_size, 1), 1, opts.lr).steps_per_epoch
    epochs, _ = epochs_for(lengths, per_epoch, opts.batch_size)
    for key, choices in (("bn", ("train", "eval")), ("select", ("best", "last"))):
        if getattr(opts, key) not in choices:
            raise ConfigError(f"posthoc.{name}.{key}: {getattr(opts, key)!r} is not one of {', '.join(choices)}")
    return HeadTrainingSpec(opts.features, epochs, opts.batch_size, opts.lr, opts.momentum, opts.weight_decay,
                            opts.bn, opts.select)


class TrainedHead:
    """Mixin for post-hoc classifiers trained by this loop: their options and resolved settings."""
    name: ClassVar[str]
    default_epochs: ClassVar[int]     # when the recipe gives no length (classifier-balancing's)
    Options = HeadTrainingOptions

    @classmethod
    def settings(cls, options: dict, train_counts: np.ndarray) -> HeadTrainingSpec:
        return head_training(cls.name, options, train_counts, cls.default_epochs)


def train_head(head: nn.Module, batches: Batches, schedule: Schedule, *, momentum: float, weight_decay: float,
               reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
               after_epoch: Callable[[int], None] | None = None) -> nn.Module:
    """Train `head`'s parameters that require grad, in place, for `schedule.epochs` epochs of
    `batches(epoch)`. `reduce` averages gradients over ranks where each rank sees other batches;
    `after_epoch(epoch)` runs after each epoch (validation, keeping the best)."""
    params = [p for p in head.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("head training: the head has no trainable parameters")
    opt = torch.optim.SGD(params, lr=schedule.lr_max, momentum=momentum, weight_decay=weight_decay)
    head.train()
    step = 0
    for epoch in range(schedule.epochs):
        for feats, targets in batches(epoch):
            loss = F.cross_entropy(head(feats), targets)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p in params if reduce is not None else []:
                p.grad = reduce(p.grad)
            for group in opt.param_groups:
                group["lr"] = schedule.lr(step)
            opt.step()
            step += 1
        if after_epoch is not None:
            after_epoch(epoch)
            head.train()
    return head.eval()


def feature_batches(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int,
                    weights_per_class: np.ndarray | None = None) -> tuple[Batches, int]:
    """Batches of cached features for `train_head`, and how many an epoch has. Each epoch draws
    len(features) samples with replacement so that class j is drawn with probability p_j
    (`weights_per_class`; default class-balanced over the classes present). Samples of classes
    the head does not predict are left out; targets are the head's output columns."""
    if batch_size < 1 or len(labels) == 0:
        raise ConfigError("head training: needs samples and batch_size >= 1")
    classes = list(getattr(head, "classes", range(int(labels.max()) + 1)))
    targets = _positions(labels, classes).to(features.device)
    keep = targets >= 0
    features, targets = features[keep], targets[keep]
    if len(targets) == 0:
        raise ConfigError(f"head training: no samples of the head's classes {classes}")
    p = _sample_probs(targets, len(classes), weights_per_class, classes)
    gen = torch.Generator().manual_seed(seed)

    def epoch_batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        draw = torch.multinomial(p, len(targets), replacement=True, generator=gen).to(features.device)
        for batch in draw.split(batch_size):
            yield features[batch].float(), targets[batch]
    return epoch_batches, math.ceil(len(targets) / batch_size)


def train_head_on_features(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, *, epochs: int,
                           lr: float, batch_size: int, weights_per_class: np.ndarray | None = None,
                           seed: int = 0, momentum: float = 0.9, weight_decay: float = 5e-4) -> nn.Module:
    """`features: cached`: train `head` on cached features [N, D] with labels [N] (class ids)."""
    if epochs < 1:
        raise ConfigError("head training: epochs must be >= 1")
    batches, per_epoch = feature_batches(head, features, labels, batch_size, seed, weights_per_class)
    return train_head(head, batches, Schedule(per_epoch, epochs, lr), momentum=momentum, weight_decay=weight_decay)


def _positions(labels: torch.Tensor, classes: list[int]) -> torch.Tensor:
    """Original class ids → output column of the head (-1 for classes not in the head)."""
    lookup = torch.full((max(max(classes), int(labels.max())) + 1,), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    return lookup[labels.cpu()].to(labels.device)


def _sample_probs(targets: torch.Tensor, num: int, weights_per_class, classes: list[int]) -> torch.Tensor:
    """Per-sample probabilities so that column j is drawn with probability ∝ p_j."""
    counts = torch.bincount(targets.cpu(), minlength=num).double()
    if weights_per_class is None:
        p_class = (counts > 0).double()
    else:
        w = torch.as_tensor(np.asarray(weights_per_class, dtype=np.float64))
        if w.shape[0] <= max(classes) or (w < 0).any():
            raise ConfigError(f"weights_per_class: need a non-negative weight for every class id up to {max(classes)}")
        p_class = w[torch.tensor(classes)] * (counts > 0)
    if p_class.sum() <= 0:
        raise ConfigError("weights_per_class: every class with samples has weight 0")
    return (p_class / counts.clamp_min(1))[targets.cpu()].float()
