"""DaliStream in DALI's CPU mode: sampling, exactness against the torch path, augmentation
ranges and statistics, determinism, resume (one pipeline per stream), bad input, and the
resident source (the split decoded once) against the PNG source."""
from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

pytest.importorskip("nvidia.dali")
from nvidia.dali import Pipeline, fn, types  # noqa: E402

from datasets.augment import AugmentSpec, augment_batch, border_median, to_input  # noqa: E402
from datasets.dali import DaliStream  # noqa: E402
from datasets.dali_ops import draw_params, ring_median  # noqa: E402
from datasets.sampling import SamplingSpec, epoch_plan, rank_batches  # noqa: E402
from datasets.resident import load_pixels  # noqa: E402
from datasets.stream_spec import StreamSpec, open_split  # noqa: E402
from shards.access import SampleReader  # noqa: E402
from shards.errors import DataError  # noqa: E402
from shards.index import ClassIndex, seal  # noqa: E402

S = 56
STRONG = AugmentSpec(rotate="free", hflip=True, vflip=True, crop_scale=(0.6, 1.0), translate=3,
                     speckle=0.25, brightness=0.2, contrast=0.2)
BALANCED = SamplingSpec(kind="class", per_class=100)


@pytest.fixture(scope="module")
def shards(module_shards: Path) -> Path:
    return module_shards


DALI_KW = ("device", "dtype", "channels_last", "num_threads", "pixels")


def stream(root: Path, split: str = "train", **kw) -> DaliStream:
    """A CPU-mode DaliStream from flat keyword arguments: the StreamSpec's fields plus DALI's own."""
    kw = {"batch_size": 16, "sampling": BALANCED, "augment": None, "device": "cpu", **kw}
    own = {k: kw.pop(k) for k in DALI_KW if k in kw}
    return DaliStream(root, split, StreamSpec(**kw), **own)


def resident(root: Path, **kw) -> DaliStream:
    """The same stream fed from the split decoded once (the resident source)."""
    data = open_split(root, "train", StreamSpec(1, SamplingSpec(kind="sequential")))
    return stream(root, pixels=torch.from_numpy(load_pixels(data, S, cache=False)), **kw)


collect = list   # every batch of the stream's current pass


def same(a: tuple, b: tuple) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


def originals(root: Path, ids: torch.Tensor) -> list[torch.Tensor]:
    """uint8 [1,H,W] of each id, decoded by torchvision from the bytes SampleReader returns."""
    from datasets.decode import decode_png

    reader = SampleReader(ClassIndex.load(root).split("train"))
    return [decode_png(torch.frombuffer(bytearray(reader.read(int(i))), dtype=torch.uint8)) for i in ids]


def unnormalise(s: DaliStream, x: torch.Tensor) -> torch.Tensor:
    """Stream output -> the spec's [0, 1] values."""
    return x.float() * s.data.normalizer.std + s.data.normalizer.mean


# -- sampling ---------------------------------------------------------------------------------
def test_balanced_epoch_has_exactly_k_per_class_and_follows_the_plan(shards):
    s = stream(shards, batch_size=16, sampling=SamplingSpec(kind="class", per_class=9))
    batches = collect(s)
    assert len(batches) == len(s) == 3                      # 36 samples in 3 batches of 12
    labels = torch.cat([b[1] for b in batches])
    assert np.bincount(labels.numpy()).tolist() == [9, 9, 9, 9]
    split = ClassIndex.load(shards).split("train")
    plan = epoch_plan(split.labels, s.spec.sampling, epoch=0, total_epochs=1, seed=0)
    assert torch.cat([b[2] for b in batches]).tolist() == plan.tolist()
    for images, labels, ids in batches:
        assert images.shape == (len(ids), 1, S, S) and images.dtype == torch.float32
        assert labels.dtype == torch.int64 and ids.dtype == torch.int64
        assert labels.tolist() == split.labels[ids.numpy()].tolist()


