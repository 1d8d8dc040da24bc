"""One augmentation spec and its CPU (torch) implementation.

The spec is shared with the DALI pipeline (datasets/dali.py), so this docstring is the
definition. Notation: S = input size, U[a, b] uniform, U{a..b} uniform integer, all draws
independent per image (speckle: per pixel). An op whose field is at its default is skipped,
so the default spec gives exactly `to_input(img, S) / 255`.

 0. x = to_input(img, S): centre crop / pad to S×S (uint8). Padding replicates the edge
    pixels (inputs are 54–60 px, so at most a few px per side): output row r is input row
    clamp(r + floor((H − S)/2), 0, H − 1), likewise columns (an odd excess is cropped from the
    bottom/right, an odd shortfall padded at the top/left).
 1. rotate="right": k ~ U{0..3}, x = rot90(x, k) (exact, counter-clockwise).
 2. hflip: with p = ½ mirror left↔right. Then vflip: with p = ½ mirror top↔bottom (exact).
 3. One affine warp, bilinear, only if crop_scale ≠ (1, 1), rotate="free" or translate > 0.
    Composed in this order (forward, coordinates in px relative to the image centre):
      a. crop: area fraction a ~ U[crop_scale[0], crop_scale[1]]; a square window of side
         c = √a·S (aspect ratio 1: length/width ratios are the class signal), centre offset
         (ox, oy) each ~ U[−(S−c)/2, (S−c)/2] (window inside the image), zoomed by S/c to S×S.
      b. rotate="free": angle θ ~ U[0°, 360°) about the centre.
      c. translate: (tx, ty) each ~ U{−translate..translate} px.
    Inverse map used for sampling: p_in = o + (c/S)·R(−θ)·(p_out − t).
    Pixels sampled from outside the image take the fill value m = median of the image's outer
    1-px ring (computed after step 2), blended bilinearly at the edge; implemented as
    warp(x − m, fill 0) + m. So rotated corners carry no black wedges that give the angle away.
 4. x = x / 255 as float32 (in [0, 1]; steps 3–6 work in float).
 5. brightness: x = x·b, b ~ U[1−brightness, 1+brightness].
    contrast:   x = (x − μ)·k + μ, μ = mean of this image after brightness, k ~ U[1−contrast, 1+contrast].
 6. speckle: x = x·g per pixel, g ~ Gamma(shape L, scale 1/L), L = 1/speckle² (mean 1, std speckle).
 7. clamp to [0, 1] (once, at the end). Normalisation (mean/std) happens in the stream.
All randomness comes from the torch.Generator passed in.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from datasets.augment_spec import ROTATIONS, AugmentSpec  # noqa: F401  (the spec's home; re-exported)

FALLBACK_RATE = 1e-6   # speckle samples with no accepted Marsaglia–Tsang proposal (gamma_rounds)


def window(length: int, size: int) -> np.ndarray:
    """Source index of each output row (or column) of to_input: centre crop / edge-replicate pad."""
    return np.clip(np.arange(size) + (length - size) // 2, 0, length - 1)


def to_input(img: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [1,H,W] -> centre crop / edge-replicate pad to uint8 [1,S,S]."""
    h, w = img.shape[-2:]
    if h == size and w == size:
        return img
    if h >= size and w >= size:  # pure crop: a view, no copy
        top, left = (h - size) // 2, (w - size) // 2
        return img[..., top:top + size, left:left + size]
    rows, cols = torch.from_numpy(window(h, size)), torch.from_numpy(window(w, size))
    return img.index_select(-2, rows).index_select(-1, cols)


def augment(img: torch.Tensor, spec: AugmentSpec, size: int, gen: torch.Generator) -> torch.Tensor:
    """uint8 [1,H,W] -> float32 [1,S,S] in [0,1] (normalisation happens in the stream)."""
    return augment_batch(to_input(img, size)[None], spec, gen)[0]


def augment_batch(x: torch.Tensor, spec: AugmentSpec, gen: torch.Generator,
                  speckle_channels: tuple[int, int] | None = None) -> torch.Tensor:
    """uint8 [B,C,S,S] (already to_input) -> float32 [B,C,S,S] in [0,1]; steps 1–7 of the spec,
    batched with per-image parameters (one warp for the whole batch, no per-image Python).
    Geometry and brightness/contrast act on all channels alike; speckle, a radar effect, only on
    the channels [start, stop) of `speckle_channels` (default: all). Runs where x is (CPU or
    CUDA); `gen` must be a generator of the same device. No step waits for the device: the
    random draws (`draw`) only call the generator, and `apply` is one traceable graph."""
    sar = speckle_channels or (0, x.shape[1])
    return apply(x, spec, draw(spec, tuple(x.shape), gen, sar), sar)


