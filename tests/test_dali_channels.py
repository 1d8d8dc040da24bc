"""DaliStream (CPU mode) on RGB-only and paired SAR+EO shards: C channels through both sources.
The resident source gives the torch streams' batches (identity spec) and plan (any spec); the
PNG source stacks the decoded members like `datasets.decode` (partners resized by DALI, to
within a grey level or so of torch's resize); warp fill, brightness/contrast and speckle act per
channel as `datasets.augment` defines. (tests/test_dali.py covers one gray channel.)"""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("nvidia.dali")

from datasets.augment import AugmentSpec, _ring  # noqa: E402
from datasets.dali import DaliStream  # noqa: E402
from datasets.dali_ops import draw_params, used_params  # noqa: E402
from datasets.resident import ResidentStream, load_pixels  # noqa: E402
from datasets.sampling import SamplingSpec  # noqa: E402
from datasets.stream import ShardStream, make_loader  # noqa: E402
from datasets.stream_spec import StreamSpec, open_split  # noqa: E402
from conftest import CHANNEL_KINDS as KINDS  # noqa: E402
from shards.errors import DataError  # noqa: E402
from shards.index import seal

S = 56
STRONG = AugmentSpec(rotate="free", hflip=True, vflip=True, crop_scale=(0.6, 1.0), translate=3,
                     speckle=0.25, brightness=0.2, contrast=0.2)
PLAN = SamplingSpec(kind="class", per_class=3)
# PNG source against the resident one, in grey levels: DALI's antialiased linear resize of the
# EO partner against torch's (measured: S=56 max 1.0, mean 0.001; S=24 max 4.0, mean 0.033).
RESIZE_TOLERANCE = {56: (1.5, 0.005), 24: (5.0, 0.05)}


def spec(augment=None, size: int = S, **kw) -> StreamSpec:
    return StreamSpec(**{"batch_size": 8, "sampling": PLAN, "augment": augment, "input_size": size, "seed": 3, **kw})


def pixels(root: Path, size: int = S) -> torch.Tensor:
    data = open_split(root, "train", StreamSpec(1, SamplingSpec(kind="sequential")))
    return torch.from_numpy(load_pixels(data, size, cache=False))


def dali(root: Path, stream_spec: StreamSpec, resident: bool = True) -> list:
    px = pixels(root, stream_spec.input_size) if resident else None
    return list(DaliStream(root, "train", stream_spec, device="cpu", pixels=px))