def test_two_ranks_split_the_epoch_with_equal_step_counts_and_variable_batches(shards):
    spec = SamplingSpec(kind="instance")
    ranks = [stream(shards, batch_size=7, sampling=spec, rank=r, world=2) for r in range(2)]
    got = [collect(s) for s in ranks]
    assert len(got[0]) == len(got[1]) == len(ranks[0])
    split = ClassIndex.load(shards).split("train")
    plan = epoch_plan(split.labels, spec, epoch=0, total_epochs=1, seed=0)
    for r, batches in enumerate(got):
        assert [len(b[2]) for b in batches] == [len(b) for b in rank_batches(plan, 7, r, 2)]
    ids = torch.cat([b[2] for batches in got for b in batches])
    assert sorted(ids.tolist()) == list(range(len(split)))  # exactly once over both ranks


# -- exactness against the torch path ---------------------------------------------------------
def test_identity_spec_gives_to_input_of_the_raw_image_with_its_label(shards):
    """The pixels delivered with label c are to_input of the raw file <c>/<key>.png, normalised."""
    raw = shards.parent / "raw"
    s = stream(shards, batch_size=8, sampling=SamplingSpec(kind="class", per_class=4))
    split = ClassIndex.load(shards).split("train")
    for images, labels, ids in s:
        for out, label, i in zip(images, labels, ids):
            pixels = np.asarray(Image.open(raw / str(int(label)) / f"{split.keys[int(i)]}.png"))
            expected = (to_input(torch.from_numpy(pixels)[None], S).float() / 255 - s.data.normalizer.mean) / s.data.normalizer.std
            torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_rot90_and_flips_are_exact_permutations(shards):
    s = stream(shards, augment=AugmentSpec(rotate="right", hflip=True, vflip=True),
               sampling=SamplingSpec(kind="class", per_class=20), batch_size=40)
    seen = set()
    for images, _, ids in s:
        for out, img in zip(unnormalise(s, images), originals(shards, ids)):
            canvas = to_input(img, S)[0].float() / 255
            variants = {(k, f): torch.rot90(canvas.flip(-1) if f else canvas, k)
                        for k in range(4) for f in (0, 1)}
            match = [key for key, v in variants.items() if torch.allclose(out[0], v, atol=1e-5)]
            assert match, "output is not a rot90/flip of the canvas"
            seen.add(match[0])
    assert len(seen) == 8                                    # all 8 symmetries occur


