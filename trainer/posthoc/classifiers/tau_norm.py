"""τ-normalisation: the stage's head with rows divided by ||w_i||^τ, τ chosen on validation
(the best balanced accuracy, the first of ties)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError
from trainer.evaluate.metrics import evaluate
from trainer.models.heads import FullLogits, Head
from trainer.posthoc.registry import HeadClassifier


def balanced_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean recall over the classes present in `labels` (0 when there are none)."""
    if len(labels) == 0:
        return 0.0
    num_classes = int(max(preds.max(), labels.max())) + 1
    return evaluate(preds, labels, num_classes=num_classes)["balanced_acc"]


def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_i / ||w_i||^τ for every row i (τ = 0: unchanged, τ = 1: unit rows)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


def tau_normalized_head(head: Head, tau: float, keep_bias: bool = False) -> Head:
    """A copy of `head` with τ-normalised rows (bias zeroed unless keep_bias). A cosine head
    (normalized=True) already scores with unit rows and has no bias, so τ changes nothing there."""
    out = head.like()
    with torch.no_grad():
        out.weight.copy_(tau_normalize(head.weight, tau))
        if out.bias is not None:
            out.bias.copy_(head.bias if keep_bias else torch.zeros_like(head.bias))
    return out


@torch.no_grad()
def search_tau(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor,
               bias: torch.Tensor | None, taus: Iterable[float] = np.arange(0, 2.01, 0.1),
               metric: Callable[[torch.Tensor, torch.Tensor], float] = balanced_accuracy,
               classes: list[int] | None = None) -> tuple[float, list[tuple[float, float]]]:
    """Score every τ (on validation features) and return the best τ (first of ties) and the curve.
    `classes[i]` is the class of weight row i (default: row i is class i)."""
    ids = torch.as_tensor(classes if classes is not None else range(weight.shape[0]), device=features.device)
    curve = []
    for tau in taus:
        logits = F.linear(features, tau_normalize(weight, float(tau)), bias)
        curve.append((round(float(tau), 6), float(metric(ids[logits.argmax(1)], labels))))
    if not curve:
        raise ConfigError("search_tau: no τ values to try")
    best = max(curve, key=lambda p: p[1])  # max keeps the first of equal scores
    return best[0], curve


@dataclass(frozen=True)
class TauOptions:
    max: float = 2.0
    step: float = 0.1


class TauSearch:
    """Mixin for classifiers with a τ chosen on validation: the grid 0, step, …, max."""
    name: str
    Options = TauOptions

    @classmethod
    def settings(cls, options: dict, train_counts) -> tuple[float, ...]:
        opts = TauOptions(**options)
        if opts.step <= 0 or opts.max < 0:
            raise ConfigError(f"posthoc.{cls.name}: step must be > 0 and max >= 0")
        return tuple(float(t) for t in np.round(np.arange(0.0, opts.max + 1e-9, opts.step), 6))


class TauNorm(TauSearch, HeadClassifier):
    name = "tau_norm"
    summary = "the stage's head with rows divided by ||w||^τ, τ chosen on validation"
    linear_head_only = True

    @classmethod
    def fit(cls, ctx, taus: tuple[float, ...]) -> tuple[nn.Module, dict]:
        val, head = ctx.features("val"), ctx.linear_head()
        tau, curve = search_tau(torch.from_numpy(val.features), torch.from_numpy(val.labels),
                                head.weight.detach(), None, taus=taus, classes=head.classes)
        return FullLogits(tau_normalized_head(head, tau), ctx.num_classes), {"tau": tau, "tau_curve": curve}
