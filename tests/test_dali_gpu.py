"""DaliStream on a GPU: mixed decode, tensors on this process's GPU, half precision and
channels-last output, agreement with DALI's CPU mode, and the resident source fed from GPU
memory (no decode, labels gathered on the GPU, one pipeline per stream); RGB and SAR+EO chips
through both sources. Skipped without CUDA or DALI."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("nvidia.dali")
pytestmark = pytest.mark.gpu

from datasets.augment import AugmentSpec  # noqa: E402
from datasets.dali import DaliStream  # noqa: E402
from datasets.resident import ResidentStream, load_pixels  # noqa: E402
from datasets.sampling import SamplingSpec  # noqa: E402
from datasets.stream_spec import StreamSpec, open_split  # noqa: E402
from conftest import CHANNEL_KINDS as CHANNELS  # noqa: E402

STRONG = AugmentSpec(rotate="free", hflip=True, vflip=True, crop_scale=(0.6, 1.0), translate=3,
                     speckle=0.25, brightness=0.2, contrast=0.2)


@pytest.fixture(scope="module")
def shards(module_shards: Path) -> Path:
    return module_shards


def make_dali(root: Path, split: str, *, device: str = "auto", dtype=torch.float32, channels_last: bool = False,
              num_threads: int = 2, pixels: torch.Tensor | None = None, **spec) -> DaliStream:
    """A DaliStream from flat keyword arguments: the StreamSpec's fields plus DALI's own."""
    return DaliStream(root, split, StreamSpec(**spec), device=device, dtype=dtype,
                      channels_last=channels_last, num_threads=num_threads, pixels=pixels)


def stream(root: Path, **kw) -> DaliStream:
    args = dict(batch_size=16, sampling=SamplingSpec(kind="class", per_class=12), augment=None,
                device="gpu")
    args.update(kw)
    return make_dali(root, "train", **args)


def test_gpu_batches_land_on_the_local_gpu(shards, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    batches = list(stream(shards, augment=STRONG))
    assert len(batches) == 3
    for images, labels, ids in batches:
        assert images.device == torch.device("cuda", 0)
        assert labels.device == images.device and ids.device == images.device
        assert images.dtype == torch.float32 and images.shape == (len(ids), 1, 56, 56)
        assert labels.dtype == torch.int64 and ids.dtype == torch.int64
    labels = torch.cat([b[1] for b in batches]).cpu()
    assert torch.bincount(labels).tolist() == [12, 12, 12, 12]


@pytest.mark.parametrize("spec", [None, STRONG], ids=["identity", "strong"])
def test_gpu_decode_and_augmentation_match_cpu_mode(shards, spec):
    """Same parameters are drawn on both (numpy, from the batch's coordinates): only the
    arithmetic differs, so outputs agree to float rounding (identity: exactly)."""
    gpu = list(stream(shards, augment=spec, seed=4))
    cpu = list(stream(shards, augment=spec, seed=4, device="cpu"))
    for (xg, yg, ig), (xc, yc, ic) in zip(gpu, cpu):
        assert torch.equal(ig.cpu(), ic) and torch.equal(yg.cpu(), yc)
        diff = (xg.cpu() - xc).abs()
        if spec is None:
            assert diff.max().item() < 1e-5
        else:   # normalised units (std of a chip ≈ 1): interpolation rounding only
            assert diff.mean().item() < 1e-3 and diff.max().item() < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_channels_last_output(shards, dtype):
    ref = next(iter(stream(shards, augment=STRONG)))[0]
    x = next(iter(stream(shards, augment=STRONG, dtype=dtype, channels_last=True)))[0]
    assert x.is_cuda and x.dtype == dtype and x.shape == ref.shape
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x.float(), ref, atol=0.05, rtol=0.01)


def test_resume_is_exact_on_gpu(shards):
    s = stream(shards, augment=STRONG, seed=1, batch_size=8)
    full = list(s)
    s.set_epoch(0, start_batch=2)
    rest = list(s)
    assert len(rest) == len(full) - 2
    for (x, _, i), (x2, _, i2) in zip(full[2:], rest):
        assert torch.equal(i, i2) and torch.equal(x, x2)


def pixels(root: Path, device: str) -> torch.Tensor:
    data = open_split(root, "train", StreamSpec(1, SamplingSpec(kind="sequential")))
    return torch.from_numpy(load_pixels(data, 56, cache=False)).to(device)


@pytest.mark.parametrize("spec", [None, STRONG], ids=["identity", "strong"])
def test_resident_gpu_source_matches_the_png_path_and_cpu_mode(shards, spec, monkeypatch):
    """GPU memory handed to external_source: the same batches as the PNG path on the GPU (same
    canvas, same parameters) and as the resident source in DALI's CPU mode."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    res = stream(shards, augment=spec, seed=4, pixels=pixels(shards, "cuda"))
    assert res.pixels.is_cuda
    got = list(res)
    png = list(stream(shards, augment=spec, seed=4))
    cpu = list(stream(shards, augment=spec, seed=4, device="cpu", pixels=pixels(shards, "cpu")))
    assert len(got) == len(png) == len(cpu) == 3
    for (x, y, i), (xp, yp, ip), (xc, yc, ic) in zip(got, png, cpu):
        assert x.device == y.device == i.device == torch.device("cuda", 0)
        assert torch.equal(i, ip) and torch.equal(y, yp) and torch.equal(i.cpu(), ic) and torch.equal(y.cpu(), yc)
        for other in (xp.cpu(), xc):
            diff = (x.cpu() - other).abs()
            assert diff.max().item() < (1e-5 if spec is None else 0.05) and diff.mean().item() < 1e-3


def test_resident_gpu_resume_is_exact_with_one_pipeline(shards):
    s = stream(shards, augment=STRONG, seed=1, batch_size=8, pixels=pixels(shards, "cuda"))
    s.set_epoch(1)
    full = list(s)
    next(iter(s))                                   # a pass left after one batch
    s.set_epoch(1, start_batch=2)
    rest = list(s)
    assert len(rest) == len(full) - 2 and s.builds == 1
    for (x, y, i), (x2, y2, i2) in zip(full[2:], rest):
        assert torch.equal(i, i2) and torch.equal(y, y2) and torch.equal(x, x2)


# -- several channels: RGB alone, SAR+EO ------------------------------------------------------


def grey(root: Path, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| of two normalised batches, in grey levels (per-channel std)."""
    std = open_split(root, "train", StreamSpec(1, SamplingSpec(kind="sequential"))).normalizer.std
    return (a.cpu() - b.cpu()).abs() * torch.tensor(std).view(-1, 1, 1) * 255


@pytest.mark.parametrize("spec", [None, STRONG], ids=["identity", "strong"])
@pytest.mark.parametrize("kind", CHANNELS)
def test_channels_resident_gpu_source_gives_the_torch_batches(channel_sets, kind, spec, monkeypatch):
    """GPU memory [N,C,S,S] -> HWC batches: identity equals ResidentStream on the GPU; any spec
    follows its plan and agrees with DALI's CPU mode to interpolation rounding."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    root, channels = channel_sets[kind], CHANNELS[kind][1]
    kw = dict(augment=spec, seed=4, sampling=SamplingSpec(kind="class", per_class=3), batch_size=8)
    got = list(make_dali(root, "train", device="gpu", pixels=pixels(root, "cuda"), **kw))
    ref = list(ResidentStream(root, "train", StreamSpec(**kw), device="cuda"))
    cpu = list(make_dali(root, "train", device="cpu", pixels=pixels(root, "cpu"), **kw))
    assert len(got) == len(ref) == len(cpu) > 1
    for (x, y, i), (xr, yr, ir), (xc, _, ic) in zip(got, ref, cpu):
        assert x.is_cuda and x.shape == (len(i), channels, 56, 56)
        assert torch.equal(i, ir) and torch.equal(y, yr) and torch.equal(i.cpu(), ic)
        if spec is None:
            torch.testing.assert_close(x, xr, atol=1e-5, rtol=0)
        diff = (x.cpu() - xc).abs()
        assert diff.max().item() < (1e-5 if spec is None else 0.05) and diff.mean().item() < 1e-3


@pytest.mark.parametrize("spec", [None, STRONG], ids=["identity", "strong"])
@pytest.mark.parametrize("kind", CHANNELS)
def test_channels_png_gpu_source_stacks_the_members(channel_sets, kind, spec, monkeypatch):
    """Mixed decode, GPU resize of the EO partner: as the resident GPU source within the CPU
    mode's measured resize tolerance (RGB alone: no resize, to rounding)."""
    monkeypatch.setenv("LOCAL_RANK", "0")
    root = channel_sets[kind]
    kw = dict(augment=spec, seed=4, sampling=SamplingSpec(kind="class", per_class=3), batch_size=8)
    png = list(make_dali(root, "train", device="gpu", **kw))
    res = list(make_dali(root, "train", device="gpu", pixels=pixels(root, "cuda"), **kw))
    assert len(png) == len(res) > 1
    worst, means = 0.0, []
    for (x, y, i), (xr, yr, ir) in zip(png, res):
        assert x.is_cuda and torch.equal(i, ir) and torch.equal(y, yr)
        d = grey(root, x, xr)
        worst, means = max(worst, d.max().item()), means + [d.mean().item()]
    limit = (1.5, 0.005) if kind == "pair" else (0.05 if spec else 1e-3, 1e-3)
    assert worst <= limit[0] and sum(means) / len(means) <= limit[1]
