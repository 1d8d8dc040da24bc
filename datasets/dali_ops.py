"""The augmentation graph of the DALI path: `datasets.augment`'s spec, steps 0–7, in DALI.

Every random choice that is one number per sample (rot90 turns, flips, crop window, angle,
shift, brightness, contrast, where the speckle field is cut from) is drawn here in numpy from
a generator seeded by the batch's coordinates and handed to DALI through `external_source`.
DALI's own generators are never used, so a batch depends only on (seed, epoch, rank, batch):
resume at any batch is exact, and CPU and GPU modes draw the same parameters.

Images are HWC with C channels (every modality stacked, `datasets.decode`'s order).
Geometry (steps 0–3) is at most two `warp_affine`s whose matrices are composed in numpy:
  place: decoded image -> S×S canvas, nearest neighbour, no fill value (DALI then clamps
         coordinates, i.e. replicates the edge as `to_input` does). Without a step-3 warp the
         exact rot90/flip permutations are folded into it too. A sample of several modalities
         is stacked on the S×S canvas first (its primary placed by the `canvas` matrix, its
         partners resized), so `place` is then the identity (+ rot90/flips), as for resident chips.
  warp:  canvas -> output, bilinear, rot90/flips + crop/rotation/translation in one matrix,
         filled with the median of the canvas ring per channel (computed exactly in the graph).
Brightness/contrast act on all channels (the contrast mean is over all of them, as in torch).
Speckle (step 6), on the SAR channels only, multiplies by an S×S window of one of K fixed
(S+8)² fields of Gamma(L, 1/L) draws, L = 1/speckle², made once per stream: the source passes
a random field per SAR channel (a memcpy), the graph cuts it at a random offset and mirrors it
(K·81·4 variants). Exact Gamma marginals, and cheap: generating the field in the graph was ~3x
slower on CPU; a bank kept in the graph as a constant is copied into every sample of every
batch; gathering windows in numpy cost ~50 µs an image in the source.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from nvidia.dali import fn, math as dmath, types

from datasets.augment import AugmentSpec

NOISE_FIELDS = 1024               # K fields of (S + NOISE_MARGIN)² fp16: ~8 MB at S = 56
NOISE_MARGIN = 8
# external_source columns after the encoded bytes: name -> DALI type
PARAM_TYPES = {"canvas": types.FLOAT, "place": types.FLOAT, "matrix": types.FLOAT,
               "noise": types.FLOAT16, "noise_pos": types.FLOAT, "noise_flip": types.INT32,
               "brightness": types.FLOAT, "contrast": types.FLOAT}


@dataclass
class BatchParams:
    """One batch's per-sample parameters (arrays with a leading sample axis)."""

    place: np.ndarray       # float32 [n, 2, 3]: canvas/output pixel -> decoded image point
    matrix: np.ndarray      # float32 [n, 2, 3]: output point -> canvas point (step 1–3 warp)
    noise: np.ndarray       # float16 [n, S+8, S+8, k] fields, k SAR channels (ones without speckle)
    noise_pos: np.ndarray   # float32 [n, 2]: relative (y, x) of the S×S window in its field
    noise_flip: np.ndarray  # int32 [n, 2]: mirror the window (horizontal, vertical)
    brightness: np.ndarray  # float32 [n]
    contrast: np.ndarray    # float32 [n]
    canvas: np.ndarray | None = None   # float32 [n, 2, 3]: the primary's step 0 alone (stacked modalities)

    def columns(self, names: list[str]) -> tuple[np.ndarray, ...]:
        """The named fields as dense batch arrays: external_source takes one in ~0.5 µs a
        sample, against ~4 µs a sample for a list of per-sample arrays."""
        return tuple(np.ascontiguousarray(getattr(self, name)) for name in names)


def effective(spec: AugmentSpec, sar: tuple[int, int]) -> AugmentSpec:
    """The spec the graph runs: no speckle where there is no SAR channel (`sar` = [start, stop))."""
    return spec if sar[1] > sar[0] or spec.speckle == 0 else replace(spec, speckle=0.0)


