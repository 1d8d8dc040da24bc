"""A recipe resolved once, against the shards, into typed specs that the rest of the trainer reads.

`resolve(cfg, index)` turns the validated recipe (trainer.spec.config) into a `RecipeSpec`: the input
size, the model settings, and per stage its length in epochs, `SamplingSpec`, `AugmentSpec`,
head transition and the classes the head covers, the merged optimizer settings, the loss and
its class counts, and the post-hoc classifiers. Every check that needs the shards (class ids,
head/sampler consistency, lengths) happens here, before any training; nothing downstream
reads the raw recipe dict for these keys again.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from datasets.augment import AugmentSpec
from datasets.geometry import range_axis, safe_flips
from datasets.sampling import SamplingSpec
from datasets.stream_spec import StreamSpec, open_split
from shards.errors import DataError
from shards.index import ClassIndex
from trainer.posthoc.registry import table
from trainer.spec.optim_spec import OptimSpec
from trainer.spec.schedule import Schedule, epochs_for, micro_batches
from trainer.errors import ConfigError
from trainer.losses import build_loss
from trainer.spec.views import view_names

REBALANCING_KINDS = ("class", "sqrt", "progressive")
REBALANCING_LOSSES = ("cb", "balanced_softmax", "logit_adjusted")


@dataclass(frozen=True)
class StageSpec:
    index: int
    name: str
    length: str                        # as the recipe gave it, e.g. "600 steps"
    schedule: Schedule                 # epochs (resolved from epochs | steps | samples), steps, lr(step)
    sampling: SamplingSpec
    augment: AugmentSpec
    train: str                         # all | classifier | last_block
    head_change: str                   # keep | subset | expand | reset (recipe key `head`)
    expand_rows: str                   # fresh | restore (rows of classes added back by expand)
    head_classes: tuple[int, ...]      # classes the head covers after the transition
    loss: dict
    loss_counts: tuple[int, ...]       # train counts, 0 for classes the stage does not train on
    optim: OptimSpec
    classifiers: tuple[str, ...]
    select: str                        # last | best
    bn: str = "eval"                   # eval | train: a frozen backbone's BatchNorm statistics

    @property
    def epochs(self) -> int:
        return self.schedule.epochs

    @property
    def steps_per_epoch(self) -> int:   # optimizer steps (whole run, all ranks together)
        return self.schedule.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.schedule.total_steps



@dataclass(frozen=True)
class RecipeSpec:
    num_classes: int
    input_size: int
    model: dict                        # model section with `head` resolved (linear | cosine)
    stages: tuple[StageSpec, ...]
    posthoc: dict                      # classifier name -> its settings (trainer.posthoc.registry)
    tta_views: tuple[str, ...]         # evaluation views (trainer.evaluate.scoring)
    range_axis: str                    # horizontal | vertical | unknown | unchecked (datasets.geometry)
    notes: tuple[str, ...]             # warnings worth printing at the start (double correction)


def resolve(cfg: dict, index: ClassIndex) -> RecipeSpec:
    """The recipe against these shards; ConfigError naming the key on any inconsistency."""
    counts = index.split("train").class_counts()
    n, size = index.num_classes, input_size(cfg["data"]["input_size"], index)
    axis = _range_axis(cfg, index, size)
    stages, notes, head = [], [], list(range(n))
    for i, st in enumerate(cfg["stages"]):
        st = {**st, "augment": _flips(st["augment"], axis)}
        stage, head = _stage(cfg, i, st, head, counts)
        stages.append(stage)
        notes += _double_correction(f"stages.{i}", st) + _turns_the_radar(f"stages.{i}", st, axis)
    model = {**cfg["model"], **_channels(index)}
    if model["head"] == "auto":
        model["head"] = "cosine" if any(s.loss.get("name") == "ldam" for s in stages) else "linear"
    kinds = table()
    for s in stages:
        scaled = sorted(c for c in s.classifiers if kinds[c].linear_head_only)
        if scaled and model["head"] == "cosine":
            raise ConfigError(f"stages.{s.index}.classifiers: {', '.join(scaled)} rescale the rows of a "
                              "linear head; the model's head is cosine (model.head, or auto with an "
                              "ldam loss), whose rows are unit vectors")
    tta = cfg["data"]["tta"]
    views = ("identity", *[v for v, on in zip(("hflip", "vflip"), safe_flips(axis)) if on]) if tta == "auto" \
        else view_names(tta)
    return RecipeSpec(
        num_classes=n, input_size=size, model=model,
        stages=tuple(stages),
        posthoc={name: _make(f"posthoc.{name}", lambda o, k=kind: k.settings(o, counts), cfg["posthoc"][name])
                 for name, kind in kinds.items()},
        tta_views=views, range_axis=axis, notes=tuple(notes))


def _channels(index: ClassIndex) -> dict:
    """The model's input channels, from the train split: every modality's, stacked."""
    train = index.split("train")
    parts = [train.stats(m).channels for m in train.modalities]
    return {"in_channels": sum(parts), "modality_channels": parts}


def input_size(value: int | str, index: ClassIndex) -> int:
    """`auto`: the median chip side of the train split, rounded down to a multiple of 8
    (56 for NTIRE's 54–60 px chips), so the crop loses at most a few border pixels."""
    if isinstance(value, int):
        return value
    sides = [(min(int(a) for a in hw.split("x")), c)
             for hw, c in index.split("train").image_sizes.items()]
    if not sides:
        raise ConfigError(f"data.input_size: auto, but {index.root} records no image sizes; give a number")
    values, weights = zip(*sorted(sides))
    median = values[int(np.searchsorted(np.cumsum(weights), sum(weights) / 2))]
    return median if median < 16 else median // 8 * 8


def _range_axis(cfg: dict, index: ClassIndex, size: int) -> str:
    """The radar's range axis in the train chips, read only when the recipe asks (auto flips,
    tta: auto, or a rotation to warn about)."""
    stages = cfg["stages"]
    if cfg["data"]["tta"] != "auto" and not any(
            "auto" in (s["augment"]["hflip"], s["augment"]["vflip"]) or s["augment"]["rotate"] != "none"
            for s in stages):
        return "unchecked"
    return range_axis(open_split(index.root, "train", StreamSpec.sequential(4096, size)), size)[0]


def _flips(augment: dict, axis: str) -> dict:
    """hflip/vflip: auto -> on when that mirror keeps the radar's look direction."""
    safe = dict(zip(("hflip", "vflip"), safe_flips(axis)))
    return {**augment, **{k: safe[k] for k in safe if augment[k] == "auto"}}


def _turns_the_radar(where: str, st: dict, axis: str) -> list[str]:
    if st["augment"]["rotate"] == "none" or axis not in ("horizontal", "vertical"):
        return []
    return [f"{where}: augment.rotate={st['augment']['rotate']} turns the radar's look direction, which "
            f"is fixed in these chips (range axis {axis}); rotation cost 15 points on real SAR (docs/augmentation.md)"]


def _stage(cfg: dict, i: int, st: dict, head: list[int], counts: np.ndarray) -> tuple[StageSpec, list[int]]:
    where, n = f"stages.{i}", len(counts)
    sampling = _make(f"{where}.sampler", SamplingSpec.from_dict, st["sampler"])
    augment = _make(f"{where}.augment", AugmentSpec.from_dict,
                    {**st["augment"], "crop_scale": tuple(st["augment"]["crop_scale"])})
    for key, classes in (("sampler.classes", sampling.classes), ("classes", st["classes"])):
        bad = [c for c in classes or [] if not 0 <= c < n]
        if bad:
            raise ConfigError(f"{where}.{key}: classes {bad} are not in the shards ({n} classes)")
    head = _head_after(where, st, head, sampling, n)
    sampled = sampling.classes if sampling.classes is not None else list(range(n))
    outside = sorted(set(sampled) - set(head))
    if outside:
        raise ConfigError(f"{where}: the sampler draws classes {outside} that the head does not cover "
                          f"(head: {head}); set {where}.sampler.classes to the head's classes")
    trained = np.zeros(n, dtype=bool)
    trained[sampled] = True
    loss_counts = tuple(int(c) for c in np.where(trained, counts, 0))
    optim, batch = _optim(cfg, st), cfg["data"]["batch_size"]
    schedule = Schedule(micro_batches(_epoch_samples(counts, sampling, where), batch, optim.grad_accum), 1,
                        optim.lr, optim.grad_accum, optim.warmup_epochs, optim.schedule, optim.min_lr)
    epochs, length = epochs_for(st, schedule.steps_per_epoch, batch)
    try:
        build_loss(st["loss"], np.asarray(loss_counts), epochs=epochs)
    except (ValueError, TypeError, KeyError, ConfigError) as e:
        raise ConfigError(f"{where}.loss: {e}") from None
    return StageSpec(
        index=i, name=st["name"], length=length, schedule=replace(schedule, epochs=epochs),
        sampling=sampling, augment=augment, train=st["train"], head_change=st["head"],
        expand_rows=st["expand_rows"], head_classes=tuple(head), loss=dict(st["loss"]),
        loss_counts=loss_counts, optim=optim, classifiers=tuple(st["classifiers"]),
        select=st["select"], bn=st["bn"]), head


def _make(where: str, make, value):
    try:
        return make(value)
    except ConfigError:
        raise
    except (ValueError, TypeError, DataError) as e:
        raise ConfigError(f"{where}: {e}") from None


def _head_after(where: str, st: dict, head: list[int], sampling: SamplingSpec, n: int) -> list[int]:
    """The head's classes after this stage's transition: subset takes `classes`, else the
    sampler's class filter; expand goes back to all classes; keep and reset change nothing."""
    if st["head"] == "subset":
        classes = st["classes"] if st["classes"] is not None else sampling.classes
        if not classes:
            raise ConfigError(f"{where}: head: subset needs {where}.classes (or {where}.sampler.classes)")
        missing = sorted(set(classes) - set(head))
        if missing:
            raise ConfigError(f"{where}.classes: {missing} are not in the head before this stage ({head})")
        return sorted(set(classes))
    if st["classes"] is not None:
        raise ConfigError(f"{where}.classes: only used with head: subset (here head: {st['head']})")
    return list(range(n)) if st["head"] == "expand" else head


def _optim(cfg: dict, st: dict) -> OptimSpec:
    merged = {**cfg["optim"], **{k: v for k, v in st["optim"].items() if v is not None}}
    merged.pop("precision")
    return OptimSpec(**merged)


def _epoch_samples(counts: np.ndarray, sampling: SamplingSpec, where: str) -> int:
    """Samples in one epoch of this sampling (the length of its `epoch_plan`)."""
    kept = np.asarray(counts).copy()
    if sampling.classes is not None:
        mask = np.zeros(len(kept), dtype=bool)
        mask[sampling.classes] = True
        kept[~mask] = 0
    if sampling.per_class is not None:
        return int(sampling.per_class * np.count_nonzero(kept))
    if sampling.epoch_size is not None and sampling.kind != "sequential":
        return int(sampling.epoch_size)
    if kept.sum() == 0:
        raise ConfigError(f"{where}.sampler: the train split has no samples of the classes drawn")
    return int(kept.sum())


def _double_correction(where: str, st: dict) -> list[str]:
    """A re-balancing sampler and a re-balancing loss correct the imbalance twice."""
    s, loss = st["sampler"], st["loss"] or {}
    rebalanced = s["per_class"] is not None or s["kind"] in REBALANCING_KINDS or (
        s["kind"] == "power" and (s["q"] or 0) < 1)
    fixes = []
    if loss.get("name") in REBALANCING_LOSSES:
        fixes.append(f"loss.name={loss['name']}")
    if loss.get("reweight", "none") != "none":
        fixes.append(f"loss.reweight={loss['reweight']}")
    for key in ("drw_epoch", "drw_at"):
        if loss.get(key) is not None:
            fixes.append(f"loss.{key}={loss[key]}")
    if not (rebalanced and fixes):
        return []
    how = f"sampler.per_class={s['per_class']}" if s["per_class"] is not None else f"sampler.kind={s['kind']}"
    return [f"{where}: {how} already balances the classes and {' and '.join(fixes)} corrects the "
            f"imbalance again (twice in all); drop one unless that is intended"]
