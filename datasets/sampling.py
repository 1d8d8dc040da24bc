"""Which samples an epoch visits, in which order, and how they split over ranks.

Everything here is a pure function of its arguments (numpy only), so every rank computes the
same global plan and takes its own share of it without talking to the others.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from datasets.options import from_mapping
from shards.errors import DataError

KINDS = ("instance", "class", "sqrt", "power", "progressive", "sequential")
REDRAWS = ("epoch", "stage")
_FIXED_Q = {"instance": 1.0, "class": 0.0, "sqrt": 0.5, "sequential": 1.0}


@dataclass
class SamplingSpec:
    """How one stage draws its epochs. per_class overrides the kind's weights (every kept class
    gets exactly per_class draws); kind then only decides shuffling (all but sequential shuffle).
    An explicit class filter or per_class naming a class without samples is a DataError.

    redraw: "epoch" draws which samples an epoch visits afresh every epoch; "stage" draws them
    once per stage (a fixed sub-dataset, e.g. "5000 per class by random selection") and only
    reshuffles their order each epoch. None means "stage" with per_class, else "epoch".
    Plans that visit every sample exactly once (sequential, instance without epoch_size)
    ignore redraw: their sub-dataset is the whole split either way. progressive without
    per_class cannot be "stage": its class weights, and so its draws, change every epoch."""

    kind: str = "instance"        # instance (q=1) | class (q=0) | sqrt (q=1/2) | power (q given) | progressive | sequential
    q: float | None = None        # for kind=power
    classes: list[int] | None = None   # class filter; None = all classes
    per_class: int | None = None  # fixed count per class per epoch, with replacement where a class is smaller
    epoch_size: int | None = None # samples per epoch for weighted kinds (default: samples after the filter)
    redraw: str | None = None     # epoch | stage | None (see above)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise DataError(f"sampling: unknown kind {self.kind!r}, expected one of {', '.join(KINDS)}")
        if self.redraw is not None and self.redraw not in REDRAWS:
            raise DataError(f"sampling: unknown redraw {self.redraw!r}, expected one of {', '.join(REDRAWS)}")
        if self.redraw == "stage" and self.kind == "progressive" and self.per_class is None:
            raise DataError("sampling: redraw 'stage' cannot fix the draws of kind 'progressive', "
                            "whose class weights change every epoch")
        if self.kind == "power" and self.q is None:
            raise DataError("sampling: kind 'power' needs q")
        if self.q is not None and self.kind != "power":
            raise DataError(f"sampling: q is only used with kind 'power', not {self.kind!r}")
        if self.per_class is not None and self.per_class < 1:
            raise DataError(f"sampling: per_class must be >= 1, got {self.per_class}")
        if self.epoch_size is not None and self.epoch_size < 1:
            raise DataError(f"sampling: epoch_size must be >= 1, got {self.epoch_size}")
        if self.per_class is not None and self.epoch_size is not None:
            raise DataError("sampling: give per_class or epoch_size, not both")
        if self.kind == "sequential" and (self.per_class is not None or self.epoch_size is not None):
            raise DataError("sampling: kind 'sequential' visits every sample once; per_class/epoch_size do not apply")
        if self.classes is not None:
            self.classes = sorted({int(c) for c in self.classes})
            if not self.classes or self.classes[0] < 0:
                raise DataError(f"sampling: class filter must list class ids >= 0, got {self.classes}")

    @property
    def resolved_redraw(self) -> str:
        """redraw with None resolved: "stage" for per_class, else "epoch"; "epoch" for the
        full-pass plans that ignore it (so their plans stay as they were)."""
        full_pass = self.per_class is None and self.epoch_size is None and self.kind in ("instance", "sequential")
        if full_pass:
            return "epoch"
        if self.redraw is not None:
            return self.redraw
        return "stage" if self.per_class is not None else "epoch"

    @classmethod
    def from_dict(cls, d: dict | None) -> "SamplingSpec":
        """Build from a recipe mapping (None: the defaults); unknown keys raise DataError."""
        return from_mapping(cls, d, "sampling")


def class_probabilities(counts: np.ndarray, q: float) -> np.ndarray:
    """p_j ∝ n_j^q, 0 for empty/filtered classes (pass filtered classes with count 0)."""
    counts = np.asarray(counts, dtype=np.float64)
    w = np.where(counts > 0, np.power(np.maximum(counts, 1.0), q), 0.0)
    total = w.sum()
    if total <= 0:
        raise DataError("sampling: no class has any samples to draw from")
    return w / total


def _filtered_counts(counts: np.ndarray, spec: SamplingSpec) -> np.ndarray:
    """Counts with the classes outside the filter set to 0; a requested empty class is an error."""
    counts = np.asarray(counts, dtype=np.int64)
    if spec.classes is None:
        if spec.per_class is not None:
            empty = np.flatnonzero(counts == 0)
            if empty.size:
                raise DataError(f"sampling: per_class={spec.per_class} asks for class {int(empty[0])}, "
                                "which has no samples in this split")
        return counts
    out = np.zeros_like(counts)
    for c in spec.classes:
        if c >= len(counts) or counts[c] == 0:
            raise DataError(f"sampling: class filter asks for class {c}, which has no samples in this split")
        out[c] = counts[c]
    return out


def check_spec(counts: np.ndarray, spec: SamplingSpec) -> None:
    """Raise DataError now (before any epoch runs) if `spec` cannot be drawn from `counts`."""
    _filtered_counts(counts, spec)


def progress(epoch: int, total_epochs: int) -> float:
    """Share of the way from p^IB to p^CB at a 0-based epoch: 0 at the first epoch, 1 at the
    last (epoch / (T-1), clipped), as classifier-balancing's linspace(0, 1, T)[epoch]; a
    one-epoch stage stays instance-balanced (its linspace is [0])."""
    if total_epochs <= 1:
        return 0.0
    return min(max(epoch, 0), total_epochs - 1) / (total_epochs - 1)


def epoch_weights(counts: np.ndarray, spec: SamplingSpec, epoch: int, total_epochs: int) -> np.ndarray:
    """Class probabilities for one epoch; progressive: (1-t)·p^IB + t·p^CB, t = progress(epoch, T)."""
    counts = _filtered_counts(counts, spec)
    if spec.per_class is not None:
        return class_probabilities(counts, 0.0)
    if spec.kind == "progressive":
        t = progress(epoch, total_epochs)
        return (1.0 - t) * class_probabilities(counts, 1.0) + t * class_probabilities(counts, 0.0)
    q = spec.q if spec.kind == "power" else _FIXED_Q[spec.kind]
    return class_probabilities(counts, float(q))


def largest_remainder(total: int, weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Integer counts summing to `total`, each floor or ceil of total·w_j; ties broken at random
    (so no class is favoured epoch after epoch)."""
    exact = total * np.asarray(weights, dtype=np.float64) / np.sum(weights)
    out = np.floor(exact).astype(np.int64)
    short = total - int(out.sum())
    if short > 0:
        remainder = exact - out
        order = np.lexsort((rng.random(len(out)), -remainder))  # largest remainder first
        order = order[np.asarray(weights)[order] > 0][:short]
        out[order] += 1
    return out


