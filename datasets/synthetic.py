"""Synthetic SAR vehicle chips in the NTIRE raw layout: the embedded default dataset.

`python -m datasets synth OUT [--preset mini|ntire] [--seed S] [--workers N]`

Each chip is rendered in numpy from a top-down vehicle model (segments such as hood, cab, bed,
box or trailer, plus point scatterers: corners, rims, wheels, roof gear) seen by a side-looking
radar from the left of the image: layover pulls tall parts towards the radar, a shadow falls to
the right, the ground is K-distributed clutter (Gamma texture x Gamma speckle) with roads, and
the result is log-compressed to 8 bits. Pixel spacing, dimensions, look angle and contrast vary
per chip, so the size-based classes overlap and the task is learnable but not trivial.
Every chip has its own RNG seeded from (seed, split, index): output is independent of workers.
"""
from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from datasets.ntire import (CHIP_SIDE_RANGE, CLASS_NAMES, NTIRE_TEST_PER_CLASS, NTIRE_TRAIN_COUNTS,
                            TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES)
from shards.errors import DataError

GENERATOR_VERSION = "sar-synth/1"
MANIFEST = "synth.json"
CONTACT_SHEET = "contact_sheet.png"
PRESETS: dict[str, tuple[tuple[int, ...], int]] = {   # name -> (train counts, test chips per class)
    "ntire": (NTIRE_TRAIN_COUNTS, NTIRE_TEST_PER_CLASS),
    "mini": ((3000, 360, 196, 136, 40, 24, 24, 20, 24, 20), 50),
}
EO_CLASSES = (0, 3, 6, 9)          # class folders that also get a few optical EO_<id>.png chips
EO_PER_CLASS = 2
_SPLIT_CODE = {"train": 0, "test": 1, "eo": 2, "plan": 3}   # keeps the per-chip RNG streams apart


# ----------------------------------------------------------------------------------------------
# Vehicle models: segments (extent along the vehicle, width, height, roof gain) and point scatterers.
# Lengths are metres measured back from the nose; the renderer centres the vehicle.

