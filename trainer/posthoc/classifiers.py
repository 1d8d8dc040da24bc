"""Post-hoc classifiers on frozen features (Kang et al. 2020, "Decoupling representation and
classifier"): cRT, NCM, τ-normalisation and LWS.

All work on cached feature tensors [N, D] with labels [N] (original class ids). Heads here are
`Head`s or modules with the same `classes` attribute; logits are over those classes.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError
from trainer.evaluate.metrics import evaluate
from trainer.models.heads import Head


def balanced_accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean recall over the classes present in `labels` (0 when there are none)."""
    if len(labels) == 0:
        return 0.0
    num_classes = int(max(preds.max(), labels.max())) + 1
    return evaluate(preds, labels, num_classes=num_classes)["balanced_acc"]


# --- τ-normalisation ---------------------------------------------------------------------

def tau_normalize(weight: torch.Tensor, tau: float) -> torch.Tensor:
    """w_i / ||w_i||^τ for every row i (τ = 0: unchanged, τ = 1: unit rows)."""
    norms = weight.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return weight / norms.pow(tau)


def tau_normalized_head(head: Head, tau: float, keep_bias: bool = False) -> Head:
    """A copy of `head` with τ-normalised rows (bias zeroed unless keep_bias). A cosine head
    (normalized=True) already scores with unit rows and has no bias, so τ changes nothing there."""
    out = Head(head.in_features, head.classes, normalized=head.normalized).to(head.weight.device)
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


# --- nearest class mean ------------------------------------------------------------------

class NCM(nn.Module):
    """Nearest class mean over `num_classes` classes; forward gives logits [N, num_classes],
    -inf for classes without training samples. Metrics:

      l2_centred (default, classifier-balancing's KNNClassifier with feat_type cl2n, dist l2):
          features minus the training-feature mean, L2-normalised; class means of those;
          score -||x - c_j||² (its l2_similarity: squared, so argmax = nearest mean).
      cosine:    cosine similarity of raw features to the class means of raw features.
      euclidean: -||x - c_j||² on raw features (the reference's feat_type un).

    Everything fit() learns lives in buffers (the metric too, so loading a state dict into
    any fresh NCM(feature_dim, num_classes) reproduces the saved classifier)."""

    METRICS = ("l2_centred", "cosine", "euclidean")

    def __init__(self, feature_dim: int, num_classes: int, metric: str = "l2_centred") -> None:
        super().__init__()
        if metric not in self.METRICS:
            raise ConfigError(f"ncm metric: unknown {metric!r}; valid: {', '.join(self.METRICS)}")
        self.register_buffer("metric_id", torch.tensor(self.METRICS.index(metric)))
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("means", torch.zeros(num_classes, feature_dim))
        self.register_buffer("present", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def metric(self) -> str:
        return self.METRICS[int(self.metric_id)]

    @property
    def classes(self) -> list[int]:
        return list(range(self.means.shape[0]))

    def _embed(self, features: torch.Tensor) -> torch.Tensor:
        feats = features.to(self.means.device, torch.float32)
        if self.metric == "l2_centred":
            return F.normalize(feats - self.feature_mean, dim=1)
        return feats

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "NCM":
        num_classes, dim = self.means.shape
        if features.ndim != 2 or features.shape[1] != dim or len(features) != len(labels) or len(labels) == 0:
            raise ConfigError(f"NCM.fit: need features [N, {dim}] with N = len(labels) > 0, "
                              f"got {tuple(features.shape)} and {len(labels)} labels")
        labels = labels.to(self.means.device, torch.long)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ConfigError(f"NCM.fit: labels must lie in 0..{num_classes - 1}")
        feats = features.to(self.means.device, torch.float32)
        # The mean over all training samples (instance-weighted), as the reference's featmean.
        if self.metric == "l2_centred":
            self.feature_mean.copy_(feats.mean(0))
        else:
            self.feature_mean.zero_()
        x = self._embed(feats).double()  # double sums: a class of many samples loses no precision
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=num_classes)
        self.present.copy_(counts > 0)
        self.means.copy_(sums / counts.clamp_min(1)[:, None])
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.present.any():
            raise ConfigError("NCM: call fit() before scoring features")
        x = self._embed(features)
        if self.metric == "cosine":
            scores = F.normalize(x, dim=1).mm(F.normalize(self.means, dim=1).T)
        else:
            # ||x||² + ||c||² - 2 x·c as the reference computes it; memory O(N·C), not O(N·C·D)
            sq = (x * x).sum(1, keepdim=True) + (self.means * self.means).sum(1) - 2 * x.mm(self.means.T)
            scores = -sq.clamp_min(0.0)
        return scores.masked_fill(~self.present, float("-inf"))


