"""The augmentation graph of the DALI path: `datasets.augment`'s spec, steps 0–7, in DALI.

Every random choice that is one number per sample (rot90 turns, flips, crop window, angle,
shift, brightness, contrast, where the speckle field is cut from) is drawn here in numpy from
a generator seeded by the batch's coordinates and handed to DALI through `external_source`.
DALI's own generators are never used, so a batch depends only on (seed, epoch, rank, batch):
resume at any batch is exact, and CPU and GPU modes draw the same parameters.

Geometry (steps 0–3) is at most two `warp_affine`s whose matrices are composed in numpy:
  place: decoded image -> S×S canvas, nearest neighbour, no fill value (DALI then clamps
         coordinates, i.e. replicates the edge as `to_input` does). Without a step-3 warp the
         exact rot90/flip permutations are folded into it too.
  warp:  canvas -> output, bilinear, rot90/flips + crop/rotation/translation in one matrix,
         filled with the median of the canvas ring (computed exactly in the graph).
Speckle (step 6) multiplies by an S×S window cut (and mirrored) at a random place from a fixed
bank of Gamma(L, 1/L) draws, L = 1/speckle², made once per stream: exact Gamma marginals, and
cheap (a gather in numpy, 2 bytes a pixel through external_source, then one multiply) where
generating the field in the graph was ~3x slower on CPU. Why not keep the bank in the graph: a
DALI constant is copied into every sample of every batch (~1 MB each), slower still.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, math as dmath, types

from datasets.augment import AugmentSpec

NOISE_BANK_SIDE = 1024          # 1024² draws; with 4 mirrorings ~3.5·10⁶ distinct 56² windows
# external_source columns after the encoded bytes: name -> DALI type
PARAM_TYPES = {"place": types.FLOAT, "matrix": types.FLOAT, "noise": types.FLOAT16,
               "brightness": types.FLOAT, "contrast": types.FLOAT}


@dataclass
class BatchParams:
    """One batch's per-sample parameters (arrays with a leading sample axis)."""

    place: np.ndarray       # float32 [n, 2, 3]: canvas/output pixel -> decoded image point
    matrix: np.ndarray      # float32 [n, 2, 3]: output point -> canvas point (step 1–3 warp)
    noise: np.ndarray       # float16 [n, S, S, 1]: speckle factors (ones without speckle)
    brightness: np.ndarray  # float32 [n]
    contrast: np.ndarray    # float32 [n]

    def columns(self, names: list[str]) -> tuple[list[np.ndarray], ...]:
        """Per-sample lists of the named fields (what a batch-mode external_source returns)."""
        return tuple(list(getattr(self, name)) for name in names)


def used_params(spec: AugmentSpec) -> list[str]:
    """The parameter columns the graph of `spec` reads (DALI warns about unused ones)."""
    wanted = {"place": True, "matrix": spec.warps, "noise": spec.speckle > 0,
              "brightness": spec.brightness > 0, "contrast": spec.contrast > 0}
    return [name for name in PARAM_TYPES if wanted[name]]


def draw_params(spec: AugmentSpec, height: np.ndarray, width: np.ndarray, size: int,
                rng: np.random.Generator, bank: np.ndarray | None = None) -> BatchParams:
    """Draw every per-sample random parameter of one batch (vectorised numpy); `bank` is
    `noise_bank(spec.speckle, seed)`, needed when spec.speckle > 0."""
    n = len(height)
    permute = _rot90_and_flips(spec, n, size, rng)          # steps 1–2, exact
    place = _canvas(height, width, size)                    # step 0
    if spec.warps:
        matrix = permute @ _warp(spec, n, size, rng)         # step 3 after 1–2
    else:
        place, matrix = place @ permute, np.tile(np.eye(3), (n, 1, 1))
    return BatchParams(
        place=place[:, :2].astype(np.float32),
        matrix=matrix[:, :2].astype(np.float32),
        noise=_noise_windows(bank, n, size, rng),
        brightness=_factor(spec.brightness, n, rng),
        contrast=_factor(spec.contrast, n, rng),
    )


