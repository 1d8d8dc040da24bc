"""A model's backbone plus one classifier, scoring chips over all classes, with optional TTA.

A classifier maps features [B, D] to logits over ALL classes [B, C] (classes it does not
predict get -inf). The model's own head is wrapped by `FullLogits`; the post-hoc classifiers
(cRT, τ-norm, LWS heads, NCM) are built that way already. Evaluation, `predict`, the report
and export all score through `Scorer` / `score_views`, so a number in metrics.json and a
results.csv come from the same computation.

TTA views are named (trainer.spec.views); their functions are here.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.heads import FullLogits
from trainer.posthoc.batchnorm import stats_of, using_stats
from trainer.spec.views import view_names

_VIEWS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot180": lambda x: x.flip(-2, -1),
    "transpose": lambda x: x.transpose(-2, -1),
    "rot90": lambda x: x.transpose(-2, -1).flip(-1),
    "rot270": lambda x: x.transpose(-2, -1).flip(-2),
    "anti_transpose": lambda x: x.transpose(-2, -1).flip(-2, -1),
}


def tta_views(x: torch.Tensor, tta: int | Sequence[str]) -> list[torch.Tensor]:
    return [_VIEWS[v](x) for v in view_names(tta)]


@torch.no_grad()
def tta_logits(score, x: torch.Tensor, tta: int | Sequence[str]) -> torch.Tensor:
    """log of the mean softmax probability of `score(view)` over the views (one view: log-softmax)."""
    return mean_softmax_log(torch.stack([score(v).float() for v in tta_views(x, tta)]))


def mean_softmax_log(logits: torch.Tensor) -> torch.Tensor:
    """[V, B, C] logits of V views -> [B, C]: the log of the mean softmax over the views (the
    one TTA combine: evaluation, predict, export and latency all use it)."""
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - math.log(logits.shape[0])


def score_views(model: nn.Module, classifiers: Sequence[nn.Module], x: torch.Tensor,
                views: Sequence[str], *, mean_logits: bool = False) -> list:
    """Scores of several classifiers on the same backbone features (one backbone pass per view):
    a classifier's logits for one view, else the log of its mean softmax over the views. A
    classifier with its own BatchNorm statistics (trainer.posthoc.batchnorm) gets its own
    backbone pass with them. With
    `mean_logits`, each entry is (scores, logits averaged over the views): the input of the
    out-of-distribution scores (trainer.evaluate.ood)."""
    feats: dict[int, list[torch.Tensor]] = {}   # one pass per set of BatchNorm statistics
    out = []
    for clf in classifiers:
        stats = stats_of(clf)
        if id(stats) not in feats:
            with using_stats(model, stats):
                feats[id(stats)] = [model.features(v) for v in tta_views(x, views)]
        logits = [clf(f).float() for f in feats[id(stats)]]
        scores = logits[0] if len(logits) == 1 else mean_softmax_log(torch.stack(logits))
        out.append((scores, torch.stack(logits).mean(0)) if mean_logits else scores)
    return out


class Scorer(nn.Module):
    """x -> scores over all classes of `classifier(model.features(view))` with the TTA views."""

    def __init__(self, model: nn.Module, classifier: nn.Module | None = None,
                 views: int | Sequence[str] = 1, num_classes: int | None = None) -> None:
        super().__init__()
        self.model = model
        if classifier is None:
            classifier = FullLogits(model.classifier, num_classes or max(model.classifier.classes) + 1)
        self.classifier, self.views = classifier, view_names(views)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return score_views(self.model, [self.classifier], x, self.views)[0]
