"""How a raw image becomes the stored 8-bit chip: the intensity mapping and the size policy.

Both are recorded in index.json (per build) and applied by the same functions here in
`shards build`, `trainer predict` and the exported model's preprocessing note, so a file gives
the same uint8 pixels in training and in deployment.

Intensity (`--intensity`), from the decoded values x of one chip:
- `linear`: x / full scale * 255 (full scale 255 for 8-bit, 65535 for 16-bit, 1.0 for float32);
  8-bit chips are stored unchanged.
- `percentile`: the chip's own 1st..99th percentile stretched to 0..255 (16-bit SAR often uses a
  small part of its range).
- `db`: 20·log10(x) (amplitude to decibels; negative values are an error), then the same percentile stretch (float amplitude
  spans several decades).
- `auto`: linear for 8-bit, percentile for 16-bit, db for float32 chips.

Size (`--size-policy`, `--chip-size N`): without a chip size chips are stored at their own size
and training, predict and export centre-crop them (edge-replicating a side shorter than the
input) to the input size. With N every chip is first brought to N×N: `crop` (centre crop /
edge pad), `pad` (centre crop / zero pad) or `resize` (bilinear). Where chip size differs by
class, `resize` lets the size leak the label (a small chip's objects get bigger); cropping
does not, hence the default.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

INTENSITIES = ("auto", "linear", "percentile", "db")
AUTO_INTENSITY = {"8-bit": "linear", "16-bit": "percentile", "float32": "db"}
FULL_SCALE = {"8-bit": 255.0, "16-bit": 65535.0, "float32": 1.0}
SIZE_POLICIES = ("crop", "pad", "resize")
PERCENTILES = (1.0, 99.0)


@dataclass(frozen=True)
class ChipSpec:
    """The recorded preprocessing of one shard folder's chips."""

    intensity: str = "auto"            # the option; `mapping(depth)` says what it does
    size_policy: str = "crop"
    chip_size: int | None = None       # None: chips keep their own size

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITIES:
            raise ValueError(f"intensity must be one of {', '.join(INTENSITIES)}, got {self.intensity!r}")
        if self.size_policy not in SIZE_POLICIES:
            raise ValueError(f"size policy must be one of {', '.join(SIZE_POLICIES)}, "
                             f"got {self.size_policy!r}")
        if self.chip_size is not None and self.chip_size < 1:
            raise ValueError(f"chip size must be >= 1, got {self.chip_size}")
        if self.size_policy != "crop" and self.chip_size is None:
            raise ValueError(f"size policy {self.size_policy!r} needs a chip size (--chip-size N)")

    def mapping(self, depth: str) -> str:
        return AUTO_INTENSITY[depth] if self.intensity == "auto" else self.intensity

    def to_json(self, depth: str | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"intensity": self.intensity, "size_policy": self.size_policy,
                             "chip_size": self.chip_size, "percentiles": list(PERCENTILES)}
        if depth is not None:
            d.update(depth=depth, mapping=self.mapping(depth))
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> ChipSpec:
        """A recorded spec; None (an index or run from before it was recorded): the defaults,
        which is what those builds did (8-bit PNG stored unchanged, centre crop)."""
        if not d:
            return cls()
        return cls(str(d.get("intensity", "auto")), str(d.get("size_policy", "crop")),
                   None if d.get("chip_size") is None else int(d["chip_size"]))

    def describe(self, depth: str) -> str:
        """`auto -> percentile for 16-bit chips; stored at their own size (centre crop)`."""
        how = self.mapping(depth)
        intensity = (f"{self.intensity} -> {how}" if self.intensity == "auto" else how) + f" for {depth} chips"
        size = ("stored at their own size, centre-cropped to the input size" if self.chip_size is None
                else f"{self.size_policy} to {self.chip_size}x{self.chip_size}")
        return f"intensity {intensity}; {size}"


def stretch(x: np.ndarray) -> np.ndarray:
    """The chip's PERCENTILES range -> 0..1 (a flat chip maps to 0)."""
    lo, hi = np.percentile(x, PERCENTILES)
    if not hi > lo:
        return np.zeros_like(x)
    return (x - lo) / (hi - lo)


def to_uint8(pixels: np.ndarray, depth: str, mapping: str) -> np.ndarray:
    """Decoded values (uint8, uint16/int32 or float32) -> uint8 by `mapping`."""
    if mapping == "linear" and depth == "8-bit" and pixels.dtype == np.uint8:
        return pixels
    x = pixels.astype(np.float64)
    if mapping == "linear":
        y = x / FULL_SCALE[depth]
    elif mapping == "percentile":
        y = stretch(x)
    elif mapping == "db":
        if x.min() < 0:
            raise ValueError(f"negative values (down to {x.min():.4g}), not amplitude: data already in "
                             "dB? use --intensity percentile")
        floor = max(float(x.max()), 1.0) * 1e-6       # zeros: 120 dB below the peak
        y = stretch(20.0 * np.log10(np.maximum(x, floor)))
    else:
        raise ValueError(f"unknown intensity mapping {mapping!r}")
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def centre_index(length: int, size: int) -> np.ndarray:
    """Source index of each output row: centre crop / edge-replicate pad (as the trainer's crop)."""
    return np.clip(np.arange(size) + (length - size) // 2, 0, length - 1)


def fit_size(pixels: np.ndarray, policy: str, size: int | None) -> np.ndarray:
    """uint8 [H,W] or [H,W,C] -> [size,size(,C)] by `policy`; unchanged when size is None."""
    h, w = pixels.shape[:2]
    if size is None or (h == size and w == size):
        return pixels
    if policy == "crop":
        return pixels[centre_index(h, size)][:, centre_index(w, size)]
    if policy == "pad":
        out = np.zeros((size, size) + pixels.shape[2:], pixels.dtype)
        top, left = (size - h) // 2, (size - w) // 2
        src = pixels[max(-top, 0):max(-top, 0) + min(h, size), max(-left, 0):max(-left, 0) + min(w, size)]
        out[max(top, 0):max(top, 0) + src.shape[0], max(left, 0):max(left, 0) + src.shape[1]] = src
        return out
    if policy == "resize":
        return np.asarray(Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR))
    raise ValueError(f"unknown size policy {policy!r}")


def png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