def _noise_windows(bank: np.ndarray | None, n: int, size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """[n, S, S, 1] windows of the bank at random places, each maybe mirrored on either axis."""
    if bank is None:
        return np.ones((n, 1, 1, 1), np.float16)
    side, ar = bank.shape[0], np.arange(size)
    rows = rng.integers(0, side - size + 1, n)[:, None] + np.where(rng.random((n, 1)) < 0.5, ar, ar[::-1])
    cols = rng.integers(0, side - size + 1, n)[:, None] + np.where(rng.random((n, 1)) < 0.5, ar, ar[::-1])
    return bank[rows[:, :, None], cols[:, None, :]]


def _factor(amount: float, n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(1.0 - amount, 1.0 + amount, n).astype(np.float32)


# Inverse maps, [n, 3, 3], acting on continuous (x, y) with pixel i covering [i, i + 1).
def _canvas(height: np.ndarray, width: np.ndarray, size: int) -> np.ndarray:
    """Step 0: canvas point -> image point; offset (H − S) // 2, negative where it pads."""
    n = len(height)
    top = (np.asarray(height, np.int64) - size) // 2
    left = (np.asarray(width, np.int64) - size) // 2
    return _affine(np.ones(n), np.zeros(n), np.zeros(n), np.ones(n), left, top)


def _rot90_and_flips(spec: AugmentSpec, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Steps 1–2: rot90 by k turns (counter-clockwise), then hflip, then vflip."""
    s, zero, one = float(size), np.zeros(n), np.ones(n)
    k = rng.integers(0, 4, n) if spec.rotate == "right" else np.zeros(n, np.int64)
    cos = np.array([1, 0, -1, 0])[k]        # exact integers, so the permutation is exact
    sin = np.array([0, 1, 0, -1])[k]
    # rot90 once: out[i, j] = x[j, S-1-i], i.e. (x, y) -> (S - y, x); k times about the centre.
    rotate = _affine(cos, -sin, sin, cos, (s - cos * s + sin * s) / 2, (s - sin * s - cos * s) / 2)
    fx = np.where(rng.random(n) < 0.5, -1.0, 1.0) if spec.hflip else one
    fy = np.where(rng.random(n) < 0.5, -1.0, 1.0) if spec.vflip else one
    flips = _affine(fx, zero, zero, fy, (1 - fx) * s / 2, (1 - fy) * s / 2)
    return rotate @ flips


def _warp(spec: AugmentSpec, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Step 3: p_in = C + o + (c/S)·A(θ)·(p_out − C − t), A = [[cos, sin], [−sin, cos]]."""
    s = float(size)
    lo, hi = spec.crop_scale
    side = np.sqrt(rng.uniform(lo, hi, n))                       # c/S
    offset = rng.uniform(-1.0, 1.0, (n, 2)) * ((1 - side) * s / 2)[:, None]
    theta = rng.uniform(0.0, 2 * np.pi, n) if spec.rotate == "free" else np.zeros(n)
    shift = (rng.integers(-spec.translate, spec.translate + 1, (n, 2)) if spec.translate
             else np.zeros((n, 2)))
    cos, sin = np.cos(theta) * side, np.sin(theta) * side
    centre = np.full(n, s / 2)
    after = _affine(cos, sin, -sin, cos, centre + offset[:, 0], centre + offset[:, 1])
    before = _affine(np.ones(n), np.zeros(n), np.zeros(n), np.ones(n),
                     -centre - shift[:, 0], -centre - shift[:, 1])
    return after @ before


def _affine(a, b, c, d, tx, ty) -> np.ndarray:
    """[n, 3, 3] matrices [[a, b, tx], [c, d, ty], [0, 0, 1]]."""
    m = np.zeros((len(a), 3, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a, b, tx
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = c, d, ty
    m[:, 2, 2] = 1.0
    return m


def noise_bank(speckle: float, seed: int) -> np.ndarray | None:
    """float16 [side, side, 1] of Gamma(L, 1/L) draws, L = 1/speckle²: mean 1, std `speckle`
    (None without speckle). fp16 keeps ~3 significant digits: plenty for a noise factor."""
    if speckle <= 0:
        return None
    looks = 1.0 / speckle ** 2
    rng = np.random.default_rng([seed, 0x5BECC1E])
    return rng.gamma(looks, 1.0 / looks, (NOISE_BANK_SIDE, NOISE_BANK_SIDE, 1)).astype(np.float16)


def ring_median(canvas, size: int):
    """Lower median of each uint8 canvas's outer 1-px ring (torch.median's choice), exactly:
    the number of grey levels v whose count of ring pixels <= v is below the median's rank."""
    def flat(t):
        return fn.reshape(t, shape=[-1])
    ring = fn.cat(flat(canvas[0]), flat(canvas[size - 1]), flat(canvas[1:size - 1, 0]),
                  flat(canvas[1:size - 1, size - 1]), axis=0)
    levels = types.Constant(np.arange(256, dtype=np.uint8).reshape(256, 1))
    at_most = fn.reductions.sum(fn.cast(fn.reshape(ring, shape=[1, -1]) <= levels,
                                        dtype=types.INT32), axes=1)
    rank = (4 * size - 4 - 1) // 2 + 1
    return fn.cast(fn.reductions.sum(fn.cast(at_most < rank, dtype=types.INT32)), dtype=types.FLOAT)


def augment_graph(image, params: dict, spec: AugmentSpec, size: int, device: str):
    """uint8 HWC image nodes -> float32 HWC nodes in [0, 255] (the spec's x·255 before step 7's
    normalisation). `params` maps `BatchParams` field names to external_source nodes (CPU)."""
    canvas = fn.warp_affine(image, matrix=params["place"], size=[size, size],
                            interp_type=types.INTERP_NN)                    # step 0 (+ 1–2)
    if spec.warps:                                                           # step 3 (+ 1–2)
        fill = ring_median(canvas, size)
        x = fn.warp_affine(fn.cast(canvas, dtype=types.FLOAT) - fill, matrix=params["matrix"],
                           size=[size, size], fill_value=0.0, interp_type=types.INTERP_LINEAR)
        x = x + fill
    else:
        x = fn.cast(canvas, dtype=types.FLOAT)
    if spec.brightness > 0:                                                  # step 5
        x = x * params["brightness"]
    if spec.contrast > 0:
        mean = fn.reductions.mean(x)
        x = (x - mean) * params["contrast"] + mean
    if spec.speckle > 0:                                                     # step 6
        noise = params["noise"]
        x = x * (noise.gpu() if device == "gpu" else noise)
    if spec.warps or spec.brightness > 0 or spec.contrast > 0 or spec.speckle > 0:
        x = dmath.clamp(x, np.float32(0.0), np.float32(255.0))              # step 7
    return x