def torch_warp(canvas: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """Reference for step 3: grid_sample of (canvas − ring median) by the inverse map, + median."""
    xf = canvas.float()[None] / 255
    fill = border_median(xf)[:, None, None, None]
    centres = torch.arange(S, dtype=torch.float64) + 0.5
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    m = torch.from_numpy(matrix.astype(np.float64))
    px = m[0, 0] * xx + m[0, 1] * yy + m[0, 2]
    py = m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    grid = torch.stack([px / S * 2 - 1, py / S * 2 - 1], -1)[None].float()
    out = F.grid_sample(xf - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (out + fill).clamp(0, 1)[0]


def test_warp_equals_torch_grid_sample_with_the_same_parameters(shards):
    spec = AugmentSpec(rotate="free", hflip=True, crop_scale=(0.5, 1.0), translate=4)
    s = stream(shards, augment=spec, sampling=SamplingSpec(kind="sequential"), seed=3)
    images, _, ids = next(iter(s))
    split = ClassIndex.load(shards).split("train")
    rng = np.random.default_rng([3, 0, 0, 0, 0xDA11])          # the stream's draw for batch 0
    params = draw_params(spec, split.height[ids.numpy()], split.width[ids.numpy()], S, rng)
    for out, img, m in zip(unnormalise(s, images), originals(shards, ids), params.matrix):
        expected = torch_warp(to_input(img, S), m)
        torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


# -- augmentation ranges and statistics -------------------------------------------------------
def test_drawn_parameters_stay_in_their_ranges():
    n, rng = 4000, np.random.default_rng(0)
    height, width = np.full(n, 58), np.full(n, 54)
    centre = np.array([S / 2, S / 2])
    # crop + free rotation: |det| = area fraction, uniform angle, window inside the canvas
    p = draw_params(AugmentSpec(rotate="free", crop_scale=(0.4, 0.9)), height, width, S, rng)
    a = p.matrix[:, :, :2].astype(np.float64)
    area = np.abs(np.linalg.det(a))
    assert area.min() >= 0.4 - 1e-5 and area.max() <= 0.9 + 1e-5
    assert area.mean() == pytest.approx(0.65, abs=0.01)
    angle = np.degrees(np.arctan2(a[:, 0, 1], a[:, 0, 0])) % 360
    assert np.histogram(angle, bins=8, range=(0, 360))[0].min() > n / 8 * 0.8
    offset = p.matrix[:, :, 2] + a @ centre - centre        # where the output centre lands
    margin = (1 - np.sqrt(area)) * S / 2
    assert np.all(np.abs(offset) <= margin[:, None] + 1e-3)
    assert np.all(np.abs(offset).max(0) > 0.8 * margin.max())
    # translation alone: integer shifts, every value in −3..3
    p = draw_params(AugmentSpec(translate=3), height, width, S, rng)
    assert np.allclose(p.matrix[:, :, :2], np.eye(2))
    assert sorted(set(np.round(-p.matrix[:, :, 2]).astype(int).ravel())) == list(range(-3, 4))
    assert np.allclose(p.matrix[:, :, 2], np.round(p.matrix[:, :, 2]))
    # photometric factors and the canvas offset of to_input (floor of half the excess)
    p = draw_params(AugmentSpec(brightness=0.3, contrast=0.1), height, width, S, rng)
    assert p.brightness.min() >= 0.7 and p.brightness.max() <= 1.3
    assert p.contrast.min() >= 0.9 and p.contrast.max() <= 1.1
    assert p.place[0, :, 2].tolist() == [(54 - S) // 2, (58 - S) // 2]


def test_speckle_is_gamma_with_mean_one_and_the_requested_std(shards):
    s = stream(shards, augment=AugmentSpec(speckle=0.3), batch_size=50)
    ratios = []
    for images, _, ids in s:
        for out, img in zip(unnormalise(s, images), originals(shards, ids)):
            ref = to_input(img, S).float() / 255
            keep = (ref > 20 / 255) & (ref < 80 / 255)       # far from 0 and from the clamp at 1
            ratios.append((out[keep] / ref[keep]).double())
    g = torch.cat(ratios)
    assert g.mean().item() == pytest.approx(1.0, abs=0.01)
    assert g.std().item() == pytest.approx(0.3, abs=0.01)
    skew = (((g - g.mean()) / g.std()) ** 3).mean().item()
    assert skew == pytest.approx(2 * 0.3, abs=0.1)           # Gamma skewness 2/√L = 2·speckle


def test_brightness_and_contrast_factors_are_in_range(shards):
    for spec, lo, hi in ((AugmentSpec(brightness=0.3), 0.7, 1.3), (AugmentSpec(contrast=0.3), 0.7, 1.3)):
        s = stream(shards, augment=spec, batch_size=40, sampling=SamplingSpec(kind="class", per_class=10))
        factors = []
        for images, _, ids in s:
            for out, img in zip(unnormalise(s, images), originals(shards, ids)):
                ref = (to_input(img, S).float() / 255).double()
                if spec.brightness:
                    base, got = ref, out.double()
                else:
                    base, got = ref - ref.mean(), out.double() - ref.mean()
                if (got >= 1 - 1e-6).any() or (got <= -ref.mean() + 1e-6).any():
                    continue                                  # clamped: the factor is not a ratio
                k = (got * base).sum() / (base * base).sum()  # least-squares factor
                torch.testing.assert_close(got, k * base, atol=1e-4, rtol=0)
                factors.append(k.item())
        assert len(factors) > 20 and lo - 1e-4 <= min(factors) and max(factors) <= hi + 1e-4
        assert max(factors) - min(factors) > (hi - lo) / 2   # really random


def pixel_stats(x: torch.Tensor) -> dict[str, float]:
    """Per-image mean/std and pooled percentiles of [N,1,S,S] values in [0, 1]."""
    flat = x.flatten(1).double()
    q = torch.quantile(flat.flatten()[::7], torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95], dtype=torch.double))
    stats = {"mean": flat.mean(1).mean().item(), "std": flat.std(1).mean().item(),
             "std_of_means": flat.mean(1).std().item()}
    stats.update({f"p{int(p * 100)}": v.item() for p, v in zip((0.05, 0.25, 0.5, 0.75, 0.95), q)})
    return stats


def test_dali_and_torch_paths_give_the_same_pixel_statistics(shards):
    s = stream(shards, augment=STRONG, batch_size=100)        # 400 balanced draws
    dali, ids = [], []
    for images, _, i in s:
        dali.append(unnormalise(s, images))
        ids.append(i)
    ids = torch.cat(ids)
    canvases = torch.stack([to_input(img, S) for img in originals(shards, ids)])
    ref = augment_batch(canvases, STRONG, torch.Generator().manual_seed(0))
    a, b = pixel_stats(torch.cat(dali)), pixel_stats(ref)
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=0.015), (key, a, b)


