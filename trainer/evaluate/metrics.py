"""Evaluation numbers (plain Python, JSON-ready).

`evaluate` gives top-1, balanced accuracy (mean recall over classes present in the labels),
per-class accuracy (null for classes absent from the labels), the confusion matrix
(rows = true class) and group accuracies: the paper's many (> 100 train images) / medium
(20–100) / few (< 20) and count-relative head / middle / tail (top / bottom fractions of
classes by train count). A group's accuracy is the mean per-class accuracy of its classes
present in the labels; null when it has none.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from trainer.errors import ConfigError

GROUP_DEFAULTS = {"many_above": 100, "few_below": 20, "head_fraction": 0.3, "tail_fraction": 0.3}


def evaluate(logits_or_preds, labels, *, num_classes: int, train_counts=None,
             groups: dict | None = None) -> dict:
    """logits [N, C] (argmax taken) or predictions [N]; labels [N]; numpy or torch."""
    preds = _predictions(logits_or_preds)
    labels = _as_numpy(labels).astype(np.int64).reshape(-1)
    if preds.shape != labels.shape:
        raise ConfigError(f"evaluate: {preds.shape[0]} predictions for {labels.shape[0]} labels")
    for name, a in (("labels", labels), ("predictions", preds)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ConfigError(f"evaluate: {name} must lie in 0..{num_classes - 1}")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    support = confusion.sum(1)
    per_class = [float(confusion[c, c] / support[c]) if support[c] else None for c in range(num_classes)]
    present = [a for a in per_class if a is not None]
    out = {
        "num_samples": int(labels.size),
        "top1": float(np.trace(confusion) / labels.size) if labels.size else None,
        "balanced_acc": float(np.mean(present)) if present else None,
        "per_class_acc": per_class,
        "confusion": confusion.tolist(),
    }
    if train_counts is not None:
        members = group_classes(train_counts, groups)
        out["groups"] = {g: _mean_or_none([per_class[c] for c in cs]) for g, cs in members.items()}
        out["group_classes"] = members
    return out


def group_classes(train_counts, groups: dict | None = None) -> dict[str, list[int]]:
    """Which classes fall in many/medium/few and head/middle/tail."""
    cfg = {**GROUP_DEFAULTS, **(groups or {})}
    unknown = sorted(set(cfg) - set(GROUP_DEFAULTS))
    if unknown:
        raise ConfigError(f"groups: unknown key(s) {unknown}; valid: {', '.join(GROUP_DEFAULTS)}")
    head_f, tail_f = cfg["head_fraction"], cfg["tail_fraction"]
    if not (0 <= head_f <= 1 and 0 <= tail_f <= 1 and head_f + tail_f <= 1):
        raise ConfigError(f"groups: head_fraction and tail_fraction must be in [0, 1] with sum ≤ 1, got {head_f}, {tail_f}")
    counts = _as_numpy(train_counts).reshape(-1)
    ids = range(len(counts))
    # Stable sort: ties keep class order, so the split is deterministic.
    order = [int(c) for c in np.argsort(-counts, kind="stable")]
    n_head = math.floor(head_f * len(counts) + 0.5)
    n_tail = math.floor(tail_f * len(counts) + 0.5)
    return {
        "many": [c for c in ids if counts[c] > cfg["many_above"]],
        "medium": [c for c in ids if cfg["few_below"] <= counts[c] <= cfg["many_above"]],
        "few": [c for c in ids if counts[c] < cfg["few_below"]],
        "head": sorted(order[:n_head]),
        "middle": sorted(order[n_head:len(order) - n_tail]),
        "tail": sorted(order[len(order) - n_tail:]) if n_tail else [],
    }


def _mean_or_none(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _predictions(logits_or_preds) -> np.ndarray:
    a = _as_numpy(logits_or_preds)
    if a.ndim == 2:
        return a.argmax(1).astype(np.int64)
    if a.ndim == 1:
        return a.astype(np.int64)
    raise ConfigError(f"evaluate: expected logits [N, C] or predictions [N], got shape {a.shape}")