def used_params(spec: AugmentSpec, separate_canvas: bool = False) -> list[str]:
    """The parameter columns the graph of `spec` reads (DALI warns about unused ones);
    `separate_canvas`: the primary's canvas matrix too (a sample of several modalities)."""
    wanted = {"canvas": separate_canvas, "place": True, "matrix": spec.warps, "noise": spec.speckle > 0,
              "noise_pos": spec.speckle > 0, "noise_flip": spec.speckle > 0,
              "brightness": spec.brightness > 0, "contrast": spec.contrast > 0}
    return [name for name in PARAM_TYPES if wanted[name]]


def draw_params(spec: AugmentSpec, height: np.ndarray, width: np.ndarray, size: int,
                rng: np.random.Generator, bank: np.ndarray | None = None, *, sar_channels: int = 1,
                separate_canvas: bool = False) -> BatchParams:
    """Draw every per-sample random parameter of one batch (vectorised numpy); `bank` is
    `noise_bank(spec.speckle, seed, size)`, needed when spec.speckle > 0 (one field per SAR
    channel). `separate_canvas`: step 0 goes to `canvas`, `place` starts from the S×S canvas
    (the same draws as for S×S chips: the sizes draw nothing)."""
    n = len(height)
    permute = _rot90_and_flips(spec, n, size, rng)          # steps 1–2, exact
    place = _canvas(height, width, size)                    # step 0
    canvas = None
    if separate_canvas:
        canvas, place = place[:, :2].astype(np.float32), np.tile(np.eye(3), (n, 1, 1))
    if spec.warps:
        matrix = permute @ _warp(spec, n, size, rng)         # step 3 after 1–2
    else:
        place, matrix = place @ permute, np.tile(np.eye(3), (n, 1, 1))
    return BatchParams(
        place=place[:, :2].astype(np.float32),
        matrix=matrix[:, :2].astype(np.float32),
        noise=_noise_fields(bank, n, rng, sar_channels),
        noise_pos=(rng.integers(0, NOISE_MARGIN + 1, (n, 2)) / NOISE_MARGIN).astype(np.float32),
        noise_flip=rng.integers(0, 2, (n, 2), dtype=np.int32),
        brightness=_factor(spec.brightness, n, rng),
        contrast=_factor(spec.contrast, n, rng),
        canvas=canvas,
    )


def _noise_fields(bank: np.ndarray | None, n: int, rng: np.random.Generator, k: int = 1) -> np.ndarray:
    """n random fields of the bank (a gather of whole contiguous fields: a memcpy each), or
    n×k stacked along the channels for k SAR channels."""
    if bank is None:
        return np.ones((n, 1, 1, 1), np.float16)
    if k == 1:
        return bank[rng.integers(0, len(bank), n)]
    return bank[rng.integers(0, len(bank), (n, k)), ..., 0].transpose(0, 2, 3, 1)


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


def noise_bank(speckle: float, seed: int, size: int) -> np.ndarray | None:
    """float16 [K, S+8, S+8, 1] Gamma(L, 1/L) draws, L = 1/speckle²: mean 1, std `speckle`
    (None without speckle). fp16 keeps ~3 significant digits: plenty for a noise factor."""
    if speckle <= 0:
        return None
    looks, side = 1.0 / speckle ** 2, size + NOISE_MARGIN
    rng = np.random.default_rng([seed, 0x5BECC1E])
    return rng.gamma(looks, 1.0 / looks, (NOISE_FIELDS, side, side, 1)).astype(np.float16)


def ring_median(canvas, size: int, channels: int = 1):
    """Lower median of each uint8 canvas's outer 1-px ring (torch.median's choice), per
    channel, exactly: the smallest grey level v with at least `rank` ring pixels <= v, found
    in two radix-16 rounds (which 16-level bucket, then which level in it). Fewer graph ops
    than bisection and 1/8 of the comparisons of a full 256-level count: ~35% faster on CPU
    than either. One channel: a scalar per sample; C channels: a [C] vector."""
    def side(t):   # [n, C] ring pixels of one side (one channel: flat [n])
        return fn.reshape(t, shape=[-1]) if channels == 1 else t
    ring = fn.cat(side(canvas[0]), side(canvas[size - 1]), side(canvas[1:size - 1, 0]),
                  side(canvas[1:size - 1, size - 1]), axis=0)
    lead = [1, -1] if channels == 1 else [1, -1, channels]      # [1, ring(, C)]
    ring = fn.reshape(fn.cast(ring, dtype=types.INT32), shape=lead)
    rank = (4 * size - 4 - 1) // 2 + 1
    steps = types.Constant(np.arange(16, dtype=np.int32).reshape([16] + [1] * (len(lead) - 1)))

    def levels_below(levels):   # how many of the 16 levels have < rank ring pixels <= them
        at_most = fn.reductions.sum(fn.cast(ring <= levels, dtype=types.INT32), axes=1)
        return fn.reductions.sum(fn.cast(at_most < rank, dtype=types.INT32), axes=0)
    bucket = levels_below(steps * 16 + 15) * 16
    return fn.cast(bucket + levels_below(bucket + steps), dtype=types.FLOAT)


