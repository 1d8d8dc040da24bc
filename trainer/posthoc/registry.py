"""The table of post-hoc classifiers: every module in trainer/posthoc/classifiers/ defines one
`PosthocClassifier` subclass, which registers itself under its `name`. The recipe schema, the
resolved spec, fitting, saving, loading and the command-line help all read this table.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, ClassVar

from torch import nn

from trainer.errors import ConfigError
from trainer.models.heads import FullLogits, Head
from trainer.posthoc import batchnorm

_TABLE: dict[str, type["PosthocClassifier"]] = {}
_LOADED: list[bool] = []


class PosthocClassifier:
    """A classifier fitted on frozen features; as a module it maps features [B, D] to logits
    over all classes. A subclass sets `name`, `summary` (one line for help texts), `Options` (a
    dataclass: the recipe's `posthoc.<name>` section with its defaults) and implements `fit`
    and `empty`; `settings` and `card` have defaults."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    Options: ClassVar[type]
    linear_head_only: ClassVar[bool] = False   # rescales a linear head's rows: refused with a cosine head

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            module = cls.__module__.rpartition(".")[2]
            if cls.__module__.startswith("trainer.posthoc.classifiers.") and module != cls.name:
                raise TypeError(f"{cls.__module__}: its classifier must be named {module!r} (trainer.posthoc.names "
                                f"lists classifiers by module), not {cls.name!r}")
            _TABLE[cls.name] = cls

    @classmethod
    def settings(cls, options: dict, train_counts: Any) -> Any:
        """The recipe's options, checked and resolved against the train split's class counts."""
        return cls.Options(**options)

    @classmethod
    def fit(cls, ctx: Any, settings: Any) -> tuple[nn.Module, dict]:
        """-> (the fitted module, extra fields for its validation EVAL). `ctx` is a
        trainer.posthoc.fit.FitContext: features, the model's head, head training, the seed."""
        raise NotImplementedError

    @classmethod
    def card(cls, clf: nn.Module) -> dict:
        """What `empty` needs besides the state dict (saved in classifiers.json)."""
        return {}

    @classmethod
    def empty(cls, card: dict, feature_dim: int, num_classes: int) -> nn.Module:
        """A module to load a saved state dict into."""
        raise NotImplementedError


class HeadClassifier(PosthocClassifier):
    """A classifier that is a linear (or cosine) `Head` over all classes, maybe with the
    BatchNorm statistics it was trained with (trainer.posthoc.batchnorm): saved and loaded alike."""

    @classmethod
    def card(cls, clf: nn.Module) -> dict:
        return {**head_card(batchnorm.inner(clf).head), **batchnorm.card(clf)}

    @classmethod
    def empty(cls, card: dict, feature_dim: int, num_classes: int) -> nn.Module:
        return batchnorm.rewrap(card, FullLogits(head_from_card(card, feature_dim, num_classes), num_classes))


def head_card(head: Head) -> dict:
    """What rebuilds a head's kind: cosine or not, and the cosine head's scale."""
    return {"normalized": head.normalized, "scale": head.scale}


def head_from_card(card: dict, feature_dim: int, num_classes: int) -> Head:
    """An empty head of the kind `head_card` recorded (scale 1: saved before heads carried it)."""
    return Head(feature_dim, num_classes, card.get("normalized", False), card.get("scale", 1.0))


def table() -> dict[str, type[PosthocClassifier]]:
    """Every post-hoc classifier, by name (their modules are imported on first use)."""
    if not _LOADED:   # every module, even when some were imported directly before
        package = importlib.import_module("trainer.posthoc.classifiers")
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _LOADED.append(True)
    return dict(sorted(_TABLE.items()))


def get(name: str) -> type[PosthocClassifier]:
    kinds = table()
    if name not in kinds:
        raise ConfigError(f"post-hoc classifier {name!r}: unknown; valid: {', '.join(kinds)}")
    return kinds[name]