# -- determinism and resume -------------------------------------------------------------------
def test_same_seed_same_stream_other_seed_or_epoch_differs(shards):
    first = collect(stream(shards, augment=STRONG, seed=5))
    again = collect(stream(shards, augment=STRONG, seed=5))
    other = collect(stream(shards, augment=STRONG, seed=6))
    assert all(same(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0][0], other[0][0])
    s = stream(shards, augment=STRONG, seed=5)
    s.set_epoch(1)
    assert not torch.equal(next(iter(s))[2], first[0][2])


@pytest.mark.parametrize("source", ["png", "resident"])
def test_resume_mid_epoch_continues_the_same_stream(shards, source):
    """...and one pipeline serves every pass: whole, left after a batch, resumed, repeated."""
    make, kw = (resident if source == "resident" else stream), dict(augment=STRONG, seed=2, batch_size=24)
    s = make(shards, **kw)
    first = collect(s)
    s.set_epoch(1)
    full = collect(s)
    assert len(full) == len(s) > 3
    next(iter(s)), next(iter(s))                        # passes abandoned after one batch
    it = iter(s)                                        # 2 batches, save, resume: the rest is identical
    next(it), next(it)
    assert (state := s.state_dict()) == {"epoch": 1, "batch": 2}
    resumed = make(shards, **kw)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full)
    for rest in (collect(resumed), collect(resumed)):   # twice: a finished pass resets cleanly
        assert len(rest) == len(full) - 2 and all(same(a, b) for a, b in zip(full[2:], rest))
    # set_epoch(e, start_batch=k) is the same thing, and iterating again repeats from there.
    resumed.set_epoch(1, start_batch=len(full) - 1)
    assert torch.equal(collect(resumed)[0][0], full[-1][0])
    assert torch.equal(collect(resumed)[0][0], full[-1][0])
    resumed.set_epoch(1, start_batch=len(full))
    assert collect(resumed) == []
    s.set_epoch(0)                                      # after a pass left open mid-epoch
    again = collect(s)
    assert len(again) == len(first) and all(same(a, b) for a, b in zip(first, again))
    assert s.builds == resumed.builds == 1


def test_half_precision_and_channels_last_on_cpu(shards):
    ref = next(iter(stream(shards, augment=STRONG)))[0]
    for dtype in (torch.float16, torch.bfloat16):
        x = next(iter(stream(shards, augment=STRONG, dtype=dtype, channels_last=True)))[0]
        assert x.dtype == dtype and x.shape == ref.shape
        assert x.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x.float(), ref, atol=0.05, rtol=0.01)