def augment_graph(image, params: dict, spec: AugmentSpec, size: int, device: str, *,
                  channels: int = 1, sar: tuple[int, int] = (0, 1)):
    """uint8 HWC image nodes of `channels` channels -> HWC nodes holding the spec's x·255
    before normalisation (uint8 for the identity spec, float32 otherwise); speckle only on the
    channels [sar[0], sar[1]) (`spec` is `effective(spec, sar)`). `params` maps `BatchParams`
    field names to external_source nodes (CPU)."""
    canvas = fn.warp_affine(image, matrix=params["place"], size=[size, size],
                            interp_type=types.INTERP_NN)                    # step 0 (+ 1–2)
    if not (spec.warps or spec.brightness or spec.contrast or spec.speckle):
        return canvas
    x, fill, fill_mean = canvas, np.float32(0.0), np.float32(0.0)
    if spec.warps:                                                           # step 3 (+ 1–2)
        fill = ring_median(canvas, size, channels)                           # [C] (C = 1: scalar)
        fill_mean = fill if channels == 1 else fn.reductions.mean(fill)
        x = fn.warp_affine(canvas - fill, matrix=params["matrix"], size=[size, size],
                           fill_value=0.0, interp_type=types.INTERP_LINEAR)
    # Steps 3's "+ fill" and 5 in one multiply-add with per-sample scalars (every DALI
    # arithmetic op is a pass over the batch): with v = x + fill, brightness b, contrast c
    # (mean over every channel, so mean(v) = mean(x) + mean(fill)),
    #   c·(b·v − mean(b·v)) + mean(b·v) = (b·c)·x + b·c·fill + (1 − c)·b·(mean(x) + mean(fill)).
    b = params["brightness"] if spec.brightness else np.float32(1.0)
    if spec.contrast:
        c = params["contrast"]
        scale = b * c
        x = x * scale + (scale * fill + (1.0 - c) * b * (fn.reductions.mean(x) + fill_mean))
    elif spec.brightness:
        x = x * b + b * fill
    elif spec.warps:
        x = x + fill
    if spec.speckle > 0:                                                     # step 6
        floats = spec.warps or spec.brightness or spec.contrast            # else x is the uint8 canvas
        x = _speckle(x, params, size, device, channels, sar, floats)
    return dmath.clamp(x, np.float32(0.0), np.float32(255.0))               # step 7


def _speckle(x, params: dict, size: int, device: str, channels: int, sar: tuple[int, int], floats: bool):
    """x times the noise window on the channels [sar[0], sar[1]); the others pass through
    (as float: the channels are joined again)."""
    noise = params["noise"].gpu() if device == "gpu" else params["noise"]
    pos, flip = params["noise_pos"], params["noise_flip"]
    window = fn.crop(noise, crop=[size, size], crop_pos_y=pos[0], crop_pos_x=pos[1],
                     dtype=types.FLOAT)                     # (flip takes no fp16 on CPU)
    window = fn.flip(window, horizontal=flip[0], vertical=flip[1])
    start, stop = sar
    if (start, stop) == (0, channels):
        return x * window
    if not floats:
        x = fn.cast(x, dtype=types.FLOAT)
    pieces = [x[:, :, :start]] if start else []
    pieces.append(x[:, :, start:stop] * window)
    if stop < channels:
        pieces.append(x[:, :, stop:])
    return fn.cat(*pieces, axis=2)
