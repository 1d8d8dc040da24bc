"""A model's backbone plus one classifier, scoring chips over all classes, with optional TTA.

A classifier maps features [B, D] to logits over ALL classes [B, C] (classes it does not
predict get -inf). The model's own head is wrapped by `FullLogits`; the post-hoc classifiers
(cRT, τ-norm, LWS heads, NCM) are built that way already. Evaluation, `predict`, the report
and export all score through `Scorer`, so a number in metrics.json and a results.csv come from
the same computation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError
from trainer.models.heads import Head


class FullLogits(nn.Module):
    """A `Head` (over a subset of classes, maybe) as a classifier over all `num_classes`."""

    def __init__(self, head: Head, num_classes: int) -> None:
        super().__init__()
        self.head, self.num_classes = head, num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.to_full_logits(self.head(features).float(), self.num_classes)


def tta_views(x: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The first n of: identity, hflip, vflip, rot180, transpose, rot90, rot270, anti-transpose
    (n = 3 is the seed's identity/hflip/vflip). Views past the flips change the radar's look
    direction; recipes keep tta within what their augmentation trained on."""
    if not 1 <= n <= 8:
        raise ConfigError(f"tta: number of views must be 1..8, got {n}")
    t = x.transpose(-2, -1)
    views = [x, x.flip(-1), x.flip(-2), x.flip(-2, -1), t, t.flip(-1), t.flip(-2), t.flip(-2, -1)]
    return views[:n]


@torch.no_grad()
def tta_logits(score, x: torch.Tensor, n: int) -> torch.Tensor:
    """log of the mean softmax probability of `score(view)` over n views (n = 1: log-softmax)."""
    logp = torch.stack([F.log_softmax(score(v).float(), dim=1) for v in tta_views(x, n)])
    return torch.logsumexp(logp, dim=0) - math.log(n)


class Scorer(nn.Module):
    """x -> scores over all classes: `classifier(model.features(view))`, and with tta > 1 the
    log of the mean softmax probability over the views (tta = 1: the classifier's logits)."""

    def __init__(self, model: nn.Module, classifier: nn.Module | None = None, tta: int = 1,
                 num_classes: int | None = None) -> None:
        super().__init__()
        self.model = model
        if classifier is None:
            classifier = FullLogits(model.classifier, num_classes or max(model.classifier.classes) + 1)
        self.classifier, self.tta = classifier, tta
        tta_views(torch.zeros(1, 1, 2, 2), tta)  # check n now

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def single(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.model.features(x)).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.single(x) if self.tta == 1 else tta_logits(self.single, x, self.tta)