def draw(spec: AugmentSpec, shape: tuple[int, ...], gen: torch.Generator,
         sar: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Every random number `apply` needs for a [B,C,S,S] batch, drawn from `gen` in the spec's
    order (a torch.Generator cannot enter a compiled graph, so the draws stay outside it)."""
    n, size, dev = shape[0], shape[-1], gen.device
    d: dict[str, torch.Tensor] = {}
    if spec.rotate == "right":
        d["turns"] = torch.randint(0, 4, (n,), generator=gen, device=dev)
    for key in ("hflip", "vflip"):
        if getattr(spec, key):
            d[key] = torch.rand(n, generator=gen, device=dev) < 0.5
    if spec.warps:
        d.update(_draw_warp(spec, n, size, gen))
    for key in ("brightness", "contrast"):
        if getattr(spec, key) > 0:
            d[key] = _uniform(n, getattr(spec, key), gen)
    if spec.speckle > 0 and sar[1] > sar[0]:
        d.update(gamma_draws((n, sar[1] - sar[0], size, size), 1.0 / spec.speckle ** 2, gen))
    return d


def apply(x: torch.Tensor, spec: AugmentSpec, d: dict[str, torch.Tensor],
          sar: tuple[int, int]) -> torch.Tensor:
    """Steps 1–7 with the draws of `draw`: tensor ops only, no data-dependent Python, so
    torch.compile(apply, fullgraph=True) traces it whole (tests/test_augment_graph.py checks)."""
    if "turns" in d:
        x = _rotate_right(x, d["turns"])
    for key, dim in (("hflip", -1), ("vflip", -2)):
        if key in d:
            x = torch.where(d[key][:, None, None, None], x.flip(dim), x)
    out = _warp(x, d) if spec.warps else x.float().div_(255.0)   # a new tensor: in place below
    if "brightness" in d:
        out.mul_(d["brightness"][:, None, None, None])
    if "contrast" in d:
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out.sub_(mean).mul_(d["contrast"][:, None, None, None]).add_(mean)
    if "gamma_z" in d:
        sar_part = out[:, sar[0]:sar[1]]
        sar_part.mul_(gamma_from_draws(d, 1.0 / spec.speckle ** 2).reshape(sar_part.shape))
    return out.clamp_(0.0, 1.0)


def _rotate_right(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """x rotated by turns·90° per image (square images): all three rotations, then a select,
    so no boolean indexing waits for the device."""
    k = turns[:, None, None, None]
    out = x
    for t in (1, 2, 3):
        out = torch.where(k == t, torch.rot90(x, t, (-2, -1)), out)
    return out


def _uniform(n: int, half_width: float, gen: torch.Generator) -> torch.Tensor:
    return 1.0 + (torch.rand(n, generator=gen, device=gen.device) * 2.0 - 1.0) * half_width


def _ring(x: torch.Tensor) -> torch.Tensor:
    """The outer 1-px ring of each image: [B,C,S,S] -> [B,C,4S-4]."""
    return torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)


def border_median(x: torch.Tensor) -> torch.Tensor:
    """Median of each image's outer 1-px ring, over all its channels: [B,C,S,S] -> [B] (same dtype)."""
    ring = _ring(x)
    return ring.flatten(1).median(dim=1).values


def _draw_warp(spec: AugmentSpec, n: int, size: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Step 3's parameters in normalised coordinates: window side c/S, its centre offset, angle, shift."""
    dev = gen.device
    lo, hi = spec.crop_scale
    side = torch.sqrt(lo + (hi - lo) * torch.rand(n, generator=gen, device=dev))  # c/S, in (0, 1]
    offset = (torch.rand(n, 2, generator=gen, device=dev) * 2 - 1) * (1 - side)[:, None]
    if spec.rotate == "free":
        theta = torch.rand(n, generator=gen, device=dev) * (2 * math.pi)
    else:
        theta = torch.zeros(n, device=dev)
    if spec.translate > 0:
        shift = torch.randint(-spec.translate, spec.translate + 1, (n, 2), generator=gen, device=dev).float()
        shift = shift * (2.0 / size)                                          # px -> normalised
    else:
        shift = torch.zeros(n, 2, device=dev)
    return {"side": side, "offset": offset, "theta": theta, "shift": shift}


def _warp(x: torch.Tensor, d: dict[str, torch.Tensor]) -> torch.Tensor:
    """Step 3 + 4: one bilinear affine warp per image, fill = border median; returns float [0,1]."""
    size = x.shape[-1]
    side, cos, sin = d["side"], torch.cos(d["theta"]), torch.sin(d["theta"])
    # A = (c/S)·R(−θ); affine_grid maps output -> input in normalised [-1, 1] coordinates.
    a = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1) * side[:, None, None]
    b = d["offset"] - torch.einsum("nij,nj->ni", a, d["shift"])
    matrix = torch.cat([a, b[:, :, None]], dim=2)
    xf = x.float().div_(255.0)
    fill = _ring(xf).median(dim=-1).values[:, :, None, None]   # per image and channel
    grid = _affine_grid(matrix, size)
    out = F.grid_sample(xf - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


def _affine_grid(matrix: torch.Tensor, size: int) -> torch.Tensor:
    """F.affine_grid(matrix, [B,1,S,S], align_corners=False) by broadcasting (several times faster)."""
    pos = (torch.arange(size, dtype=torch.float32, device=matrix.device) * 2 + 1) / size - 1  # pixel centres
    xs, ys = pos[None, None, :], pos[None, :, None]
    m = matrix[:, :, :, None, None]                                     # [B,2,3,1,1]
    grid = m[:, :, 0] * xs + m[:, :, 1] * ys + m[:, :, 2]               # [B,2,S,S]
    return grid.permute(0, 2, 3, 1)


def gamma_rounds(shape_l: float) -> int:
    """Proposals per sample so that fewer than FALLBACK_RATE of the samples have none accepted.
    A Marsaglia–Tsang proposal is rejected with probability below 0.05/α for every α ≥ 1
    (measured: 0.048 at α = 1, 0.0185 at 2, 0.0026 at 11.1, 0.0011 at 25): 3 rounds for the
    recipes' speckle 0.2–0.3, 5 at speckle 1 and above."""
    alpha = shape_l + 1.0 if shape_l < 1.0 else shape_l
    return max(2, math.ceil(math.log(FALLBACK_RATE) / math.log(0.05 / alpha)))


def gamma_draws(shape: tuple[int, ...], shape_l: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The normals and uniforms of gamma_rounds(L) Marsaglia–Tsang proposals per sample (plus
    one uniform each for the L < 1 boost): a fixed amount, so nothing depends on the data."""
    count, dev, rounds = math.prod(shape), gen.device, gamma_rounds(shape_l)
    d = {"gamma_z": torch.randn(rounds, count, generator=gen, device=dev),
         "gamma_u": torch.rand(rounds, count, generator=gen, device=dev)}
    if shape_l < 1.0:
        d["gamma_boost"] = torch.rand(count, generator=gen, device=dev)
    return d


def gamma_from_draws(d: dict[str, torch.Tensor], shape_l: float) -> torch.Tensor:
    """Gamma(L, 1/L) samples (mean 1, var 1/L), flat, from `gamma_draws` (Marsaglia–Tsang; torch's
    own gamma sampler takes no generator). Each sample takes its first accepted proposal; the
    fewer than one in 10⁶ with none keep their last proposal d·v (clamped at 0), so the law
    differs from Gamma(L, 1/L) by less than 10⁻⁶ in total variation. Selection is arithmetic
    (a select per round): no device sync, no data-dependent loop."""
    z, u = d["gamma_z"], d["gamma_u"]
    alpha = shape_l + 1.0 if shape_l < 1.0 else shape_l
    dd = alpha - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * dd)
    t = z.mul(c).add_(1.0)
    v = t.square().mul_(t)                                    # v = (1 + c·z)³
    # Accept iff v > 0 and log u < z²/2 + d − d·v + d·log v  (log v = 3·log t); in place: CPU cost
    rhs = z.square().mul_(0.5).add_(dd).sub_(v, alpha=dd).add_(t.clamp_min(1e-12).log_(), alpha=3.0 * dd)
    ok = torch.lt(u.log(), rhs).logical_and_(t > 0)
    out = v[-1]
    for r in range(z.shape[0] - 2, -1, -1):   # backwards: the earliest accepted round wins
        out = torch.where(ok[r], v[r], out)
    out = out.clamp_min(0.0) * (dd / shape_l)
    if "gamma_boost" in d:  # Gamma(L) = Gamma(L+1)·U^(1/L)
        out = out * d["gamma_boost"].pow(1.0 / shape_l)
    return out


def gamma_noise(shape: tuple[int, ...], shape_l: float, gen: torch.Generator) -> torch.Tensor:
    """Gamma(L, 1/L) samples of `shape` from `gen` (mean 1, var 1/L)."""
    return gamma_from_draws(gamma_draws(shape, shape_l, gen), shape_l).reshape(shape)
