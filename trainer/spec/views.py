"""Test-time augmentation views by name (the functions live in trainer.evaluate.scoring).

`tta: auto` in a recipe means the identity plus the mirror images that keep the radar's look
direction (datasets.geometry); an integer n means the first n of DIHEDRAL (n = 3 is Li, Tan & Pan's
identity/hflip/vflip).
"""
from __future__ import annotations

from collections.abc import Sequence

from trainer.errors import ConfigError

DIHEDRAL = ("identity", "hflip", "vflip", "rot180", "transpose", "rot90", "rot270", "anti_transpose")


def view_names(tta: int | Sequence[str]) -> tuple[str, ...]:
    """An int n -> the first n dihedral views; names are checked."""
    if isinstance(tta, int):
        if not 1 <= tta <= len(DIHEDRAL):
            raise ConfigError(f"tta: number of views must be 1..{len(DIHEDRAL)}, got {tta}")
        return DIHEDRAL[:tta]
    names = tuple(tta)
    bad = [v for v in names if v not in DIHEDRAL]
    if bad or not names:
        raise ConfigError(f"tta: unknown views {bad or names}; valid: {', '.join(DIHEDRAL)}")
    return names
