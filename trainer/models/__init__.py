"""Model zoo: `build_model(cfg, num_classes)` from the recipe's `model:` section.

Every model has `features(x) -> [B, D]` (after global pooling), `feature_dim`,
`classifier: Head`, `forward(x) = classifier(features(x))` and `last_block()`.
Inputs are [B, in_channels, S, S] floats, any S ≥ 16.

`head: linear | cosine` (every model; default linear) picks the classifier: cosine is
LDAM-DRW's normalised linear layer (no bias) whose logits are `cosine_scale` · cosine (kaidic's
s = 30 in the recipe schema; 1 where a model card predates the key, as such heads were trained).
"""
from __future__ import annotations

from torch import nn

from trainer.errors import ConfigError
from trainer.models.fusion import LateFusion
from trainer.models.heads import Head
from trainer.models.resnet import LAYERS, ResNet
from trainer.models.resnet_cifar import ResNetCifar
from trainer.models.shake_shake import ShakeShake

# name -> (class, defaults). Widths are the channels of the first stage.
MODELS: dict[str, tuple[type[nn.Module], dict]] = {
    "shake_shake": (ShakeShake, {"depth": 26, "width": 32, "in_channels": 1}),
    "resnet_cifar": (ResNetCifar, {"depth": 32, "width": 16, "in_channels": 1}),
    "resnet18": (ResNet, {"depth": 18, "width": 64, "in_channels": 1}),
}

HEADS = ("linear", "cosine")

__all__ = ["HEADS", "Head", "MODELS", "build_model"]


def build_model(cfg: dict, num_classes: int) -> nn.Module:
    """Build a freshly initialised model (never pretrained) with a head over all classes.
    `fusion: late` with `modality_channels: [1, 3]` builds one backbone per modality
    (trainer/models/fusion.py); otherwise one backbone takes `in_channels`."""
    cfg = dict(cfg)
    scale = float(cfg.pop("cosine_scale", None) or 1.0)
    fusion, parts = cfg.pop("fusion", None) or "early", cfg.pop("modality_channels", None)
    if fusion not in ("early", "late"):
        raise ConfigError(f"model.fusion: {fusion!r} is not early or late")
    if fusion == "late" and parts and len(parts) > 1:
        if cfg.get("head") == "cosine":
            raise ConfigError("model.fusion: late takes a linear head")
        backbones = [build_model({**cfg, "in_channels": c}, num_classes) for c in parts]
        return LateFusion(backbones, list(parts), num_classes)
    name = cfg.get("name")
    if name not in MODELS:
        raise ConfigError(f"model.name: unknown model {name!r}; valid: {', '.join(MODELS)}")
    cls, defaults = MODELS[name]
    unknown = sorted(set(cfg) - set(defaults) - {"name", "head"})
    if unknown:
        raise ConfigError(f"model: unknown key(s) {unknown} for {name}; valid: name, {', '.join(defaults)}, head")
    head = cfg.get("head") or "linear"
    if head not in HEADS:
        raise ConfigError(f"model.head: unknown head {head!r}; valid: {', '.join(HEADS)}")
    args = {**defaults, **{k: v for k, v in cfg.items() if k not in ("name", "head")}}
    _check(name, args, num_classes)
    model = cls(num_classes=num_classes, **args)
    if head == "cosine":
        # Swapped after construction so that linear models stay bit-identical to before
        # (the constructors' RNG draws are unchanged).
        model.classifier = Head(model.feature_dim, num_classes, normalized=True, scale=scale)
    return model


def _check(name: str, args: dict, num_classes: int) -> None:
    for key in ("depth", "width", "in_channels"):
        if not isinstance(args[key], int) or isinstance(args[key], bool) or args[key] < 1:
            raise ConfigError(f"model.{key}: expected a positive integer, got {args[key]!r}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"model: num_classes must be a positive integer, got {num_classes!r}")
    depth = args["depth"]
    if name == "resnet18":
        if depth not in LAYERS:
            raise ConfigError(f"model.depth: {name} supports depth {sorted(LAYERS)}, got {depth}")
    elif depth < 8 or (depth - 2) % 6:
        raise ConfigError(f"model.depth: {name} needs depth = 6n+2 with n ≥ 1 (8, 14, 20, 26, 32, ...), got {depth}")
    if name == "shake_shake" and args["width"] < 2:
        raise ConfigError(f"model.width: shake_shake needs width ≥ 2, got {args['width']}")
