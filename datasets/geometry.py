"""Which way the radar looks, read off the chips, and the mirror images that keep it.

A SAR sensor illuminates the scene from one side: tall parts lay over towards the radar and
shadows fall away from it, along the range axis, in the same direction in every chip. A 90°
rotation (or a free one) moves that direction, and so does a mirror across the azimuth axis
(the one perpendicular to range); a mirror along the range axis keeps it. So:
- radar on the left or right (range axis horizontal): a top↔bottom mirror (vflip) keeps the
  geometry, a left↔right mirror (hflip) reverses it;
- radar above or below (range axis vertical): the other way round.

The range axis shows in the mean chip: with the vehicle centred, the shadow side is darker on
average. `range_axis` compares the mean chip's left/right and top/bottom asymmetry.
"""
from __future__ import annotations

import numpy as np

from datasets.decode import ChipDecoder
from datasets.stream_spec import OpenSplit

CLEAR_RATIO = 2.0   # one axis this many times more asymmetric than the other: that is the range axis
SAMPLE = 2000       # chips read to estimate the mean chip


def asymmetry(pixels: np.ndarray) -> tuple[float, float]:
    """(left/right, top/bottom) asymmetry of the mean of uint8 chips [N,1,S,S]: mean |M − mirror(M)|
    relative to the mean |M − mean(M)|."""
    m = pixels.astype(np.float64).mean(axis=(0, 1))
    spread = np.abs(m - m.mean()).mean() or 1.0
    return (float(np.abs(m - m[:, ::-1]).mean() / spread), float(np.abs(m - m[::-1, :]).mean() / spread))


def range_axis(data: OpenSplit, size: int, *, sample: int = SAMPLE, seed: int = 0) -> tuple[str, tuple[float, float]]:
    """'horizontal' (radar left or right), 'vertical' (radar above or below) or 'unknown', and
    the two asymmetries, from up to `sample` chips of the split."""
    n = len(data.split)
    start, stop = data.speckle_channels            # the radar's channels; optical chips have none
    if not n or stop == start:
        return "unknown", (0.0, 0.0)
    ids = np.sort(np.random.default_rng(seed).permutation(n)[:sample]) if n > sample else np.arange(n)
    lr, tb = asymmetry(ChipDecoder(data, size)(ids).numpy()[:, start:stop])
    if lr > CLEAR_RATIO * tb:
        return "horizontal", (lr, tb)
    if tb > CLEAR_RATIO * lr:
        return "vertical", (lr, tb)
    return "unknown", (lr, tb)


def safe_flips(axis: str) -> tuple[bool, bool]:
    """(hflip, vflip) that keep the look direction. With no clear range axis: hflip only, the
    choice measured on real SAR chips (docs/augmentation.md); the chips show no side to protect."""
    return {"horizontal": (False, True), "vertical": (True, False)}.get(axis, (True, False))