# --- learnable weight scaling ------------------------------------------------------------

class LWS(nn.Module):
    """Fixed linear classifier with a learnable per-class scale f_i (initially 1):
    logits_i = f_i · (w_i·x + b_i)."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        if getattr(head, "normalized", False):
            # f_i·cos(x, w_i) cannot be folded back into a Head (to_head), so refuse early.
            raise ConfigError("LWS: needs a linear head; this head is cosine (model head: cosine)")
        self.in_features = head.in_features
        self.register_buffer("class_ids", head.class_ids.detach().clone())
        self.register_buffer("weight", head.weight.detach().clone())
        self.register_buffer("bias", head.bias.detach().clone())
        self.scales = nn.Parameter(torch.ones(len(head.classes), device=head.weight.device))

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.class_ids.tolist()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * self.scales

    def to_head(self) -> Head:
        """A plain Head computing the same logits (scales folded into weight and bias)."""
        out = Head(self.in_features, self.classes).to(self.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.weight * self.scales[:, None])
            out.bias.copy_(self.bias * self.scales)
        return out


# --- training a head on cached features --------------------------------------------------

def train_head_on_features(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, *,
                           epochs: int, lr: float, batch_size: int,
                           weights_per_class: np.ndarray | None = None, seed: int = 0,
                           momentum: float = 0.9, weight_decay: float = 5e-4) -> nn.Module:
    """SGD (momentum, cosine LR) with cross-entropy on cached features, training only the
    head's parameters that require grad. Each epoch draws len(features) samples with
    replacement so that class j is drawn with probability p_j (`weights_per_class`;
    default class-balanced over the classes present). Samples of classes the head does not
    predict are left out. Returns the head, trained in place."""
    params = [q for q in head.parameters() if q.requires_grad]
    if not params or epochs < 1 or batch_size < 1 or len(labels) == 0:
        raise ConfigError("train_head_on_features: needs trainable parameters, samples, epochs ≥ 1 and batch_size ≥ 1")
    classes = list(getattr(head, "classes", range(int(labels.max()) + 1)))
    targets = _positions(labels, classes).to(features.device)
    keep = targets >= 0
    features, targets = features[keep], targets[keep]
    if len(targets) == 0:
        raise ConfigError(f"train_head_on_features: no samples of the head's classes {classes}")
    p = _sample_probs(targets, len(classes), weights_per_class, classes)
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(len(targets) / batch_size)
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    head.train()
    for _ in range(epochs):
        draw = torch.multinomial(p, len(targets), replacement=True, generator=gen).to(features.device)
        for batch in draw.split(batch_size):
            loss = F.cross_entropy(head(features[batch].float()), targets[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    return head


def crt_head(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *, epochs: int = 10,
             lr: float = 0.1, batch_size: int = 512, weights_per_class: np.ndarray | None = None,
             seed: int = 0) -> Head:
    """Classifier re-training: a freshly initialised Head over all classes, trained
    class-balanced (by default) on frozen features."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = Head(features.shape[1], num_classes)
    head = head.to(features.device)
    return train_head_on_features(head, features, labels, epochs=epochs, lr=lr, batch_size=batch_size,
                                  weights_per_class=weights_per_class, seed=seed)


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
