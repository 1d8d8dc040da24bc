"""Resident data: decoded once, the same batches as the shard reader, a cache that is checked."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets import resident
from datasets.augment import AugmentSpec
from datasets.resident import ResidentStream, cache_paths, decode_all, load_pixels
from datasets.sampling import SamplingSpec
from datasets.stream import ShardStream, make_loader
from datasets.stream_spec import StreamSpec, open_split
from trainer.errors import ConfigError
from trainer.streams import choose_loader

STRONG = AugmentSpec(rotate="free", hflip=True, crop_scale=(0.7, 1.0), translate=2, speckle=0.2,
                     brightness=0.1, contrast=0.1)


def spec(**kw) -> StreamSpec:
    base = dict(batch_size=5, sampling=SamplingSpec(), augment=None, input_size=24, seed=3)
    return StreamSpec(**{**base, **kw})


@pytest.mark.parametrize("augment", [None, STRONG])
@pytest.mark.parametrize("sampling", [SamplingSpec(), SamplingSpec(kind="class", per_class=7)])
def test_same_batches_as_the_shard_reader_on_every_rank(tiny_shards, augment, sampling):
    for rank in range(2):
        s = spec(augment=augment, sampling=sampling, rank=rank, world=2, total_epochs=3)
        for epoch in (0, 2):
            a, b = ShardStream(tiny_shards, "train", s), ResidentStream(tiny_shards, "train", s)
            a.set_epoch(epoch), b.set_epoch(epoch)
            got_a, got_b = list(make_loader(a, 0)), list(b)
            assert len(got_a) == len(got_b) == len(a) == len(b)
            for (xa, ya, ia), (xb, yb, ib) in zip(got_a, got_b):
                assert torch.equal(ia, ib) and torch.equal(ya, yb)
                torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)


def test_resume_mid_epoch_gives_the_remaining_batches(tiny_shards):
    s = spec(augment=STRONG, total_epochs=2)
    full = ResidentStream(tiny_shards, "train", s)
    full.set_epoch(1)
    whole = list(full)
    full.set_epoch(1, start_batch=3)
    rest = list(full)
    assert len(rest) == len(whole) - 3
    for (x, _, i), (xr, _, ir) in zip(whole[3:], rest):
        assert torch.equal(i, ir) and torch.equal(x, xr)


def test_cache_is_written_then_reused(tiny_shards, monkeypatch):
    data = open_split(tiny_shards, "train", spec())
    first = load_pixels(data, 24)
    npy, meta = cache_paths(data, 24)
    assert npy.is_file() and json.loads(meta.read_text())["key"]["size"] == 24
    monkeypatch.setattr(resident, "decode_all", lambda *a, **k: pytest.fail("decoded again"))
    assert np.array_equal(load_pixels(data, 24), first)


def test_corrupt_cache_is_rebuilt_not_trusted(tiny_shards, capsys):
    data = open_split(tiny_shards, "train", spec())
    good = load_pixels(data, 24)
    npy, _ = cache_paths(data, 24)
    raw = bytearray(npy.read_bytes())
    raw[-1] ^= 0xFF  # one pixel flipped
    npy.write_bytes(bytes(raw))
    assert np.array_equal(load_pixels(data, 24), good)
    assert "do not match their record" in capsys.readouterr().err
    npy.write_bytes(b"not numpy")
    assert np.array_equal(load_pixels(data, 24), good)


def test_stale_cache_of_other_shards_is_rebuilt(tiny_shards, monkeypatch):
    data = open_split(tiny_shards, "train", spec())
    load_pixels(data, 24)
    _, meta = cache_paths(data, 24)
    record = json.loads(meta.read_text())
    record["key"]["shards"][0] = "0" * 64   # as if the shards had been rebuilt with other chips
    meta.write_text(json.dumps(record))
    calls = []
    real = resident.decode_all
    monkeypatch.setattr(resident, "decode_all", lambda *a, **k: calls.append(1) or real(*a, **k))
    load_pixels(data, 24)
    assert calls == [1]


def test_read_only_shards_folder_still_works(tiny_shards, capsys, monkeypatch):
    def refuse(path, **kw):  # what a read-only folder does to a write (also when tests run as root)
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(resident, "atomic_path", refuse)
    data = open_split(tiny_shards, "val", spec())
    assert load_pixels(data, 24).shape == (len(data.split), 1, 24, 24)
    assert "cannot cache" in capsys.readouterr().err
    assert not cache_paths(data, 24)[0].exists()


def test_parallel_decode_equals_serial(tiny_shards, monkeypatch):
    data = open_split(tiny_shards, "train", spec())
    serial = decode_all(data, 24, workers=1)
    monkeypatch.setattr(resident, "PARALLEL_ABOVE", 0)
    assert np.array_equal(decode_all(data, 24, workers=2), serial)


def test_auto_picks_resident_when_it_fits(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr("trainer.streams.free_memory", lambda device: 10_000)
    assert choose_loader("auto", 4_000, cpu) == "resident"
    assert choose_loader("auto", 6_000, cpu) == "torch"
    assert choose_loader("torch", 10, cpu) == "torch" and choose_loader("resident", 10**12, cpu) == "resident"


def test_dali_asked_for_but_missing_is_a_config_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_dali(name, *a, **k):
        if name.startswith("datasets.dali"):
            raise ImportError("no DALI here")
        return real(name, *a, **k)
    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(ConfigError, match="nvidia-dali does not import"):
        choose_loader("dali", 1, torch.device("cpu"))


def test_dali_is_chosen_whatever_the_size():
    """The channel count is part of the decoded size; DALI takes any (tests/test_dali_channels.py)."""
    pytest.importorskip("nvidia.dali")
    for nbytes in (1, 3 * 10**6, 10**15):
        assert choose_loader("dali", nbytes, torch.device("cpu")) == "dali"


def test_equal_batches_are_the_same_on_both_readers_and_of_one_size(tiny_shards):
    plain = list(ResidentStream(tiny_shards, "train", spec(batch_size=6)))
    s = spec(augment=STRONG, batch_size=6, equal_batches=True)
    a, b = ShardStream(tiny_shards, "train", s), ResidentStream(tiny_shards, "train", s)
    got_a, got_b = list(make_loader(a, 0)), list(b)
    assert len({len(y) for _, y, _ in plain}) == 2 and len({len(y) for _, y, _ in got_b}) == 1
    assert len(got_b) == len(plain)
    for (xa, ya, ia), (xb, yb, ib) in zip(got_a, got_b):
        assert torch.equal(ia, ib) and torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)


@pytest.mark.parametrize("compiled", [False, True])
def test_speed_compile_gives_training_batches_of_one_size(tiny_shards, tmp_path, compiled):
    from trainer.spec.config import validate
    from trainer.preflight import prepare

    cfg = validate({"data": {"shards": str(tiny_shards), "batch_size": 6, "loader": "resident"},
                    "model": {"name": "resnet_cifar", "depth": 8, "width": 4},
                    "stages": [{"name": "a", "epochs": 1}], "speed": {"compile": compiled},
                    "run": {"dir": str(tmp_path / "run")}})
    setup = prepare(cfg, trackers=False)
    sizes = {len(y) for _, y, _ in setup.streams.train(setup.recipe.stages[0], seed=0)}
    assert setup.streams.equal_batches is compiled and (len(sizes) == 1) is compiled