class _Parts:
    """Collects segments and point scatterers; point amplitudes get one exponential draw each
    (Swerling-like fluctuation) when the model is finished."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.segs: list[tuple[float, float, float, float, float]] = []   # a, b, half width, height, gain
        self.pts: list[tuple[np.ndarray, np.ndarray, float, np.ndarray | float]] = []  # d, v, z, mean amp

    def seg(self, a: float, b: float, width: float, height: float, gain: float) -> None:
        self.segs.append((a, b, width / 2, height, gain))

    def point(self, d, v, z, amp) -> None:
        """Scatterers at distances d from the nose, offsets v from the axis, height z (d and v
        broadcast against each other; z and amp are scalars or match them)."""
        d, v = np.asarray(d, float).ravel(), np.asarray(v, float).ravel()
        n = max(d.size, v.size) if d.size and v.size else 0
        self.pts.append((d if d.size == n else np.repeat(d, n), v if v.size == n else np.repeat(v, n), z, amp))

    def rim(self, a: float, b: float, width: float, z: float, step: float, amp: float,
            ends: bool = True) -> None:
        """Line scatterers along the long edges (and optionally the ends) of a segment, plus
        four strong corners."""
        rng, hw = self.rng, width / 2
        d = np.arange(a + rng.uniform(0, step), b, step)
        ds, vs = [d, d, [a, a, b, b]], [np.full(d.size, -hw), np.full(d.size, hw), [-hw, hw, -hw, hw]]
        if ends:
            v = np.arange(-hw + rng.uniform(0, step), hw, step)
            ds += [np.full(v.size, a), np.full(v.size, b)]
            vs += [v, v]
        amps = np.full(sum(len(x) for x in ds), amp)
        amps[2 * d.size:2 * d.size + 4] = 4 * amp      # the corners
        self.point(np.concatenate(ds), np.concatenate(vs), z, amps)

    def axle(self, d: float, width: float, amp: float, dual: bool = False) -> None:
        d = [d, d, d + 0.5, d + 0.5] if dual else [d, d]
        self.point(d, [-width / 2, width / 2] * (len(d) // 2), 0.4, amp)

    def cross_lines(self, a: float, b: float, width: float, z: float, step: float, amp: float) -> None:
        """Regular cross members (flat decks) or roof ribs: rows of points across the width."""
        d, v = np.meshgrid(np.arange(a + step / 2, b, step),
                           np.linspace(-width / 2, width / 2, max(2, int(width / 0.6))))
        self.point(d, v, z, amp)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, float]:
        """segments [n, 5]: a, b, half width, height, gain; points [m, 4]: d, v, z, amp; length."""
        rng = self.rng
        segs = np.array(self.segs, float)
        a, b, hw, z = segs[:, :4].T               # scattered glints on every roof (vents, seams, cargo)
        which = np.repeat(np.arange(len(segs)), rng.poisson(0.6 * (b - a) * hw))
        t, s = rng.random((2, which.size))
        self.pts.append((a[which] + t * (b - a)[which], (2 * s - 1) * hw[which], z[which], 8.0))
        sizes = [d.size for d, *_ in self.pts]
        pts = np.empty((sum(sizes), 4))
        pts[:, 0] = np.concatenate([p[0] for p in self.pts])
        pts[:, 1] = np.concatenate([p[1] for p in self.pts])
        for k in (2, 3):                           # scalars repeated, arrays copied in place
            pts[:, k] = np.repeat([p[k] if np.isscalar(p[k]) else 0.0 for p in self.pts], sizes)
            start = 0
            for p, n in zip(self.pts, sizes):
                if not np.isscalar(p[k]):
                    pts[start:start + n, k] = p[k]
                start += n
        pts[:, 3] *= rng.standard_exponential(pts.shape[0])
        return segs, pts, float(segs[:, 1].max())


def _n(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """A clipped normal draw: per-instance dimensions."""
    return min(max(rng.normal(mean, sd), lo), hi)


def _car(p: _Parts, length: float, width: float, hood: float, cab_end: float, cab_h: float,
         rear_h: float | None) -> None:
    """A passenger-car-like body: hood, cabin and an optional lower rear (trunk)."""
    rng = p.rng
    p.seg(0, hood, width, 0.62 * cab_h, 1.5)
    p.seg(hood, cab_end, width, cab_h, 2.5)
    p.rim(hood, cab_end, width * 0.9, cab_h, 0.7, 2.0)
    if rear_h is not None:
        p.seg(cab_end, length, width, rear_h, 1.5)
    p.rim(0, length, width, 0.8, 0.8, 1.5, ends=True)
    p.axle(0.85 + rng.normal(0, 0.08), width, 25)
    p.axle(length - 1.0 + rng.normal(0, 0.1), width, 25)


def _sedan(p: _Parts) -> None:
    r = p.rng
    L, W = _n(r, 4.75, 0.3, 4.0, 5.4), _n(r, 1.82, 0.06, 1.65, 1.95)
    _car(p, L, W, 1.2 + r.normal(0, 0.1), L * r.uniform(0.68, 0.76), _n(r, 1.45, 0.05, 1.35, 1.55), 1.05)


def _suv(p: _Parts) -> None:
    r = p.rng
    L, W = _n(r, 4.85, 0.3, 4.2, 5.6), _n(r, 1.92, 0.06, 1.75, 2.05)
    _car(p, L, W, 1.1 + r.normal(0, 0.1), L - 0.1, _n(r, 1.75, 0.08, 1.6, 1.95), None)
    if r.random() < 0.4:                                # roof rack
        p.cross_lines(1.6, L - 0.3, W * 0.7, 1.8, 1.2, 1.0)


def _pickup_body(p: _Parts) -> float:
    r = p.rng
    L, W = _n(r, 5.6, 0.35, 4.9, 6.4), _n(r, 1.98, 0.06, 1.8, 2.1)
    hood = 1.35 + r.normal(0, 0.1)
    cab_end = hood + r.choice([1.7, 2.5]) + r.normal(0, 0.1)   # regular or crew cab
    p.seg(0, hood, W, 1.2, 1.5)
    p.seg(hood, cab_end, W, _n(r, 1.85, 0.06, 1.7, 2.0), 2.5)
    p.rim(hood, cab_end, W * 0.9, 1.85, 0.7, 2.0)
    p.seg(cab_end + 0.1, L, W, 1.0, 0.4)            # open bed: dark floor, bright walls
    p.rim(cab_end + 0.1, L, W, 1.0, 0.5, 3.0)
    p.axle(1.0, W, 25)
    p.axle(L - 1.3, W, 25)
    return L


def _pickup(p: _Parts) -> None:
    _pickup_body(p)


def _van(p: _Parts) -> None:
    r = p.rng
    cargo = r.random() < 0.55
    L = _n(r, 5.9, 0.4, 5.2, 7.0) if cargo else _n(r, 5.1, 0.2, 4.7, 5.5)
    W = _n(r, 2.02, 0.06, 1.9, 2.15)
    H = _n(r, 2.5, 0.2, 2.1, 2.9) if cargo else _n(r, 1.8, 0.06, 1.65, 1.95)
    hood = 0.9 + r.normal(0, 0.1)
    p.seg(0, hood, W, 1.1, 1.5)
    p.seg(hood, L, W, H, 3.0)
    p.rim(hood, L, W, H, 0.6, 2.5)
    p.axle(0.8, W, 25)
    p.axle(L - 1.2, W, 25)


def _box_truck(p: _Parts) -> None:
    r = p.rng
    cab, W = 2.0 + r.normal(0, 0.15), _n(r, 2.35, 0.08, 2.2, 2.5)
    box0, box1 = cab + r.uniform(0.1, 0.3), cab + 0.2 + _n(r, 5.0, 0.8, 3.5, 7.3)
    H = _n(r, 3.3, 0.2, 2.9, 3.7)
    p.seg(0, cab, W * 0.95, 2.6, 2.5)
    p.rim(0.5, cab, W * 0.9, 2.6, 0.7, 2.0)
    p.seg(box0, box1, W, H, 3.5)
    p.rim(box0, box1, W, H, 0.6, 3.0)
    p.axle(1.1, W, 30)
    p.axle(box1 - 1.6, W, 35, dual=r.random() < 0.5)


def _motorcycle(p: _Parts) -> None:
    r = p.rng
    L, W = _n(r, 2.15, 0.15, 1.8, 2.5), _n(r, 0.8, 0.08, 0.6, 1.0)
    p.seg(0, L, W, 1.1, 3.0)
    p.point([0.3, L - 0.3], 0, 0.35, 30)                              # wheels
    p.point(L * 0.45, [-0.25, 0.25], 0.6, 25)                         # engine block
    if r.random() < 0.7:                                                # rider
        p.point(L * 0.55, 0, 1.5, 30)


def _cab(p: _Parts, W: float, sleeper: bool = False) -> float:
    r = p.rng
    cab = (3.6 if sleeper else 2.4) + r.normal(0, 0.15)
    p.seg(0, cab, W, _n(r, 3.2 if sleeper else 2.7, 0.15, 2.4, 3.8), 3.0)
    p.rim(0.6, cab, W * 0.95, 2.8, 0.6, 2.5)
    p.axle(1.2, W, 35)
    return cab


def _flatbed(p: _Parts) -> None:
    r = p.rng
    W = _n(r, 2.45, 0.06, 2.3, 2.6)
    cab = _cab(p, W * 0.95)
    a = cab + r.uniform(0.2, 0.5)
    b = a + _n(r, 6.0, 1.0, 4.2, 8.5)
    p.seg(a, b, W, 1.25, 1.0)
    p.rim(a, b, W, 1.25, 0.5, 3.0)
    p.cross_lines(a, b, W, 1.25, 0.9, 1.5)
    if r.random() < 0.5:                          # some cargo on the deck
        c0 = a + r.uniform(0, 1.5)
        c1 = min(b, c0 + r.uniform(1.0, 4.0))
        p.seg(c0, c1, W * r.uniform(0.6, 0.95), r.uniform(1.8, 3.0), 3.0)
        p.rim(c0, c1, W * 0.8, 2.4, 0.6, 2.0)
    p.axle(b - 1.6, W, 35, dual=True)


def _bus(p: _Parts) -> None:
    r = p.rng
    L, W, H = _n(r, 12.0, 0.8, 10.0, 13.7), _n(r, 2.55, 0.04, 2.45, 2.62), _n(r, 3.1, 0.12, 2.8, 3.5)
    p.seg(0, L, W, H, 3.0)
    p.rim(0, L, W, H, 0.8, 2.0)
    for side in (-W / 2, W / 2):                   # window frames: a regular row along both sides
        d = np.arange(1.0, L - 0.8, 1.25)
        p.point(d, side, 2.0, 8)
    for _ in range(r.integers(1, 3)):              # roof AC units
        c = r.uniform(2, L - 3)
        p.seg(c, c + r.uniform(1.5, 2.5), W * 0.7, H + 0.3, 4.0)
    p.axle(2.6, W, 35)
    p.axle(L - 3.2, W, 35, dual=r.random() < 0.3)


def _pickup_trailer(p: _Parts) -> None:
    r = p.rng
    L = _pickup_body(p)
    a = L + r.uniform(1.0, 1.8)                     # tongue: a thin line to the hitch
    p.seg(L, a, 0.3, 0.5, 1.0)
    p.point(np.linspace(L, a, 4), 0, 0.5, 6)
    kind = r.choice(3, p=[0.5, 0.3, 0.2])
    b = a + _n(r, 4.8 if kind != 2 else 6.0, 1.3, 2.5, 8.5)
    W = _n(r, 2.1, 0.15, 1.6, 2.5)
    if kind == 0:        # open utility trailer: low rails, dark floor
        p.seg(a, b, W, 0.8, 0.5)
        p.rim(a, b, W, 0.8, 0.5, 3.0)
    elif kind == 1:      # enclosed cargo / camper trailer
        p.seg(a, b, W, _n(r, 2.3, 0.3, 1.8, 3.0), 3.0)
        p.rim(a, b, W, 2.3, 0.6, 2.5)
    else:                # flat car hauler, sometimes loaded
        p.seg(a, b, W, 0.6, 1.0)
        p.cross_lines(a, b, W, 0.6, 1.0, 1.2)
        p.rim(a, b, W, 0.6, 0.6, 2.0, ends=False)
    mid = (a + b) / 2 + 0.6
    p.axle(mid, W, 25)
    if b - a > 5:
        p.axle(mid + 0.9, W, 25)


def _semi(p: _Parts) -> None:
    r = p.rng
    W = _n(r, 2.55, 0.04, 2.45, 2.62)
    cab = _cab(p, W * 0.95, sleeper=r.random() < 0.6)
    p.axle(cab + 1.0, W, 35, dual=True)             # drive tandem under the fifth wheel
    a = cab + r.uniform(0.7, 1.4)                   # the gap between cab and trailer
    kind = r.choice(4, p=[0.45, 0.25, 0.18, 0.12])
    length = {0: 16.2, 1: 14.6, 2: 8.6, 3: 14.6}[int(kind)] + r.normal(0, 0.3)
    b = a + length
    if kind == 3:        # flatbed trailer
        p.seg(a, b, W, 1.5, 1.0)
        p.cross_lines(a, b, W, 1.5, 1.0, 1.5)
        p.rim(a, b, W, 1.5, 0.5, 3.0)
    else:                # dry van: tall box with regular side posts
        H = _n(r, 4.0, 0.1, 3.7, 4.2)
        p.seg(a, b, W, H, 3.5)
        p.rim(a, b, W, H, 0.6, 2.0)
        for side in (-W / 2, W / 2):
            d = np.arange(a + 0.3, b, 0.6 * 2)
            p.point(d, side, H * 0.6, 6)
    p.axle(b - 1.5, W, 35, dual=True)
    p.axle(b - 2.8, W, 35, dual=True)


_MODELS = (_sedan, _suv, _pickup, _van, _box_truck, _motorcycle, _flatbed, _bus, _pickup_trailer, _semi)


def vehicle_model(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(segments [n,5]: a, b, half width, height, gain; points [m,4]: d, v, z, amp; length)."""
    parts = _Parts(rng)
    _MODELS[label](parts)
    return parts.arrays()


