"""The recipe schema: every key a recipe may set, its type, default and allowed values.

A `Field` is a leaf, a dict is a section, `OPEN` marks a free-form dict handed to its consumer
(the loss config, the evaluation groups), and `stages` is a list whose items follow `STAGE`.
trainer.config validates recipes against it; trainer.spec resolves them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


OPEN = "open"  # free-form dict, validated by its consumer (build_loss, metrics.group_classes)

SAMPLER = {
    "kind": field(str, "instance", ["instance", "class", "sqrt", "power", "progressive", "sequential"]),
    "q": field(float, None, nullable=True),
    "classes": field(list, None, nullable=True, item_type=int),
    "per_class": field(int, None, nullable=True),
    "epoch_size": field(int, None, nullable=True),
    "redraw": field(str, None, ["epoch", "stage"], nullable=True),
}
AUGMENT = {
    "rotate": field(str, "none", ["none", "free", "right"]),
    "hflip": auto_bool(False),        # auto: when the mirror keeps the radar's look direction
    "vflip": auto_bool(False),
    "crop_scale": field(list, [1.0, 1.0], item_type=float),
    "translate": field(int, 0),
    "speckle": field(float, 0.0),
    "brightness": field(float, 0.0),
    "contrast": field(float, 0.0),
}
OPTIM = {
    "lr": field(float, 0.1),
    "momentum": field(float, 0.9),
    "nesterov": field(bool, True),
    "weight_decay": field(float, 5e-4),
    "warmup_epochs": field(float, 0.0),
    "schedule": field(str, "cosine", ["cosine", "constant"]),
    "min_lr": field(float, 0.0),
    "precision": field(str, "auto", ["auto", "no", "bf16", "fp16"]),
    "grad_accum": field(int, 1),
}
# Per-stage optimizer overrides: same keys, every one optional (None = take the global value).
STAGE_OPTIM = {k: field(f.types, None, f.choices, True, f.item_type) for k, f in OPTIM.items()
               if k not in ("precision",)}
LENGTHS = ("epochs", "steps", "samples")   # a stage gives exactly one
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
}
HEAD_TRAINING = {   # cRT and LWS: a classifier trained on the frozen representation
    "features": field(str, "stream", ["stream", "cached"]),
    "epochs": field(int, None, nullable=True),
    "steps": field(int, None, nullable=True),
    "samples": field(int, None, nullable=True),
    "batch_size": field(int, 512),
    "lr": field(float, 0.2),
    "momentum": field(float, 0.9),
    "weight_decay": field(float, 5e-4),
}
SCHEMA = {
    "seed": field(int, 0),
    "run": {
        "dir": field(str, None, nullable=True),
        "recipe": field(str, None, nullable=True),   # the recipe file it came from (set on load)
        "log_every": field(int, 50),
        "progress_bar": field(bool, True),
        "debug_ids": field(bool, False),        # log the sample ids each rank sees (tests)
        "fail_at_step": field(int, None, nullable=True),  # inject a crash (resume tests)
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
    "posthoc": {
        "crt": HEAD_TRAINING,    # no length given: 10 epochs (classifier-balancing's cRT)
        "lws": HEAD_TRAINING,    # no length given: 5 epochs
        "ncm": {"metric": field(str, "l2_centred", ["l2_centred", "cosine"])},
        "tau_norm": {"max": field(float, 2.0), "step": field(float, 0.1)},
    },
    "stages": [STAGE],
}
# Keys that moved: the old spelling is an error naming the new one ({} = the parent's path).
MOVED = {("stage", "lr"): "{}.optim.lr"}
CLASSIFIERS = ("crt", "ncm", "tau_norm", "lws")
DEFAULT_LOSS = {"name": "ce"}
# Keys that may differ between a run and its resumption (they do not change results).
RESUME_FREE = {("data", "num_workers"), ("run", "progress_bar"), ("run", "fail_at_step"),
               ("data", "loader"), ("data", "dali_threads"), ("run", "recipe"),
               *(("speed", k) for k in SCHEMA["speed"])}
