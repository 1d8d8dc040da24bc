"""Out-of-distribution scores: how likely a chip is one of the known classes (higher = known).

PBVS 2024–2025 score a submission's per-chip confidence by the AUROC of known vs unknown
targets. The scores are computed from a classifier's logits averaged over the TTA views
(for one view, the logits themselves):
  msp        max softmax probability (Hendrycks & Gimpel 2017)
  max_logit  the largest logit (Hendrycks et al. 2022)
  energy     logsumexp of the logits, i.e. minus the free energy (Liu et al. 2020)
`ood_metrics` gives AUROC (known = positive) and the false-positive rate on unknown chips at the
threshold that keeps 95% of the known ones.
"""
from __future__ import annotations

import numpy as np

from trainer.errors import ConfigError

SCORES = ("msp", "energy", "max_logit")


def ood_score(logits: np.ndarray, kind: str) -> np.ndarray:
    """[N, C] logits (-inf for classes a classifier does not predict) -> [N] scores."""
    if kind not in SCORES:
        raise ConfigError(f"score: unknown {kind!r}; valid: {', '.join(SCORES)}")
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1)
    if kind == "max_logit":
        return top
    lse = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return lse if kind == "energy" else np.exp(top - lse)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of a known chip > score of an unknown one), ties counted half (Mann–Whitney)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return float("nan")
    both = np.concatenate([known, unknown])
    order = both.argsort(kind="mergesort")
    ranks = np.empty(len(both))
    sorted_vals = both[order]
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], len(both)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    r_known = ranks[:len(known)].sum()
    return float((r_known - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))


def fpr_at_tpr(known: np.ndarray, unknown: np.ndarray, tpr: float = 0.95) -> float:
    """Share of unknown chips scored at or above the threshold that keeps `tpr` of known ones."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return float("nan")
    # the highest threshold at which at least `tpr` of the known chips score at or above it
    threshold = np.sort(known)[::-1][max(0, int(np.ceil(tpr * len(known))) - 1)]
    return float((unknown >= threshold).mean())


def ood_metrics(known_logits: np.ndarray, unknown_logits: np.ndarray) -> dict[str, dict[str, float]]:
    """{score: {"auroc", "fpr95"}} for every score kind."""
    out = {}
    for kind in SCORES:
        k, u = ood_score(known_logits, kind), ood_score(unknown_logits, kind)
        out[kind] = {"auroc": auroc(k, u), "fpr95": fpr_at_tpr(k, u)}
    return out