def _draw(ids: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` ids of one class: fresh permutations back to back, so repeats only when needed."""
    full, part = divmod(count, len(ids))
    chunks = [rng.permutation(ids) for _ in range(full)]
    if part:
        chunks.append(rng.permutation(ids)[:part])
    return np.concatenate(chunks) if chunks else ids[:0]


def _rngs(spec: SamplingSpec, seed: int, epoch: int,
          draw_seed: int | None = None) -> tuple[np.random.Generator, np.random.Generator]:
    """(rng that picks the draws, rng that orders them). redraw "epoch" uses one stream for
    both, exactly as before the option existed, so earlier runs keep their plans; "stage"
    draws from a stream of `draw_seed` (default `seed`) without the epoch, so every epoch of the
    stage gets the same draws, and stages given one draw_seed and the same per_class and class
    filter draw the same sub-dataset (Li, Tan & Pan's stages 3a and 3b)."""
    order = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5A4D]))
    if spec.resolved_redraw == "stage":
        fixed = seed if draw_seed is None else draw_seed
        return np.random.default_rng(np.random.SeedSequence([fixed, 0x5A4D, 0x57A6E])), order
    return order, order


def epoch_plan(labels: np.ndarray, spec: SamplingSpec, *, epoch: int, total_epochs: int,
               seed: int, draw_seed: int | None = None) -> np.ndarray:
    """Global ordered sample ids for one epoch; identical on every rank (depends only on its arguments).

    instance (no epoch_size): a permutation of the (filtered) samples, each exactly once.
    sequential: sorted ids, no shuffle. Other kinds: class j gets the largest-remainder rounding
    of N·p_j draws, taken without replacement within the class (cycling), then shuffled.
    With redraw "stage" the drawn multiset is the same every epoch; only the order changes;
    `draw_seed` (default `seed`) picks it (see _rngs).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if spec.kind == "sequential" and spec.classes is None:
        return np.arange(len(labels), dtype=np.int64)     # every sample, unlabeled ones too (ood)
    if labels.size and labels.min() < 0:                  # unlabeled samples belong to no class
        valid = np.flatnonzero(labels >= 0)
        return valid[epoch_plan(labels[valid], spec, epoch=epoch, total_epochs=total_epochs, seed=seed,
                                draw_seed=draw_seed)]
    num_classes = int(labels.max()) + 1 if labels.size else 0
    if spec.classes is not None:
        num_classes = max(num_classes, spec.classes[-1] + 1)
    counts = np.bincount(labels, minlength=num_classes)
    kept = _filtered_counts(counts, spec)
    if spec.kind == "sequential":
        return np.flatnonzero(kept[labels] > 0).astype(np.int64)
    draw_rng, order_rng = _rngs(spec, seed, epoch, draw_seed)
    if spec.per_class is not None:
        draws = np.where(kept > 0, spec.per_class, 0)
    else:
        size = spec.epoch_size or int(kept.sum())
        draws = largest_remainder(size, epoch_weights(counts, spec, epoch, total_epochs), draw_rng)
    by_class = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)])
    parts = [_draw(by_class[starts[c]:starts[c + 1]], int(draws[c]), draw_rng)
             for c in range(num_classes) if draws[c] > 0]
    plan = np.concatenate(parts).astype(np.int64)
    return plan[order_rng.permutation(len(plan))]


def rank_batches(plan: np.ndarray, batch_size: int, rank: int, world: int,
                 equal: bool = False) -> list[np.ndarray]:
    """This rank's batches: the plan cut into S·world near-equal contiguous batches,
    S = ceil(len/(world·batch_size)), batch k going to rank k % world.

    Every rank gets S batches and the union over ranks is exactly `plan`. Batches never exceed
    batch_size unless the plan is too short to give every batch a sample (then S = len // world).
    `equal`: every batch has the same size, for `torch.compile` (one graph per stage, not one
    per size); the plan is padded with its own first samples, as DistributedSampler pads, so
    fewer than S·world samples are seen twice in the epoch.
    """
    if not 0 <= rank < world:
        raise DataError(f"sampling: rank {rank} outside 0..{world - 1}")
    if batch_size < 1:
        raise DataError(f"sampling: batch_size must be >= 1, got {batch_size}")
    if len(plan) < world:
        raise DataError(f"sampling: an epoch of {len(plan)} samples cannot feed {world} ranks")
    plan = np.asarray(plan, dtype=np.int64)
    per_rank = min(math.ceil(len(plan) / (world * batch_size)), len(plan) // world)
    if equal:
        size = math.ceil(len(plan) / (per_rank * world))
        plan = np.resize(plan, per_rank * world * size)   # repeats the plan from its start
    batches = np.array_split(plan, per_rank * world)
    return batches[rank::world]


def sub_dataset_digest(plan: np.ndarray) -> str:
    """A short digest of the multiset of sample ids a plan draws (its order left out): two
    stages with the same digest train on the same sub-dataset."""
    ids = np.sort(np.asarray(plan, dtype=np.int64))
    return hashlib.sha256(ids.tobytes()).hexdigest()[:16]