# ----------------------------------------------------------------------------------------------
# The radar picture.

@dataclass(frozen=True)
class _Scene:
    h: int; w: int; gsd: float; cot: float; tan: float       # grid, pixel spacing, look angle
    x0: float; y0: float; c: float; s: float                 # vehicle centre and heading


def _frame(sc: _Scene) -> tuple[np.ndarray, np.ndarray]:
    """Vehicle-frame coordinates (u forward, v left) of every pixel, as [1, H, W] arrays."""
    xs = (np.arange(sc.w) - (sc.w - 1) / 2) * sc.gsd - sc.x0
    ys = (np.arange(sc.h) - (sc.h - 1) / 2) * sc.gsd - sc.y0
    dx, dy = xs[None, None, :], ys[None, :, None]
    return dx * sc.c + dy * sc.s, dy * sc.c - dx * sc.s


def _shifted(u: np.ndarray, v: np.ndarray, sc: _Scene, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frame seen `shift` metres further from the radar (+x), one shift per segment."""
    shift = shift[:, None, None]
    return u + shift * sc.c, v - shift * sc.s


def _inside(u: np.ndarray, v: np.ndarray, segs: np.ndarray, length: float) -> np.ndarray:
    lo, hi = (length / 2 - segs[:, 1])[:, None, None], (length / 2 - segs[:, 0])[:, None, None]
    return (u >= lo) & (u <= hi) & (np.abs(v) <= segs[:, 2, None, None])


_PSF_OFFSETS = np.arange(-2, 3)
_PSF_RES = np.linspace(0.9, 1.3, 9)              # main-lobe widths in px, one per chip
_PSF_FRAC = 32                                 # sub-pixel positions tabulated per px


def _psf_table() -> np.ndarray:
    """Sinc^2 impulse response (tapered to zero at 3 px), tabulated [res, sub-pixel shift, tap]."""
    t = _PSF_OFFSETS[None, None, :] - (np.arange(_PSF_FRAC + 1) / _PSF_FRAC)[None, :, None]
    res = _PSF_RES[:, None, None]
    return np.sinc(t / res) ** 2 * (0.5 + 0.5 * np.cos(np.pi * np.clip(t / 3.0, -1, 1)))


_PSF = _psf_table()
_PAD = 4                                        # canvas margin: kernel radius + points just outside


def _splat(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, amp: np.ndarray, res: int) -> None:
    """Add point scatterers at sub-pixel positions, each spread by the impulse response (5x5)."""
    h, w = img.shape
    keep = (rows >= -2) & (rows < h + 1) & (cols >= -2) & (cols < w + 1)
    rows, cols, amp = rows[keep], cols[keep], amp[keep]
    r0, c0 = np.floor(rows).astype(np.intp), np.floor(cols).astype(np.intp)
    table = _PSF[res]
    ky = table[((rows - r0) * _PSF_FRAC).round().astype(np.intp)] * amp[:, None]     # [n, 5]
    kx = table[((cols - c0) * _PSF_FRAC).round().astype(np.intp)]
    wp = w + 2 * _PAD                              # splat into a padded canvas: no bounds checks
    base = (r0 + _PAD) * wp + (c0 + _PAD)
    flat = base[:, None, None] + (_PSF_OFFSETS * wp)[None, :, None] + _PSF_OFFSETS[None, None, :]
    canvas = np.bincount(flat.ravel(), weights=(ky[:, :, None] * kx[:, None, :]).ravel(),
                         minlength=(h + 2 * _PAD) * wp)
    img += canvas.reshape(h + 2 * _PAD, wp)[_PAD:-_PAD, _PAD:-_PAD]


@functools.lru_cache(maxsize=64)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation as a matrix [n_out, n_in]: upsampling becomes two small matmuls."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(pos.astype(int), n_in - 2)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] = 1 - (pos - lo)
    m[np.arange(n_out), lo + 1] = pos - lo
    return m


def _upsample(coarse: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of a small texture grid to h x w."""
    return _interp_matrix(h, coarse.shape[0]) @ coarse @ _interp_matrix(w, coarse.shape[1]).T


def _ground(sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Mean ground reflectivity: Gamma texture (K-distributed clutter), a dark road, stray objects."""
    nu = rng.uniform(1.5, 8.0)
    coarse = rng.gamma(nu, 1 / nu, size=(sc.h // 5 + 2, sc.w // 5 + 2))
    ground = _upsample(coarse, sc.h, sc.w)
    if rng.random() < 0.75:                        # the vehicle sits on a road along its heading
        phi = np.arctan2(sc.s, sc.c) + rng.normal(0, 0.08)
        xs = (np.arange(sc.w) - (sc.w - 1) / 2) * sc.gsd - sc.x0
        ys = (np.arange(sc.h) - (sc.h - 1) / 2) * sc.gsd - sc.y0
        across = ys[:, None] * np.cos(phi) - xs[None, :] * np.sin(phi) - rng.uniform(-2, 2)
        half = rng.uniform(3.0, 7.0)
        road = np.clip((half - np.abs(across)) / 0.6, 0, 1)
        ground = ground * (1 - road * (1 - rng.uniform(0.12, 0.35)))
        if rng.random() < 0.3:                     # curb or guard-rail returns along the road edge
            ground += 4.0 * np.exp(-((np.abs(across) - half) / 0.3) ** 2)
    return ground


def _shadow(hmap: np.ndarray, sc: _Scene) -> np.ndarray:
    """Ground hidden from a radar on the left: some column k px nearer the radar stands higher
    than the ray there (k * drop).  reach[c] = max_k (hmap[c-k] - k*drop), built by doubling."""
    drop = sc.gsd / sc.tan                         # ray height gained per px towards the radar
    reach = np.full(hmap.shape, -np.inf)
    reach[:, 1:] = hmap[:, :-1] - drop             # covers k = 1
    span = 1
    while span * drop < hmap.max() and span < hmap.shape[1]:
        reach[:, span:] = np.maximum(reach[:, span:], reach[:, :-span] - span * drop)   # k up to 2*span
        span *= 2
    return (reach > 0) & (hmap == 0)


def _blur(x: np.ndarray, side: float) -> np.ndarray:
    """Separable 3-tap blur with weights (side, 1 - 2 side, side): the system's impulse response
    on the mean reflectivity (soft edges), or the slight correlation of oversampled speckle."""
    y = x.copy()
    y[1:-1] = (1 - 2 * side) * x[1:-1] + side * (x[:-2] + x[2:])
    z = y.copy()
    z[:, 1:-1] = (1 - 2 * side) * y[:, 1:-1] + side * (y[:, :-2] + y[:, 2:])
    return z


def _scene(rng: np.random.Generator) -> _Scene:
    """Chip size, pixel spacing, look angle, vehicle position and heading of one chip."""
    lo_side, hi_side = CHIP_SIDE_RANGE
    h, w = rng.integers(lo_side, hi_side + 1, size=2)
    inc = np.deg2rad(rng.uniform(38, 52))          # incidence angle from vertical
    theta = rng.uniform(0, 2 * np.pi)
    x0, y0 = rng.normal(0, 0.8, size=2)
    return _Scene(int(h), int(w), rng.uniform(0.30, 0.42), 1 / np.tan(inc), np.tan(inc),
                  x0, y0, np.cos(theta), np.sin(theta))


def _body(sc: _Scene, segs: np.ndarray, length: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Mean reflectivity of the vehicle body and its footprint heights. Walls and roofs are
    laid over towards the radar (left); the wall-ground dihedral facing the radar is bright."""
    u, v = _frame(sc)
    hmap = (_inside(u, v, segs, length) * segs[:, 3, None, None]).max(axis=0)
    roof = _inside(*_shifted(u, v, sc, segs[:, 3] * sc.cot), segs, length)
    wall = _inside(*_shifted(u, v, sc, segs[:, 3] * sc.cot * 0.5), segs, length) & ~roof
    gain = segs[:, 4, None, None]
    target = (roof * gain).sum(axis=0) + (wall * gain * 0.6).sum(axis=0)
    foot = hmap > 0
    near_edge = foot.copy()
    near_edge[:, 1:] &= ~foot[:, :-1]
    flash = 0.3 + 4.0 * max(abs(sc.s), abs(sc.c)) ** 40          # strongest when a side faces the radar
    target += near_edge * (rng.uniform(6, 14) * flash)
    return target, hmap


def _scatterers(sc: _Scene, pts: np.ndarray, length: float,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel rows, columns and amplitudes of the point scatterers (laid over by their height),
    plus a few stray ones in the clutter. Low points on the far side are hidden under the body."""
    d, side, z, amp = pts.T
    pu = length / 2 - d
    px = sc.x0 + pu * sc.c - side * sc.s - z * sc.cot
    py = sc.y0 + pu * sc.s + side * sc.c
    # a side's outward normal is (-s, c) * sign(v); it faces away from the radar when its x > 0
    hidden = (np.sign(side) * -sc.s > 0.2) & (z < 1.5) & (np.abs(side) > 0.3)
    amp = 3 * amp * np.where(hidden, 0.15, 1.0) * (rng.random(amp.size) < 0.85)
    stray = rng.uniform(-9, 9, size=(rng.poisson(1.5), 3))        # poles, debris
    px, py = np.append(px, stray[:, 0]), np.append(py, stray[:, 1])
    amp = np.append(amp, 22.5 + 2 * stray[:, 2])
    return py / sc.gsd + (sc.h - 1) / 2, px / sc.gsd + (sc.w - 1) / 2, amp


def render_sar(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 8-bit grayscale SAR chip (54-60 px per side) of a vehicle of class `label`."""
    sc = _scene(rng)
    segs, pts, length = vehicle_model(label, rng)
    target, hmap = _body(sc, segs, length, rng)
    patchy = rng.standard_exponential(size=(sc.h, sc.w))          # facets flash or vanish at random
    visible = ~_shadow(hmap, sc) & (hmap == 0)
    mean = _blur(_ground(sc, rng) * visible + target * patchy * rng.uniform(0.6, 1.6), 0.25) + 0.1
    speckle = rng.standard_exponential(size=(sc.h, sc.w))        # single-look speckle ...
    if rng.random() < 0.5:                                       # ... or two looks averaged
        speckle = 0.5 * (speckle + rng.standard_exponential(size=(sc.h, sc.w)))
    intensity = mean * _blur(speckle, rng.uniform(0.0, 0.15))
    _splat(intensity, *_scatterers(sc, pts, length, rng), int(rng.integers(len(_PSF_RES))))
    return _to_8bit(intensity, rng)


def _to_8bit(intensity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Log compression into 8 bits; the ground sits low, strong scatterers near the top."""
    db = 10 * np.log10(intensity + 1e-6)
    lo = -rng.uniform(7, 11)
    hi = lo + rng.uniform(32, 40)
    return np.clip((db - lo) * (255 / (hi - lo)), 0, 255).round().astype(np.uint8)


def render_eo(label: int, rng: np.random.Generator) -> np.ndarray:
    """A crude optical (RGB) chip of the same kind of vehicle: the EO files the builder must skip."""
    h, w = (int(x) for x in rng.integers(CHIP_SIDE_RANGE[0], CHIP_SIDE_RANGE[1] + 1, size=2))
    theta = rng.uniform(0, 2 * np.pi)
    sc = _Scene(h, w, 0.35, 1.0, 1.0, 0.0, 0.0, np.cos(theta), np.sin(theta))
    segs, _, length = vehicle_model(label, rng)
    u, v = _frame(sc)
    inside = _inside(u, v, segs, length)
    img = rng.normal(105, 8, size=(h, w, 1)) * np.ones(3)               # asphalt
    paint = rng.uniform(20, 235, size=3)
    for k in np.argsort(segs[:, 3]):
        img[inside[k]] = paint * (0.7 + 0.1 * segs[k, 3])
    return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The dataset on disk.

def chip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


@dataclass(frozen=True)
class Plan:
    """Which chip goes where: labels and unique ids of every train and test chip."""
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray

    @classmethod
    def make(cls, counts: tuple[int, ...], test_per_class: int, seed: int) -> "Plan":
        train = np.repeat(np.arange(len(counts)), counts)
        test = np.repeat(np.arange(len(counts)), test_per_class)
        ids = chip_rng(seed, "plan", 0).permutation(train.size + test.size) + 1
        return cls(train, test, ids[:train.size], ids[train.size:])

    def path(self, out: Path, split: str, i: int) -> Path:
        if split == "train":
            return out / TRAIN_IMAGES / str(self.train_labels[i]) / f"SAR_{self.train_ids[i]}.png"
        return out / TEST_IMAGES / f"SAR_{self.test_ids[i]}.png"

    def label(self, split: str, i: int) -> int:
        return int((self.train_labels if split == "train" else self.test_labels)[i])


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary name in the same folder, then rename: never a torn file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_WORKER: dict = {}


def _init_worker(out: Path, plan: Plan, seed: int) -> None:
    _WORKER.update(out=out, plan=plan, seed=seed)


def _render_range(task: tuple[str, int, int]) -> int:
    split, start, stop = task
    out, plan, seed = _WORKER["out"], _WORKER["plan"], _WORKER["seed"]
    for i in range(start, stop):
        pixels = render_sar(plan.label(split, i), chip_rng(seed, split, i))
        _write_atomic(plan.path(out, split, i), _png_bytes(pixels))
    return stop - start


def _tasks(plan: Plan, chunk: int) -> list[tuple[str, int, int]]:
    tasks = []
    for split, n in (("train", plan.train_labels.size), ("test", plan.test_labels.size)):
        tasks += [(split, s, min(n, s + chunk)) for s in range(0, n, chunk)]
    return tasks


def _check_out(out: Path, record: dict) -> None:
    """Refuse an OUT that holds something else; the same preset and seed may be regenerated."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{manifest}: unreadable ({e}); remove it or choose another OUT") from None
        keys = ("preset", "seed", "train_counts", "test_per_class")
        if not isinstance(old, dict) or any(old.get(k) != record[k] for k in keys):
            have = {k: old.get(k) for k in keys} if isinstance(old, dict) else old
            want = {k: record[k] for k in keys}
            raise DataError(f"{manifest}: OUT holds a different synthetic set {have}, asked for {want}; "
                            "choose another OUT or delete it")
    elif out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: not empty and has no {MANIFEST}; refusing to write a synthetic set into it")


def _write_json(path: Path, record: dict) -> None:
    _write_atomic(path, (json.dumps(record, indent=1) + "\n").encode())


def make_synthetic(out: Path | str, preset: str = "mini", seed: int = 0, *,
                   counts: tuple[int, ...] | None = None, test_per_class: int | None = None,
                   workers: int = 1, progress: bool = False, chunk: int = 256) -> dict:
    """Write a synthetic SAR set in the NTIRE raw layout under `out`; returns the synth.json record.

    `counts` / `test_per_class` override the preset's numbers (tests use tiny sets)."""
    if preset not in PRESETS:
        raise DataError(f"{out}: unknown preset {preset!r}, choose one of {sorted(PRESETS)}")
    base_counts, base_test = PRESETS[preset]
    counts = tuple(int(c) for c in (counts if counts is not None else base_counts))
    test_per_class = int(base_test if test_per_class is None else test_per_class)
    if seed < 0:
        raise DataError(f"{out}: seed must be >= 0, got {seed}")
    if len(counts) != len(CLASS_NAMES) or min(counts) < 1 or test_per_class < 0:
        raise DataError(f"{out}: need {len(CLASS_NAMES)} train counts >= 1 and test_per_class >= 0, "
                        f"got {counts} and {test_per_class}")
    out = Path(out)
    plan = Plan.make(counts, test_per_class, seed)
    record = {"generator": GENERATOR_VERSION, "preset": preset, "seed": int(seed),
              "train_counts": list(counts), "test_per_class": test_per_class,
              "num_train": int(sum(counts)), "num_test": int(plan.test_ids.size),
              "classes": list(CLASS_NAMES), "eo_files": [], "complete": False}
    _check_out(out, record)
    _make_folders(out, len(counts))
    _remove_temporaries(out)                       # left by a run that was killed mid-write
    _write_json(out / MANIFEST, record)            # claims OUT before any chip lands

    tasks = _tasks(plan, chunk)
    bar = tqdm(total=record["num_train"] + record["num_test"], unit="chip", disable=not progress,
               desc="synth")
    if workers <= 1:
        _init_worker(out, plan, seed)
        for task in tasks:
            bar.update(_render_range(task))
    else:
        with mp.Pool(workers, _init_worker, (out, plan, seed)) as pool:
            for n in pool.imap_unordered(_render_range, tasks):
                bar.update(n)
    bar.close()

    record["eo_files"] = _write_eo(out, plan, seed)
    _write_test_labels(out / TEST_LABELS, plan)
    write_contact_sheet(out, plan)
    record["complete"] = True
    _write_json(out / MANIFEST, record)
    return record


def _remove_temporaries(out: Path) -> None:
    for pattern in (f"{TRAIN_IMAGES}/*/.*.tmp", f"{TEST_IMAGES}/.*.tmp", ".*.tmp"):
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


def _make_folders(out: Path, num_classes: int) -> None:
    for label in range(num_classes):
        (out / TRAIN_IMAGES / str(label)).mkdir(parents=True, exist_ok=True)
    (out / TEST_IMAGES).mkdir(parents=True, exist_ok=True)


def _write_eo(out: Path, plan: Plan, seed: int) -> list[str]:
    """A few optical chips that share the id of a SAR chip in the same folder, as in NTIRE."""
    names = []
    for label in EO_CLASSES:
        for i in np.flatnonzero(plan.train_labels == label)[:EO_PER_CLASS]:
            path = out / TRAIN_IMAGES / str(label) / f"EO_{plan.train_ids[i]}.png"
            _write_atomic(path, _png_bytes(render_eo(label, chip_rng(seed, "eo", int(i)))))
            names.append(str(path.relative_to(out)))
    return names


def _write_test_labels(path: Path, plan: Plan) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "class_id"])
    order = np.argsort(plan.test_ids)
    writer.writerows(zip(plan.test_ids[order].tolist(), plan.test_labels[order].tolist()))
    _write_atomic(path, buf.getvalue().encode())


def write_contact_sheet(out: Path, plan: Plan, per_class: int = 12, zoom: int = 2) -> Path:
    """One row per class, labelled with its id and name, of the first chips of that class."""
    cell = CHIP_SIDE_RANGE[1] * zoom + 4
    margin = 190
    num_classes = int(plan.train_labels.max()) + 1
    sheet = Image.new("L", (margin + per_class * cell, num_classes * cell), 255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for label in range(num_classes):
        draw.text((6, label * cell + cell // 2 - 9), f"{label} {CLASS_NAMES[label]}", fill=0, font=font)
        for col, i in enumerate(np.flatnonzero(plan.train_labels == label)[:per_class]):
            with Image.open(plan.path(out, "train", int(i))) as chip:
                chip = chip.resize((chip.width * zoom, chip.height * zoom), Image.NEAREST)
                sheet.paste(chip, (margin + col * cell, label * cell + 2))
    path = out / CONTACT_SHEET
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    _write_atomic(path, buf.getvalue())
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets synth",
                                     description="Write a synthetic SAR vehicle set in the NTIRE raw layout.")
    parser.add_argument("out", type=Path, help="output folder (created; must be empty or the same set)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mini",
                        help="mini: NTIRE profile scaled down (3844 train, 10x50 test); ntire: the real counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes (output does not depend on it)")
    args = parser.parse_args(argv)
    try:
        record = make_synthetic(args.out, args.preset, args.seed, workers=args.workers, progress=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {record['num_train']} train + {record['num_test']} test chips "
          f"({args.preset}, seed {args.seed}) to {args.out}; see {args.out / CONTACT_SHEET}")
    return 0