def unit(root: Path, x: torch.Tensor) -> torch.Tensor:
    """Normalised stream output -> the spec's [0, 1] values, per channel."""
    norm = open_split(root, "train", spec()).normalizer
    return x * torch.tensor(norm.std).view(-1, 1, 1) + torch.tensor(norm.mean).view(-1, 1, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_resident_source_gives_the_torch_streams_batches(channel_sets, kind):
    """Identity: the pixels of ResidentStream and ShardStream within 1e-5; strong: their plan."""
    root, channels = channel_sets[kind], KINDS[kind][1]
    got = dali(root, spec())
    for ref in (list(ResidentStream(root, "train", spec())), list(make_loader(ShardStream(root, "train", spec()), 0))):
        assert len(got) == len(ref) > 1
        for (x, y, i), (xr, yr, ir) in zip(got, ref):
            assert x.shape == (len(i), channels, S, S) and x.dtype == torch.float32
            assert torch.equal(i, ir) and torch.equal(y, yr)
            torch.testing.assert_close(x, xr, atol=1e-5, rtol=0)
    strong, ref = dali(root, spec(STRONG)), list(ResidentStream(root, "train", spec(STRONG)))
    assert len(strong) == len(ref)
    for (x, y, i), (xr, yr, ir) in zip(strong, ref):
        assert torch.equal(i, ir) and torch.equal(y, yr) and x.shape == xr.shape
        v = unit(root, x)
        assert v.min() >= -1e-5 and v.max() <= 1 + 1e-5


@pytest.mark.parametrize("size", sorted(RESIZE_TOLERANCE))
@pytest.mark.parametrize("augment", [None, STRONG], ids=["identity", "strong"])
@pytest.mark.parametrize("kind", KINDS)
def test_png_source_stacks_the_members_like_the_decoder(channel_sets, kind, augment, size):
    """RGB alone: as the resident source (no resize). SAR+EO: the SAR canvas as the resident
    source, the resized EO within the measured tolerance (same augmentation parameters)."""
    root = channel_sets[kind]
    png, res = dali(root, spec(augment, size), resident=False), dali(root, spec(augment, size))
    assert len(png) == len(res) > 1
    worst, total = 0.0, []
    for (x, y, i), (xr, yr, ir) in zip(png, res):
        assert torch.equal(i, ir) and torch.equal(y, yr)
        grey = (unit(root, x) - unit(root, xr)).abs() * 255
        if kind == "rgb" or augment is None:   # strong: the contrast mean spans every channel
            assert grey[:, :1].max() < 1e-3
        worst, total = max(worst, grey.max().item()), total + [grey.mean().item()]
    max_grey, mean_grey = RESIZE_TOLERANCE[size] if kind == "pair" else (1e-3, 1e-4)
    assert worst <= max_grey and np.mean(total) <= mean_grey


def reference(canvas: torch.Tensor, matrix: np.ndarray, b: float, c: float) -> torch.Tensor:
    """datasets.augment's steps 3–5 with given parameters: warp of (x − ring median of each
    channel) + that median, brightness, contrast around the mean over every channel, clamp."""
    xf = canvas.float()[None] / 255
    fill = _ring(xf).median(dim=-1).values[:, :, None, None]
    centres = torch.arange(S, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    m = torch.from_numpy(matrix.astype(np.float64))
    px, py = m[0, 0] * xx + m[0, 1] * yy + m[0, 2], m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    grid = torch.stack([px / S * 2 - 1, py / S * 2 - 1], -1)[None].float()
    v = (F.grid_sample(xf - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill) * b
    return ((v - v.mean()) * c + v.mean()).clamp(0, 1)[0]


@pytest.mark.parametrize("kind", KINDS)
def test_warp_fill_and_photometry_per_channel_match_the_definition(channel_sets, kind):
    root = channel_sets[kind]
    aug = AugmentSpec(rotate="free", hflip=True, crop_scale=(0.5, 0.8), translate=4, brightness=0.3, contrast=0.3)
    px = pixels(root)
    images, _, ids = dali(root, spec(aug, sampling=SamplingSpec(kind="sequential")))[0]
    rng = np.random.default_rng([3, 0, 0, 0, 0xDA11])          # the stream's draw for batch 0
    p = draw_params(aug, np.full(len(ids), S), np.full(len(ids), S), S, rng)
    for out, i, m, b, c in zip(unit(root, images), ids, p.matrix, p.brightness, p.contrast):
        torch.testing.assert_close(out, reference(px[i], m, float(b), float(c)), atol=2e-3, rtol=0)


def test_speckle_only_on_the_sar_channel(channel_sets):
    """SAR+EO: the EO channels pass untouched, the SAR one gets Gamma noise of the given std;
    RGB alone has no radar channel: no speckle and no noise columns at all."""
    noisy, plain = (dali(channel_sets["pair"], spec(aug, batch_size=24)) for aug in (AugmentSpec(speckle=0.3), None))
    ratios = []
    for (x, _, i), (xp, _, ip) in zip(noisy, plain):
        assert torch.equal(i, ip)
        torch.testing.assert_close(x[:, 1:], xp[:, 1:], atol=1e-5, rtol=0)
        got, ref = unit(channel_sets["pair"], x)[:, 0], unit(channel_sets["pair"], xp)[:, 0]
        keep = (ref > 20 / 255) & (ref < 80 / 255)
        ratios.append((got[keep] / ref[keep]).double())
    g = torch.cat(ratios)
    assert g.numel() > 5000 and g.mean().item() == pytest.approx(1.0, abs=0.02)
    assert g.std().item() == pytest.approx(0.3, abs=0.02)
    rgb = DaliStream(channel_sets["rgb"], "train", spec(AugmentSpec(speckle=0.3)), device="cpu")
    assert rgb.augment.speckle == 0 and not any(n.startswith("noise") for n in used_params(rgb.augment))
    for (x, _, _), (xp, _, _) in zip(list(rgb), dali(channel_sets["rgb"], spec())):
        torch.testing.assert_close(x, xp, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_rot90_and_flips_move_every_channel_alike(channel_sets, kind):
    root = channel_sets[kind]
    aug = AugmentSpec(rotate="right", hflip=True, vflip=True)
    turned = dali(root, spec(aug, batch_size=24, sampling=SamplingSpec(kind="class", per_class=12)), resident=False)
    plain = dali(root, spec(batch_size=24, sampling=SamplingSpec(kind="class", per_class=12)))
    seen = set()
    for (x, _, _), (xp, _, _) in zip(turned, plain):
        for out, base in zip(x, xp):
            variants = {(k, f): torch.rot90(base.flip(-1) if f else base, k, (-2, -1))
                        for k in range(4) for f in (0, 1)}
            tol = 1e-5 if kind == "rgb" else 0.05   # pair: the PNG source's resized EO
            match = [key for key, v in variants.items() if (out - v).abs().max() < tol]
            assert match, "not one rot90/flip of every channel"
            seen.add(match[0])
    assert len(seen) >= 6


def test_resume_and_errors_with_several_channels(channel_sets, tmp_path):
    root = channel_sets["pair"]
    s = DaliStream(root, "train", spec(STRONG, seed=2), device="cpu", pixels=pixels(root))
    full = list(s)
    s.set_epoch(0, start_batch=1)
    rest = list(s)
    assert len(rest) == len(full) - 1 and s.builds == 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(full[1:], rest))
    with pytest.raises(DataError, match=r"resident pixels must be uint8 \(\d+, 4, 56, 56\)"):
        DaliStream(root, "train", spec(), device="cpu", pixels=torch.zeros(len(s._split), 1, S, S, dtype=torch.uint8))
    copy = shutil.copytree(root, tmp_path / "pair")            # an EO member that does not decode
    index = json.loads((copy / "index.json").read_text())
    samples = index["splits"]["train"]["samples"]
    shard = copy / index["splits"]["train"]["shards"][samples["shard"][0]]["path"]
    offset, size = samples["eo_offset"][0], samples["eo_size"][0]
    with open(shard, "r+b") as f:
        f.seek(offset + 60)
        f.write(bytes(range(256)) * ((size - 80) // 256) + bytes((size - 80) % 256))
        f.seek(offset)
        samples["eo_crc32"][0] = zlib.crc32(f.read(size))
    (copy / "index.json").write_text(seal(index))
    with pytest.raises(DataError, match=f"sample {samples['key'][0]} eo member does not decode"):
        list(DaliStream(copy, "train", spec(sampling=SamplingSpec(kind="sequential")), device="cpu"))


def test_the_trainer_feeds_dali_several_channels_decoded_once(channel_sets):
    from trainer import streams

    st = streams.Streams(str(channel_sets["pair"]), "dali", S, 8, 8, 0, 2)
    x, _, _ = next(iter(st.eval("train")))
    assert x.shape[1] == 4 and st.pixels[("train", S)].shape[1:] == (4, S, S)
