"""Rendering of the synthetic SAR chips (and their crude optical twins) in numpy.

A vehicle model (`datasets.synth_vehicles`) is seen by a side-looking radar from the left of
the image: layover pulls tall parts towards the radar, a shadow falls to the right, the ground
is K-distributed clutter (Gamma texture x Gamma speckle) with roads, point scatterers are
spread by a sinc^2 impulse response, and the result is log-compressed to 8 bits. Pixel
spacing, dimensions, look angle and contrast vary per chip. `orient` turns a finished chip
so that the radar sits on another side. Every chip has its own RNG (`chip_rng`).
`render_eo_twin` paints the optical (RGB) chip of the same vehicle seen from above, and
`contact_sheet` lays chips out in labelled rows.
"""
from __future__ import annotations

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from datasets.ntire import CHIP_SIDE_RANGE
from datasets.synth_vehicles import (ARMOUR, BODY, CARGO, DARK, DECK, GLASS, HULL, MATERIALS, TYRE,
                                     vehicle_model)

# Keeps the per-chip RNG streams apart: a chip's SAR picture, its optical twin, decoys, plans.
_SPLIT_CODE = {"train": 0, "test": 1, "eo": 2, "plan": 3, "ood": 4,
               "eo_train": 5, "eo_test": 6, "eo_ood": 7}
Model = Callable[[np.random.Generator], tuple[np.ndarray, np.ndarray, float]]
# Side of the image the radar looks from -> counter-clockwise quarter turns (np.rot90) of a chip
# rendered with the radar on the left: the left edge goes to the bottom (1), right (2), top (3).
LOOKS: dict[str, int] = {"left": 0, "bottom": 1, "right": 2, "top": 3}


def chip_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, _SPLIT_CODE[split], index])


def orient(pixels: np.ndarray, look: str) -> np.ndarray:
    """A finished chip ([H, W] SAR or [H, W, 3] EO, rendered with the radar on the left) turned
    so that the radar is on side `look` of the image: for "top" the shadow falls downwards."""
    if look not in LOOKS:
        raise ValueError(f"unknown look {look!r}, choose one of {sorted(LOOKS)}")
    return np.ascontiguousarray(np.rot90(pixels, LOOKS[look]))


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
    return render_sar_of(functools.partial(vehicle_model, label), rng)


def render_sar_of(model: Model, rng: np.random.Generator) -> np.ndarray:
    """One 8-bit grayscale SAR chip of the vehicle `model(rng)` draws (`vehicle_model` of a class,
    or `ood_model` of a kind)."""
    sc = _scene(rng)
    segs, pts, length = model(rng)
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


_PAINT = np.array([[235, 235, 232], [28, 29, 32], [178, 180, 184], [105, 108, 112], [150, 28, 30],
                   [38, 58, 125], [200, 190, 160], [60, 90, 60]], float)   # common car colours
_PAINT_P = np.array([0.25, 0.2, 0.18, 0.14, 0.08, 0.08, 0.04, 0.03])


def _material_colours(rng: np.random.Generator) -> np.ndarray:
    """One RGB colour per material for one vehicle: paint, glass, tyres, cargo box, hull, ..."""
    c = np.empty((len(MATERIALS), 3))
    c[BODY] = _PAINT[rng.choice(len(_PAINT), p=_PAINT_P)] * rng.uniform(0.85, 1.1)
    c[GLASS] = rng.uniform(25, 50) + np.array([0, 5, 12])
    c[TYRE] = rng.uniform(18, 35)
    c[CARGO] = rng.uniform(175, 240) * (1 + rng.normal(0, 0.04, 3))
    c[HULL] = _PAINT[rng.choice([0, 0, 0, 4, 5])] * rng.uniform(0.9, 1.05)
    c[DARK] = rng.uniform(35, 60)
    c[DECK] = rng.choice([120.0, 95.0]) * np.array([1.15, 0.95, 0.75]) * rng.uniform(0.85, 1.15)
    c[ARMOUR] = np.array([[88, 94, 62], [165, 148, 110], [92, 96, 92]])[rng.integers(3)]
    return c


