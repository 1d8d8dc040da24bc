"""Option dataclasses (AugmentSpec, SamplingSpec) built from a recipe's mapping."""
from __future__ import annotations

from dataclasses import fields
from typing import TypeVar

from shards.errors import DataError

T = TypeVar("T")


def from_mapping(cls: type[T], d: dict | None, what: str) -> T:
    """`cls(**d)` (None: all defaults); unknown keys raise DataError listing the valid ones."""
    d = dict(d or {})
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise DataError(f"{what}: unknown key(s) {unknown}, valid keys: {valid}")
    return cls(**d)
