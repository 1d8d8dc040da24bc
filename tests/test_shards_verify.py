"""shards verify / stats, and damage after the build caught by verify and at read time."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from shards.__main__ import main
from shards.access import SampleReader
from shards.errors import DataError
from shards.index import ClassIndex, seal
from shards.verify import verify


def test_verify_passes_on_a_fresh_build(tiny_shards, capsys):
    report = verify(tiny_shards)
    assert (report.splits, report.shards, report.samples, report.dali_indexes) == (2, 12, 61, 12)
    assert main(["verify", str(tiny_shards)]) == 0
    assert "OK, 61 samples in 12 shards" in capsys.readouterr().out


def first_sample(out):
    split = ClassIndex.load(out).split("train")
    return split, out / split.shards[0].path


def test_flipped_byte_is_caught_by_verify_and_reader(tiny_shards, capsys):
    split, shard = first_sample(tiny_shards)
    reader = SampleReader(split)
    reader.read(1)  # opened before the damage: the crc check must still catch it
    data = bytearray(shard.read_bytes())
    data[int(split.offset[1]) + 100] ^= 0x01  # one bit inside the second sample's PNG
    shard.write_bytes(bytes(data))

    with pytest.raises(DataError) as e:
        verify(tiny_shards)
    assert str(e.value).startswith(f"{shard}: sha256")
    for r in (reader, SampleReader(split)):
        with pytest.raises(DataError, match=f"sample {split.keys[1]}: crc32 mismatch") as e:
            r.read(1)
        assert str(e.value).startswith(str(shard))
        assert r.read(0)  # the other samples of the shard are intact
    assert main(["verify", str(tiny_shards)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {shard}: sha256")


def test_missing_shard(tiny_shards):
    split, shard = first_sample(tiny_shards)
    shard.unlink()
    with pytest.raises(DataError, match="shard missing") as e:
        verify(tiny_shards)
    assert str(e.value).startswith(str(shard))
    with pytest.raises(DataError, match="cannot open shard"):
        SampleReader(split).read(0)


def test_truncated_shard(tiny_shards):
    split, shard = first_sample(tiny_shards)
    reader = SampleReader(split)
    reader.read(0)
    shard.write_bytes(shard.read_bytes()[:-512])  # as a copy that stopped early
    with pytest.raises(DataError, match="truncated") as e:
        verify(tiny_shards)
    assert str(e.value).startswith(str(shard))
    with pytest.raises(DataError, match="index says"):
        SampleReader(split).read(0)  # size checked on open
    with pytest.raises(DataError, match="changed in size"):
        reader.read(0)  # already open: checked before touching the map


def test_index_that_disagrees_with_the_tar(tiny_shards):
    path = tiny_shards / "index.json"
    d = json.loads(path.read_text())
    d["splits"]["val"]["samples"]["offset"][0] += 512
    path.write_text(seal(d))  # checksum renewed: verify must still see it
    with pytest.raises(DataError, match="png at offset"):
        verify(tiny_shards)


def test_damaged_dali_index(tiny_shards):
    _, shard = first_sample(tiny_shards)
    idx = shard.with_suffix(".idx")
    idx.write_text(idx.read_text().replace("png 1536", "png 1024"))
    with pytest.raises(DataError, match="DALI index does not match") as e:
        verify(tiny_shards)
    assert str(e.value).startswith(str(idx))
    idx.unlink()
    with pytest.raises(DataError, match="DALI index missing"):
        verify(tiny_shards)


def test_missing_or_broken_index(tmp_path, tiny_shards):
    with pytest.raises(DataError, match=r"no split 'test'; splits present: \['train', 'val'\]"):
        ClassIndex.load(tiny_shards).split("test")
    with pytest.raises(DataError, match="no shard index") as e:
        ClassIndex.load(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "index.json"))
    (tiny_shards / "index.json").write_text('{"format": "sar-shards/1", "classes": []}')
    with pytest.raises(DataError, match="malformed index"):
        ClassIndex.load(tiny_shards)
    (tiny_shards / "index.json").write_text('{"format": ')
    with pytest.raises(DataError, match="unreadable index"):
        ClassIndex.load(tiny_shards)


def test_cli_verify_exit_code_without_traceback(tmp_path):
    # The real entry point in a fresh interpreter: error line on stderr, exit code 2.
    res = subprocess.run([sys.executable, "-m", "shards", "verify", str(tmp_path)],
                         capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: {tmp_path / 'index.json'}: no shard index")
    assert "Traceback" not in res.stderr


def test_stats_table_and_json(tiny_shards, capsys):
    assert main(["stats", str(tiny_shards)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["class", "train", "val"]
    assert lines[1].split() == ["0", "32", "8"]
    assert lines[5].split() == ["total", "49", "12"]
    assert lines[6].startswith("train: 8 shards; height 5")
    assert main(["stats", str(tiny_shards), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["classes"] == ["0", "1", "2", "3"]
    assert stats["splits"]["val"]["class_counts"] == [8, 2, 1, 1]
    assert 54 <= stats["splits"]["train"]["height"][0] <= stats["splits"]["train"]["height"][1] <= 60