# -- bad input --------------------------------------------------------------------------------
def corrupt_sample(root: Path, key: str) -> None:
    """Overwrite the middle of one PNG inside its shard and fix its crc32 in the index, so the
    bytes pass SampleReader's check but do not decode."""
    index_path = root / "index.json"
    index = json.loads(index_path.read_text())
    split = index["splits"]["train"]
    samples = split["samples"]
    i = samples["key"].index(key)
    shard = root / split["shards"][samples["shard"][i]]["path"]
    offset, size = samples["offset"][i], samples["size"][i]
    with open(shard, "r+b") as f:
        f.seek(offset)
        data = bytearray(f.read(size))
        data[60:size - 20] = bytes(range(256)) * ((size - 80) // 256) + bytes((size - 80) % 256)
        f.seek(offset)
        f.write(data)
    samples["crc32"][i] = zlib.crc32(bytes(data))
    index_path.write_text(seal(index))  # a consistent edit: checksum renewed


def test_undecodable_sample_names_shard_and_key(shards, tmp_path):
    root = shutil.copytree(shards, tmp_path / "shards")
    split = ClassIndex.load(root).split("train")
    victim = int(np.flatnonzero(split.labels == 3)[0])        # the 3-image tail class
    corrupt_sample(root, split.keys[victim])
    s = stream(root, sampling=SamplingSpec(kind="class", per_class=5), batch_size=4)
    with pytest.raises(DataError) as err:
        collect(s)
    message = str(err.value)
    assert str(split.shard_path(int(split.shard[victim]))) in message
    assert f"sample {split.keys[victim]} " in message and "decode" in message


def test_crc_mismatch_is_a_data_error_naming_the_shard(shards, tmp_path):
    root = shutil.copytree(shards, tmp_path / "shards")
    index = json.loads((root / "index.json").read_text())
    index["splits"]["train"]["samples"]["crc32"][0] ^= 1
    (root / "index.json").write_text(seal(index))
    s = stream(root, sampling=SamplingSpec(kind="sequential"))
    with pytest.raises(DataError, match="crc32"):
        collect(s)


def test_requested_class_without_samples_is_refused_before_training(shards):
    with pytest.raises(DataError, match="class 7"):
        stream(shards, sampling=SamplingSpec(kind="class", classes=[1, 7]))


def test_bad_arguments_are_data_errors(shards):
    bad = [({"device": "tpu"}, "device"), ({"dtype": torch.int8}, "dtype"), ({"rank": 2, "world": 2}, "rank"),
           ({"num_threads": 0}, "num_threads"), ({"pixels": torch.zeros(3, 1, S, S, dtype=torch.uint8)}, "resident")]
    if not torch.cuda.is_available():
        bad.append(({"device": "gpu"}, "CUDA"))
    for kw, match in bad:
        with pytest.raises(DataError, match=match):
            stream(shards, **kw)
    with pytest.raises(DataError, match="start_batch"):
        stream(shards).set_epoch(0, start_batch=99)
    with pytest.raises(DataError, match="split"):
        stream(shards, "nope")


def test_ring_median_matches_torch_on_edge_cases():
    rng = np.random.default_rng(0)
    canvases = [rng.integers(0, 256, (S, S), dtype=np.uint8) for _ in range(4)]
    canvases += [np.zeros((S, S), np.uint8), np.full((S, S), 255, np.uint8),
                 np.tile(np.array([0, 255], np.uint8), (S, S // 2)),          # ties at both ends
                 rng.integers(15, 18, (S, S), dtype=np.uint8)]                # around a bucket edge
    pipe = Pipeline(batch_size=len(canvases), num_threads=1, device_id=None)
    with pipe:
        x = fn.external_source(source=lambda: [c[:, :, None] for c in canvases], batch=True,
                               dtype=types.UINT8)
        pipe.set_outputs(ring_median(x, S))
    pipe.build()
    got = [float(np.array(t)) for t in pipe.run()[0]]
    expected = border_median(torch.from_numpy(np.stack(canvases))[:, None]).tolist()
    assert got == expected


# -- resident source: pixels decoded once, no PNG decode ------------------------------------
@pytest.mark.parametrize("augment", [None, STRONG], ids=["identity", "strong"])
def test_resident_source_gives_the_png_path_batches(shards, augment):
    kw = dict(augment=augment, seed=7, batch_size=24, rank=1, world=2)
    png, res = collect(stream(shards, **kw)), collect(resident(shards, **kw))
    assert len(png) == len(res) > 1
    for (x, y, i), (xr, yr, ir) in zip(png, res):
        assert torch.equal(i, ir) and torch.equal(y, yr)   # pixels: the same ops on the same canvas
        torch.testing.assert_close(xr, x, atol=1e-5, rtol=0)


def test_the_trainer_feeds_dali_each_split_decoded_once_when_it_fits(shards, monkeypatch):
    from trainer import streams

    st = streams.Streams(str(shards), "dali", S, 16, 16, 0, 2)
    a, b = st.eval("train"), st.open("train", StreamSpec(16, BALANCED, STRONG, S))   # eval, then a stage
    assert a.pixels is not None and a.pixels is b.pixels is st.pixels[("train", S)]
    monkeypatch.setattr(streams, "free_memory", lambda device: 0)   # does not fit: the PNG path
    assert st.eval("val").pixels is None
