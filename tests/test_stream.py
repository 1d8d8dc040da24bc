"""ShardStream: exactly-once across ranks × workers, order, determinism, resume, errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_raw
from datasets.augment import AugmentSpec, to_input
from datasets.sampling import SamplingSpec
from datasets.stream import ShardStream, make_loader
from datasets.stream_spec import StreamSpec
from shards.errors import DataError
from shards.index import ClassIndex

STRONG = AugmentSpec(rotate="free", hflip=True, crop_scale=(0.7, 1.0), translate=2, speckle=0.2,
                     brightness=0.1, contrast=0.1)


def stream(root: Path, split: str = "train", **kw) -> ShardStream:
    kw.setdefault("batch_size", 4)
    kw.setdefault("sampling", SamplingSpec())
    kw.setdefault("augment", None)
    return ShardStream(root, split, StreamSpec(**kw))


def collect(s: ShardStream, workers: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    return list(make_loader(s, workers))


@pytest.fixture(scope="module")
def odd_shards(tmp_path_factory) -> Path:
    """One split of 37 samples (4 classes, uneven)."""
    from shards.build import build_shards

    base = tmp_path_factory.mktemp("odd")
    raw = write_raw(base / "raw", counts=(20, 9, 5, 3), seed=1)
    build_shards(raw, base / "shards", split="train", shard_size=6, workers=1, quiet=True)
    return base / "shards"


@pytest.mark.parametrize("batch_size", [4, 5])
def test_instance_epoch_is_exactly_once_over_2_ranks_x_2_workers(odd_shards, batch_size):
    n = len(ClassIndex.load(odd_shards).split("train"))
    assert n == 37
    seen, steps = [], []
    for rank in (0, 1):
        s = stream(odd_shards, batch_size=batch_size, rank=rank, world=2, seed=3)
        s.set_epoch(2)
        batches = collect(s, 2)
        steps.append(len(batches))
        assert len(batches) == len(s)
        seen += [i for _, _, ids in batches for i in ids.tolist()]
        assert all(len(x) <= batch_size for x, _, _ in batches)
    assert steps[0] == steps[1]
    assert sorted(seen) == list(range(n))


def test_images_and_labels_match_the_raw_files(tiny_shards, tiny_raw):
    s = stream(tiny_shards, "val", sampling=SamplingSpec(kind="sequential"))
    index = ClassIndex.load(tiny_shards)
    train, val = index.split("train"), index.split("val")
    by_key = {p.stem: p for p in tiny_raw.glob("*/SAR_*.png")}
    count = 0
    for x, y, ids in collect(s, 0):
        assert x.dtype == torch.float32 and x.shape[1:] == (1, 56, 56)
        pixels = ((x * train.pixel_std + train.pixel_mean) * 255).round()  # train stats, not val
        for img, label, i in zip(pixels, y.tolist(), ids.tolist()):
            path = by_key[val.keys[i]]
            assert int(path.parent.name) == label == val.labels[i]
            raw = torch.from_numpy(np.array(Image.open(path)))[None]
            assert torch.equal(img.to(torch.uint8), to_input(raw, 56))
            count += 1
    assert count == len(val)


def test_order_and_pixels_do_not_depend_on_worker_count(tiny_shards):
    def run(workers: int):
        s = stream(tiny_shards, augment=STRONG, sampling=SamplingSpec(kind="class", epoch_size=30), seed=7)
        s.set_epoch(1)
        return collect(s, workers)

    a, b = run(0), run(2)
    assert len(a) == len(b) > 2
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)


def test_set_epoch_reaches_workers_and_changes_the_epoch(tiny_shards):
    s = stream(tiny_shards, seed=1)
    first = torch.cat([ids for _, _, ids in collect(s, 2)])
    s.set_epoch(1)
    second = torch.cat([ids for _, _, ids in collect(s, 2)])
    assert not torch.equal(first, second)
    assert sorted(first.tolist()) == sorted(second.tolist())
    s2 = stream(tiny_shards, seed=1)
    s2.set_epoch(1)
    assert torch.equal(second, torch.cat([ids for _, _, ids in collect(s2, 0)]))


def test_resume_with_start_batch_gives_exactly_the_remaining_batches(tiny_shards):
    s = stream(tiny_shards, augment=STRONG, seed=5, rank=1, world=2)
    s.set_epoch(3)
    full = collect(s, 0)
    s.set_epoch(3, start_batch=2)
    rest = collect(s, 2)
    assert len(rest) == len(full) - 2
    for (xa, ya, ia), (xb, yb, ib) in zip(full[2:], rest):
        assert torch.equal(ia, ib) and torch.equal(ya, yb) and torch.equal(xa, xb)


def test_ranks_draw_different_batches_and_augmentations(tiny_shards):
    a = collect(stream(tiny_shards, augment=STRONG, rank=0, world=2), 0)
    b = collect(stream(tiny_shards, augment=STRONG, rank=1, world=2), 0)
    assert not set(torch.cat([i for *_, i in a]).tolist()) & set(torch.cat([i for *_, i in b]).tolist())


def test_per_class_and_filter_through_the_stream(tiny_shards):
    s = stream(tiny_shards, sampling=SamplingSpec(kind="class", per_class=9, classes=[1, 2, 3]),
               augment=STRONG, batch_size=8)
    labels = torch.cat([y for _, y, _ in collect(s, 0)])
    assert torch.bincount(labels, minlength=4).tolist() == [0, 9, 9, 9]
    assert s.class_counts.tolist() == ClassIndex.load(tiny_shards).split("train").class_counts().tolist()
    assert s.classes == ["0", "1", "2", "3"]


def test_errors_name_the_file(tiny_shards):
    with pytest.raises(DataError, match=r"index\.json: no split 'test'"):
        stream(tiny_shards, "test")
    with pytest.raises(DataError, match=r"index\.json: split 'train': .*class 7"):
        stream(tiny_shards, sampling=SamplingSpec(classes=[1, 7]))
    with pytest.raises(DataError, match="unknown kind 'balanced'"):
        stream(tiny_shards, sampling=SamplingSpec(kind="balanced"))
    with pytest.raises(DataError, match="index.json"):
        stream(tiny_shards.parent / "nowhere")


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_shard_bytes_surface_as_data_error(tiny_shards, workers):
    split = ClassIndex.load(tiny_shards).split("train")
    i = 5
    path = split.shard_path(int(split.shard[i]))
    data = bytearray(path.read_bytes())
    data[int(split.offset[i]) + int(split.size[i]) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    s = stream(tiny_shards, sampling=SamplingSpec(kind="sequential"))
    with pytest.raises(DataError, match=rf"{path.name}: sample {split.keys[i]}"):
        collect(s, workers)


def test_a_leaked_loader_does_not_hang_interpreter_exit(tiny_shards):
    """Workers ignore SIGTERM (preemption is the trainer's business), so multiprocessing's
    exit-time terminate+join alone would wait forever for a worker whose iterator is still
    referenced (e.g. by an exception's traceback). The process must exit promptly anyway."""
    import subprocess
    import sys

    script = (
        "from datasets.sampling import SamplingSpec\n"
        "from datasets.stream import ShardStream, make_loader\nfrom datasets.stream_spec import StreamSpec\n"
        f"s = ShardStream({str(tiny_shards)!r}, 'train', StreamSpec(batch_size=2, sampling=SamplingSpec(), augment=None, input_size=16))\n"
        "it = iter(make_loader(s, 2))\n"
        "next(it)\n"
        "LEAK = it  # never shut down\n"
        "print('ok', flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
