"""Post-hoc logit adjustment (Menon et al., ICLR 2021): the stage's head logits minus
τ·log π_y, π the training class prior, τ chosen on validation (the best balanced accuracy, the
first of ties). τ = 1 is the Bayes-optimal correction for a balanced test set; τ = 0 is the model."""
from __future__ import annotations


import numpy as np
import torch
from torch import nn

from trainer.evaluate.metrics import evaluate
from trainer.models.heads import FullLogits, Head
from trainer.posthoc.classifiers.tau_norm import TauSearch
from trainer.posthoc.registry import HeadClassifier, head_card, head_from_card


class LogitAdjusted(nn.Module):
    """features -> head logits over all classes - τ·log π (classes without samples: -inf)."""

    def __init__(self, head: Head, num_classes: int) -> None:
        super().__init__()
        self.head = FullLogits(head, num_classes)
        self.register_buffer("log_prior", torch.zeros(num_classes))
        self.register_buffer("tau", torch.zeros(()))

    def set_prior(self, counts: np.ndarray, tau: float) -> "LogitAdjusted":
        counts = np.asarray(counts, dtype=np.float64)
        # a class without training samples gets no adjustment (its head row, if any, decides)
        log_prior = np.where(counts > 0, np.log(np.maximum(counts, 1.0) / max(1.0, counts.sum())), 0.0)
        with torch.no_grad():
            self.log_prior.copy_(torch.as_tensor(log_prior))
            self.tau.fill_(tau)
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features) - self.tau * self.log_prior


class LogitAdjust(TauSearch, HeadClassifier):
    name = "logit_adjust"
    summary = "the stage's head logits minus τ·log(class prior), τ chosen on validation"

    @classmethod
    def fit(cls, ctx, taus: tuple[float, ...]) -> tuple[nn.Module, dict]:
        val = ctx.features("val")
        clf = LogitAdjusted(ctx.linear_head(), ctx.num_classes)
        with torch.no_grad():
            logits = clf.head(torch.from_numpy(val.features)).double().numpy()
        log_prior = clf.set_prior(ctx.train_counts, 1.0).log_prior.double().numpy()
        curve = []
        for tau in taus:
            ev = evaluate(logits - tau * log_prior, val.labels, num_classes=ctx.num_classes)
            curve.append((tau, float(ev["balanced_acc"])))
        best = max(curve, key=lambda p: p[1])[0]   # max keeps the first of equal scores
        return clf.set_prior(ctx.train_counts, best), {"tau": best, "tau_curve": curve}

    @classmethod
    def card(cls, clf: nn.Module) -> dict:
        return head_card(clf.head.head)

    @classmethod
    def empty(cls, card: dict, feature_dim: int, num_classes: int) -> nn.Module:
        return LogitAdjusted(head_from_card(card, feature_dim, num_classes), num_classes)
