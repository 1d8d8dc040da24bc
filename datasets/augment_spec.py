"""The augmentation spec (the recipe's `augment:` section), without torch: the recipe schema
reads it before torch loads. Its meaning is defined in datasets/augment.py, which implements it."""
from __future__ import annotations

from dataclasses import dataclass

from datasets.options import from_mapping

ROTATIONS = ("none", "free", "right")


@dataclass
class AugmentSpec:
    rotate: str = "none"          # none | free (uniform angle) | right (multiples of 90°)
    hflip: bool = False
    vflip: bool = False
    crop_scale: tuple[float, float] = (1.0, 1.0)   # random resized crop, area fraction
    translate: int = 0            # max shift in px (each axis)
    speckle: float = 0.0          # multiplicative noise: x * g, g ~ Gamma(L, 1/L), std = speckle
    brightness: float = 0.0       # factor uniform in [1-b, 1+b]
    contrast: float = 0.0         # factor uniform in [1-c, 1+c]

    def __post_init__(self) -> None:
        if self.rotate not in ROTATIONS:
            raise ValueError(f"augment: rotate must be one of {ROTATIONS}, got {self.rotate!r}")
        lo, hi = (float(v) for v in self.crop_scale)
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"augment: crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}")
        self.crop_scale = (lo, hi)
        if int(self.translate) != self.translate or self.translate < 0:
            raise ValueError(f"augment: translate must be an integer >= 0, got {self.translate}")
        self.translate = int(self.translate)
        for name in ("speckle", "brightness", "contrast"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= (5.0 if name == "speckle" else 1.0):
                raise ValueError(f"augment: {name} out of range, got {value}")
            setattr(self, name, value)

    @classmethod
    def from_dict(cls, d: dict | None) -> "AugmentSpec":
        """Build from a recipe mapping (None: the defaults); unknown keys raise DataError."""
        return from_mapping(cls, d, "augment")

    @property
    def warps(self) -> bool:
        return self.crop_scale != (1.0, 1.0) or self.rotate == "free" or self.translate > 0
