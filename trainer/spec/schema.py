"""The recipe schema: every key a recipe may set, its type, default and allowed values.

A `Field` is a leaf, a dict is a section, `OPEN` marks a free-form dict handed to its consumer
(the loss config, the evaluation groups), and `stages` is a list whose items follow `STAGE`.
trainer.spec.config validates recipes against it; trainer.spec.resolve resolves them.

Loading it needs no torch except for the `posthoc` section, read from the post-hoc classifiers'
Options (their modules import torch): `LIGHT_SCHEMA` leaves that section open, so a recipe's
other keys are checked before torch loads; `SCHEMA` (built on first use) is the whole schema.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from functools import cache

from datasets.augment_spec import ROTATIONS, AugmentSpec
from datasets.sampling import KINDS as SAMPLING_KINDS
from datasets.sampling import SamplingSpec
from trainer.posthoc.names import classifier_names
from trainer.spec.optim_spec import OptimSpec

REQUIRED = object()  # default meaning "must be given"


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    default: Any
    choices: tuple | None = None
    nullable: bool = False
    item_type: type | None = None  # for lists


def field(types, default, choices=None, nullable=False, item_type=None) -> Field:
    types = types if isinstance(types, tuple) else (types,)
    return Field(types, default, tuple(choices) if choices else None, nullable, item_type)


def auto_bool(default="auto") -> Field:
    """true | false | auto (auto: decided where the setting takes effect, e.g. on CUDA only)."""
    return field((bool, str), default, [True, False, "auto"])


def section(options: type, **overrides: Field) -> dict[str, Field]:
    """A schema section read from a dataclass of options: its types, defaults and choices
    (`dataclasses.field(metadata={"choices": ...})`), so the defaults have one home.
    `overrides` replace the fields whose recipe form differs (e.g. `auto` where the code takes a bool)."""
    hints = typing.get_type_hints(options)
    out = {}
    for f in dataclasses.fields(options):
        args = typing.get_args(hints[f.name]) if typing.get_origin(hints[f.name]) in (typing.Union, types.UnionType) \
            else (hints[f.name],)
        kinds = tuple(typing.get_origin(a) or a for a in args if a is not type(None))
        items = [typing.get_args(a)[0] for a in args if typing.get_origin(a) in (list, tuple)]
        out[f.name] = overrides.get(f.name) or field(kinds, f.default, f.metadata.get("choices"), type(None) in args,
                                                     items[0] if items else None)
    return out


OPEN = "open"  # free-form dict, validated by its consumer (build_loss, metrics.group_classes)

SAMPLER = section(SamplingSpec, kind=field(str, "instance", SAMPLING_KINDS),
                  redraw=field(str, None, ["epoch", "stage"], nullable=True))
AUGMENT = section(AugmentSpec, rotate=field(str, "none", ROTATIONS),
                  hflip=auto_bool(False), vflip=auto_bool(False),   # auto: when the mirror keeps the look direction
                  crop_scale=field(list, [1.0, 1.0], item_type=float))
OPTIM = {**section(OptimSpec, schedule=field(str, "cosine", ["cosine", "constant", "step"])),
         "precision": field(str, "auto", ["auto", "no", "bf16", "fp16"])}
# Per-stage optimizer overrides: same keys, every one optional (None = take the global value).
STAGE_OPTIM = {k: field(f.types, None, f.choices, True, f.item_type) for k, f in OPTIM.items()
               if k not in ("precision",)}
STAGE = {
    "name": field(str, REQUIRED),
    "epochs": field(int, None, nullable=True),
    "steps": field(int, None, nullable=True),
    "samples": field(int, None, nullable=True),
    "sampler": SAMPLER,
    "augment": AUGMENT,
    "train": field(str, "all", ["all", "classifier", "last_block"]),
    "head": field(str, "keep", ["keep", "subset", "expand", "reset"]),
    "classes": field(list, None, nullable=True, item_type=int),
    "expand_rows": field(str, "fresh", ["fresh", "restore"]),
    "loss": OPEN,
    "optim": STAGE_OPTIM,
    "classifiers": field(list, [], item_type=str),
    "select": field(str, "last", ["last", "best"]),
    # a frozen backbone's BatchNorm (train: classifier | last_block): eval keeps its statistics;
    # train re-estimates them on this stage's batches, as classifier-balancing's cRT does
    "bn": field(str, "eval", ["eval", "train"]),
}
LIGHT_SCHEMA = {
    "seed": field(int, 0),
    "run": {
        "dir": field(str, None, nullable=True),
        "recipe": field(str, None, nullable=True),   # the recipe file it came from (set on load)
        "log_every": field(int, 50),
        "progress_bar": field(bool, True),
        "log_with": field(str, "tensorboard", ["tensorboard", "csv", "wandb", "none"]),  # trainer/train/trackers.py
    },
    "data": {
        "shards": field(str, REQUIRED),
        "input_size": field((int, str), "auto"),  # px, or auto: follow the chips (index image sizes)
        "batch_size": field(int, 128),
        "eval_batch_size": field(int, 256),
        "num_workers": field(int, 2),
        "loader": field(str, "auto", ["auto", "resident", "torch", "dali"]),
        "dali_threads": field(int, 4),
        "tta": field((int, str), 1),   # views: a number (the first n dihedral views) or auto
    },
    "model": {
        "name": field(str, "shake_shake"),     # checked by trainer.models.build_model
        "depth": field(int, 26),
        "width": field(int, 32),
        "head": field(str, "auto", ["auto", "linear", "cosine"]),  # auto: cosine for LDAM (its authors')
        "cosine_scale": field(float, 30.0),   # s of a cosine head: logits s·cos (LDAM-DRW's s)
        "fusion": field(str, "early", ["early", "late"]),  # several modalities: stacked channels, or a backbone each
    },
    "optim": OPTIM,
    "speed": {
        "channels_last": auto_bool(True), # faster on CUDA and, for these models, on the CPU too
        "compile": auto_bool(False),      # torch.compile; training batches padded to one size: one graph per stage
        "cudnn_benchmark": auto_bool(),
        "sgd": field(str, "auto", ["auto", "foreach", "fused", "plain"]),
        "sync_bn": field(bool, False),
        "deterministic": field(bool, False),  # bit-identical CUDA reruns: cuDNN deterministic, no benchmark
    },
    "eval": {
        "groups": OPEN,
        "select_metric": field(str, "balanced_acc", ["balanced_acc", "top1"]),
    },
    "posthoc": {name: OPEN for name in classifier_names()},   # SCHEMA: each classifier's Options
    "stages": [STAGE],
}
# Keys that moved: the old spelling is an error naming the new one ({} = the parent's path).
MOVED = {("stage", "lr"): "{}.optim.lr"}
CLASSIFIERS = classifier_names()
DEFAULT_LOSS = {"name": "ce"}
# Keys that may differ between a run and its resumption (they do not change results).
# run.dir: a moved or copied run folder still resumes.
RESUME_FREE = {("data", "num_workers"), ("run", "progress_bar"), ("run", "dir"), ("run", "log_every"), ("run", "log_with"),
               ("data", "loader"), ("data", "dali_threads"), ("run", "recipe"),
               *(("speed", k) for k in LIGHT_SCHEMA["speed"])}


@cache
def full_schema() -> dict:
    """LIGHT_SCHEMA with the `posthoc` section of every classifier (imports torch)."""
    from trainer.posthoc.registry import table

    return {**LIGHT_SCHEMA, "posthoc": {name: section(kind.Options) for name, kind in table().items()}}


def __getattr__(name: str):   # `schema.SCHEMA`, built when first asked for
    if name == "SCHEMA":
        return full_schema()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