def _eo_ground(sc: _Scene, rng: np.random.Generator) -> np.ndarray:
    """Daylight ground [H, W, 3]: asphalt with texture, usually a road along the heading with
    grass or bare soil beside it, sometimes a painted lane line."""
    asphalt = rng.uniform(85, 130) * (1 + rng.normal(0, 0.03, 3))
    verge = np.array([[78, 102, 58], [132, 118, 92], [104, 110, 78]])[rng.integers(3)] * rng.uniform(0.8, 1.15)
    coarse = rng.normal(0, 1, size=(sc.h // 4 + 2, sc.w // 4 + 2))
    texture = 1 + 0.06 * _upsample(coarse, sc.h, sc.w)
    phi = np.arctan2(sc.s, sc.c) + rng.normal(0, 0.08)
    xs = (np.arange(sc.w) - (sc.w - 1) / 2) * sc.gsd - sc.x0
    ys = (np.arange(sc.h) - (sc.h - 1) / 2) * sc.gsd - sc.y0
    across = ys[:, None] * np.cos(phi) - xs[None, :] * np.sin(phi) - rng.uniform(-2, 2)
    half = rng.uniform(3.0, 7.0) if rng.random() < 0.8 else 1e3            # or a parking lot
    road = np.clip((half - np.abs(across)) / 0.5, 0, 1)[..., None]
    ground = (road * asphalt + (1 - road) * verge) * texture[..., None]
    if half < 100 and rng.random() < 0.5:                                   # lane line
        line = np.exp(-((np.abs(across) - half * rng.uniform(0.3, 0.9)) / 0.12) ** 2)[..., None]
        ground = ground * (1 - 0.8 * line) + 220 * 0.8 * line
    return ground


def render_eo_twin(model: Model, twin_rng: np.random.Generator,
                   rng: np.random.Generator) -> np.ndarray:
    """The optical (RGB) chip of the vehicle that `render_sar_of(model, twin_rng)` shows: the
    SAR chip's first draws (chip size, pixel spacing, position, heading, the vehicle model) are
    replayed from a fresh `twin_rng` of the same seed, so the two chips show the same vehicle at
    the same place. Seen from above in daylight; colours, sun shadow and noise come from `rng`."""
    sc = _scene(twin_rng)
    segs, _, length = model(twin_rng)
    u, v = _frame(sc)
    img = _eo_ground(sc, rng)
    sun = rng.uniform(0, 2 * np.pi)
    reach = 1 / np.tan(np.deg2rad(rng.uniform(35, 65)))                # shadow metres per metre
    su, sv = np.cos(sun) * reach, np.sin(sun) * reach
    shadow = np.zeros((sc.h, sc.w), bool)
    for k in range(len(segs)):
        shadow |= _inside(u - su * segs[k, 3], v - sv * segs[k, 3], segs[k:k + 1], length)[0]
    foot = _inside(u, v, segs, length)                                  # [n, H, W]
    img[shadow & ~foot.any(axis=0)] *= rng.uniform(0.4, 0.6)
    colours = _material_colours(rng)
    nose = length / 2 - u[0]                                            # metres back from the nose
    for k in np.argsort(segs[:, 3], kind="stable"):                     # higher parts drawn last
        a, b, _, height, _, material = segs[k]
        colour = colours[int(material)] * (0.8 + 0.08 * min(height, 2.5))
        img[foot[k]] = colour
        edge = foot[k] & ~_inside(u, v, segs[k:k + 1] * [1, 1, 0.85, 1, 1, 1], length)[0]
        img[edge] *= 0.8                                                # rounded, shaded edges
        if material == BODY and a > 0.3 and height >= 1.3:              # windscreen at the front
            img[foot[k] & (nose >= a) & (nose <= a + 0.55)] = colours[GLASS]
    img = np.stack([_blur(img[..., c], rng.uniform(0.1, 0.22)) for c in range(3)], axis=-1)
    img += rng.normal(0, rng.uniform(2, 6), size=img.shape)            # sensor noise
    return np.clip(img, 0, 255).round().astype(np.uint8)


def contact_sheet(rows: list[tuple[str, list[Path]]], per_row: int = 12, zoom: int = 2,
                  mode: str = "L") -> bytes:
    """PNG bytes of a sheet: one row per (text, chip paths), the text left of the chips."""
    cell = CHIP_SIDE_RANGE[1] * zoom + 4
    margin = 190
    sheet = Image.new(mode, (margin + per_row * cell, len(rows) * cell), 255 if mode == "L" else (255,) * 3)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for r, (text, paths) in enumerate(rows):
        draw.text((6, r * cell + cell // 2 - 9), text, fill=0 if mode == "L" else (0, 0, 0), font=font)
        for col, path in enumerate(paths[:per_row]):
            with Image.open(path) as chip:
                chip = chip.convert(mode).resize((chip.width * zoom, chip.height * zoom), Image.NEAREST)
                sheet.paste(chip, (margin + col * cell, r * cell + 2))
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    return buf.getvalue()
