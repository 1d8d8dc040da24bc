"""Long-tail losses: `build_loss(cfg, class_counts)` from the recipe's `loss:` section.

Rule for heads over a subset of classes: losses take logits in the FULL class space, where
classes missing from the head are -inf (`Head.to_full_logits`), and targets are the original
class ids. No loss produces NaN for such logits (label smoothing averages over the finite
classes only). `class_counts` are the training counts of the stage's data, 0 for classes it
does not use; classes with count 0 get weight 0 and margin 0 (they are never targets).

`logit_adjusted` is Menon et al.'s logit-adjusted loss (ICLR 2021, google-research/logit_adj):
CE on z_j + τ·log π_j, π the stage's training prior; τ = 1 (their default) equals balanced_softmax.
The post-hoc twin, z_j − τ·log π_j after plain training, is the `logit_adjust` classifier.

Per-class weights w (`reweight`: inverse 1/n, sqrt_inverse 1/√n, cb (1-β)/(1-β^n) — Cui et al.
2019) are normalised to sum to the number of present classes. `normalize` says how the
weighted per-sample losses l are reduced:
  "batch":  Σ w_y·l / B — Cui et al.'s reference (richardaecn/class-balanced-loss: weights summing
            to C, then a batch mean), so re-weighting also shrinks the loss where the batch is
            mostly head classes. The default, except as below.
  "weight": Σ w_y·l / Σ w_y — F.cross_entropy(weight=...), the project's former behaviour. Default
            for ldam and for any loss with drw_epoch, because Cao et al.'s LDAM-DRW reference
            (kaidic/LDAM-DRW) reduces its LDAM and DRW losses with F.cross_entropy(weight=...).
With equal weights both are the plain mean. Under data parallelism "weight" needs the global
Σ w_y: LongTailLoss's `reduce_sum` (e.g. an all-reduce mean over ranks) is applied to the local
Σ w_y first, so that the averaged gradient does not depend on the number of ranks.
With `drw_epoch` (deferred re-weighting, Cao et al. 2019) the weights apply only from that
0-based epoch of the stage on; before it every weight is 1. `drw_at` gives it as a share of the
stage's epochs instead (0.8: kaidic's epoch 160 of 200), so a recipe measured in steps keeps
the proportion on any data size; build_loss needs the stage's `epochs` for it.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError

COMMON = {"name": None, "label_smoothing": 0.0, "reweight": "none", "beta": 0.9999, "drw_epoch": None,
          "drw_at": None, "normalize": None}
EXTRA = {
    "ce": {},
    "cb": {},
    "focal": {"gamma": 2.0},
    "ldam": {"max_margin": 0.5, "scale": 30.0},
    "balanced_softmax": {},
    "logit_adjusted": {"tau": 1.0},   # Menon et al. 2021: CE on z + τ·log π (τ = 1: balanced softmax)
}
REWEIGHTS = ("none", "inverse", "sqrt_inverse", "cb")
NORMALIZE = ("batch", "weight")


def loss_weights(counts: np.ndarray, kind: str, beta: float = 0.9999) -> np.ndarray:
    """Per-class weights, 0 for empty classes, summing to the number of non-empty classes."""
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    w = np.zeros_like(n)
    if kind == "none":
        w[present] = 1.0
    elif kind == "inverse":
        w[present] = 1.0 / n[present]
    elif kind == "sqrt_inverse":
        w[present] = 1.0 / np.sqrt(n[present])
    elif kind == "cb":
        w[present] = (1.0 - beta) / (1.0 - np.power(beta, n[present]))
    else:
        raise ConfigError(f"loss.reweight: unknown {kind!r}; valid: {', '.join(REWEIGHTS)}")
    return w * present.sum() / w.sum()


def ldam_margins(counts: np.ndarray, max_margin: float) -> np.ndarray:
    """m_j ∝ n_j^(-1/4), the largest (rarest class) equal to max_margin; 0 for empty classes
    (kaidic/LDAM-DRW losses.py: 1/sqrt(sqrt(n)) scaled to max_m)."""
    n = np.asarray(counts, dtype=np.float64)
    m = np.zeros_like(n)
    m[n > 0] = n[n > 0] ** -0.25
    return m * (max_margin / m.max())


class LongTailLoss(nn.Module):
    """Weighted (focal) cross-entropy on adjusted logits: LDAM uses s·(z/k - m_y·onehot(y)),
    balanced softmax and logit-adjusted CE z + τ·log(n_j / N). LDAM's s = 30 was designed for
    cosine logits (model head: cosine). `logit_scale` k is the scale the head already applied
    (a cosine head's s, 1 for a linear head): LDAM's margin is in cosine units, so it divides
    k out first and s·(cos - m_y) is kaidic's logit whatever head carries the scale. Every other
    loss takes the head's logits as they are: a cosine head scales them itself.

    normalize: "batch" (Σ w_y·l / B) or "weight" (Σ w_y·l / Σ w_y), see the module doc.
    reduce_sum: with "weight", applied to the local Σ w_y before dividing; pass an all-reduce
    mean over ranks so that the rank-averaged gradient equals the single-process one."""

    def __init__(self, weight: np.ndarray, *, drw_epoch: int | None = None, gamma: float = 0.0,
                 label_smoothing: float = 0.0, margins: np.ndarray | None = None, scale: float = 1.0,
                 log_prior: np.ndarray | None = None, normalize: str = "batch",
                 reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 logit_scale: float = 1.0) -> None:
        super().__init__()
        if normalize not in NORMALIZE:
            raise ConfigError(f"loss.normalize: unknown {normalize!r}; valid: {', '.join(NORMALIZE)}")
        self.drw_epoch, self.gamma, self.smoothing, self.scale = drw_epoch, gamma, label_smoothing, scale
        self.normalize, self.reduce_sum, self.logit_scale = normalize, reduce_sum, float(logit_scale)
        self.register_buffer("target_weight", torch.tensor(weight, dtype=torch.float32))
        self.register_buffer("weight", self.target_weight.clone())
        self.register_buffer("margins", None if margins is None else torch.tensor(margins, dtype=torch.float32))
        self.register_buffer("log_prior", None if log_prior is None else torch.tensor(log_prior, dtype=torch.float32))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if self.drw_epoch is not None:
            self.weight.copy_(self.target_weight if epoch >= self.drw_epoch else torch.ones_like(self.weight))

    def adjust(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if self.margins is not None:
            if self.logit_scale != 1.0:
                logits = logits / self.logit_scale   # back to cosines: the margin is in their units
            m = self.margins.to(logits.device)[target]
            logits = logits.scatter_add(1, target[:, None], -m[:, None])
        if self.log_prior is not None:
            logits = logits + self.log_prior.to(logits.device)
        return logits * self.scale if self.scale != 1.0 else logits

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(self.adjust(logits, target), dim=1)
        nll = -logp.gather(1, target[:, None]).squeeze(1)
        loss = nll
        if self.gamma:
            # clamp: d/dx x^γ is infinite at x = 0 for γ < 1
            loss = (1.0 - torch.exp(-nll)).clamp_min(1e-12).pow(self.gamma) * nll
        if self.smoothing:
            # Mean over finite classes only: classes absent from the head are -inf.
            finite = torch.isfinite(logp)
            uniform = -torch.where(finite, logp, 0.0).sum(1) / finite.sum(1)
            loss = (1.0 - self.smoothing) * loss + self.smoothing * uniform
        w = self.weight.to(logits.device)[target]
        if self.normalize == "batch":
            return (w * loss).sum() / len(target)
        total = w.sum()
        if self.reduce_sum is not None:
            total = self.reduce_sum(total)
        return (w * loss).sum() / total


def build_loss(cfg: dict, class_counts: np.ndarray | list, *,
               reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
               logit_scale: float = 1.0, epochs: int | None = None) -> nn.Module:
    """The configured loss; `reduce_sum` is handed to LongTailLoss (used with normalize: weight),
    `logit_scale` is the scale the model's head applies (LongTailLoss), `epochs` the stage's
    length (for drw_at)."""
    name = cfg.get("name", "ce")
    if name not in EXTRA:
        raise ConfigError(f"loss.name: unknown loss {name!r}; valid: {', '.join(EXTRA)}")
    valid = {**COMMON, **EXTRA[name]}
    unknown = sorted(set(cfg) - set(valid))
    if unknown:
        raise ConfigError(f"loss: unknown key(s) {unknown} for {name}; valid: {', '.join(valid)}")
    c = {**valid, **cfg, "name": name}
    counts = _check_counts(class_counts)
    c = _drw_at(c, epochs)
    _check_values(c)
    reweight = c["reweight"]
    if reweight == "none" and (name == "cb" or c["drw_epoch"] is not None):
        reweight = "cb"  # "cb" is CE with CB weights; DRW defers CB weights (LDAM-DRW)
    weight = loss_weights(counts, reweight, c["beta"])
    normalize = c["normalize"] or ("weight" if name == "ldam" or c["drw_epoch"] is not None else "batch")
    kwargs = {"drw_epoch": c["drw_epoch"], "label_smoothing": c["label_smoothing"],
              "normalize": normalize, "reduce_sum": reduce_sum, "logit_scale": logit_scale}
    if name == "focal":
        kwargs["gamma"] = c["gamma"]
    elif name == "ldam":
        kwargs["margins"] = ldam_margins(counts, c["max_margin"])
        kwargs["scale"] = c["scale"]
    elif name in ("balanced_softmax", "logit_adjusted"):
        tau = c.get("tau", 1.0)
        with np.errstate(divide="ignore"):
            log_prior = np.log(counts / counts.sum())  # -inf for empty classes
        # τ·(-inf) stays -inf for τ > 0; τ = 0 is plain CE, empty classes left at 0 (never targets)
        kwargs["log_prior"] = tau * log_prior if tau > 0 else np.zeros_like(log_prior)
    return LongTailLoss(weight, **kwargs)


def _drw_at(c: dict, epochs: int | None) -> dict:
    """drw_at (a share of the stage) -> drw_epoch (round(share · epochs))."""
    at = c["drw_at"]
    if at is None:
        return c
    if c["drw_epoch"] is not None:
        raise ConfigError("loss: give drw_epoch or drw_at, not both")
    if not isinstance(at, (int, float)) or isinstance(at, bool) or not 0 <= at <= 1:
        raise ConfigError(f"loss.drw_at: expected a share of the stage's epochs in [0, 1], got {at!r}")
    if epochs is None:
        raise ConfigError("loss.drw_at: needs the stage's epochs (the trainer passes them)")
    return {**c, "drw_epoch": int(round(at * epochs))}


def _check_counts(class_counts) -> np.ndarray:
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or np.any(~np.isfinite(counts)) or np.any(counts < 0) or counts.sum() <= 0:
        raise ConfigError(f"loss: class_counts must be a non-empty list of non-negative counts, not all 0; got {class_counts!r}")
    return counts


def _check_values(c: dict) -> None:
    def number(key: str, lo: float, hi: float, lo_open: bool = False) -> None:
        v = c[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and (lo < v if lo_open else lo <= v) and v < hi
        if not ok:
            raise ConfigError(f"loss.{key}: expected a number in {'(' if lo_open else '['}{lo}, {hi}), got {v!r}")

    number("label_smoothing", 0.0, 1.0)
    number("beta", 0.0, 1.0)
    if c["reweight"] not in REWEIGHTS:
        raise ConfigError(f"loss.reweight: unknown {c['reweight']!r}; valid: {', '.join(REWEIGHTS)}")
    if c["normalize"] is not None and c["normalize"] not in NORMALIZE:
        raise ConfigError(f"loss.normalize: unknown {c['normalize']!r}; valid: {', '.join(NORMALIZE)} (or null)")
    d = c["drw_epoch"]
    if d is not None and (not isinstance(d, int) or isinstance(d, bool) or d < 0):
        raise ConfigError(f"loss.drw_epoch: expected a non-negative integer or null, got {d!r}")
    if "gamma" in c:
        number("gamma", 0.0, float("inf"))
    if "tau" in c:
        number("tau", 0.0, float("inf"))
    if "max_margin" in c:
        number("max_margin", 0.0, float("inf"), lo_open=True)
        number("scale", 0.0, float("inf"), lo_open=True)
