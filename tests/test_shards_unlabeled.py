"""Unlabeled splits (out-of-distribution chips of no class) and index files written before
channels, modalities and unlabeled splits existed."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards.__main__ import main
from shards.access import SampleReader
from shards.build import build_shards
from shards.errors import DataError
from shards.index import ClassIndex, seal
from shards.verify import verify

NEW_SPLIT_FIELDS = ("modalities", "channels", "pixel_mean_c", "pixel_std_c", "labeled", "modality_stats")


def write_ood(folder: Path, ids=range(900, 907), seed: int = 9) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in ids:
        Image.fromarray(rng.integers(0, 255, (56, 58), dtype=np.uint8)).save(folder / f"SAR_{i}.png")
    (folder / "EO_900.png").write_bytes(b"ignored without --modalities")
    return folder


def add_ood(out: Path, folder: Path, **kw):
    return build_shards(folder, out, split="ood", unlabeled=True, shard_size=4, workers=1, quiet=True, **kw)


def test_unlabeled_split_has_no_class(tiny_shards, tmp_path):
    folder = write_ood(tmp_path / "ood_images")
    index = add_ood(tiny_shards, folder)
    ood = index.split("ood")
    assert len(ood) == 7 and not ood.labeled and ood.num_unlabeled == 7
    assert ood.labels.tolist() == [-1] * 7
    assert ood.class_counts().tolist() == [0, 0, 0, 0]                  # no class is counted
    assert all(ood.indices_of(c).size == 0 for c in range(4))           # a class filter never draws it
    assert [s.label for s in ood.shards] == [-1, -1]
    assert [Path(s.path).name for s in ood.shards] == ["ood-none-00000.tar", "ood-none-00001.tar"]
    reader = SampleReader(ood)
    for i, key in enumerate(ood.keys):
        assert reader.read(i) == (folder / f"{key}.png").read_bytes() and reader.label(i) == -1
    with tarfile.open(tiny_shards / ood.shards[0].path) as tf:
        assert tf.extractfile(f"{ood.keys[0]}.cls").read() == b"-1"
    reloaded = ClassIndex.load(tiny_shards)
    assert reloaded.split("ood").labeled is False and reloaded.split("train").labeled is True
    assert reloaded.classes == ["0", "1", "2", "3"]
    assert verify(tiny_shards).samples == 61 + 7
    # Same split again: nothing to do.
    assert add_ood(tiny_shards, folder).split("ood").keys == ood.keys


def test_unlabeled_stats(tiny_shards, tmp_path, capsys):
    add_ood(tiny_shards, write_ood(tmp_path / "ood_images"))
    assert main(["stats", str(tiny_shards)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["class", "train", "val", "ood"]
    assert lines[1].split() == ["0", "32", "8", "0"]
    assert lines[5].split() == ["no", "class", "0", "0", "7"]
    assert lines[6].split() == ["total", "49", "12", "7"]
    assert lines[-1].startswith("ood: 2 shards") and lines[-1].endswith("; unlabeled")
    assert main(["stats", str(tiny_shards), "--json"]) == 0
    ood = json.loads(capsys.readouterr().out)["splits"]["ood"]
    assert ood["class_counts"] == [0, 0, 0, 0] and ood["unlabeled"] == 7 and ood["labeled"] is False


def test_unlabeled_split_errors(tiny_raw, tiny_shards, tmp_path, capsys):
    folder = write_ood(tmp_path / "ood_images")
    with pytest.raises(DataError, match="no shard index; an unlabeled split is added") as e:
        add_ood(tmp_path / "fresh", folder)
    assert str(e.value).startswith(str(tmp_path / "fresh" / "index.json"))
    with pytest.raises(ValueError, match="split name other than train and val"):
        build_shards(folder, tiny_shards, unlabeled=True)
    with pytest.raises(ValueError, match="split name other than train and val"):
        build_shards(folder, tiny_shards, split="train", unlabeled=True)
    with pytest.raises(DataError, match="sub-folder in"):
        add_ood(tiny_shards, tiny_raw)                                  # class folders: not flat
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    Image.fromarray(np.zeros((56, 56, 3), np.uint8)).save(rgb / "SAR_1.png")
    with pytest.raises(DataError, match=r"chips have 3 channel\(s\)") as e:
        add_ood(tiny_shards, rgb)
    assert str(e.value).startswith(str(rgb.resolve()))
    assert main(["build", str(folder), str(tiny_shards), "--unlabeled", "--quiet"]) == 2
    assert "--unlabeled: needs --split NAME" in capsys.readouterr().err
    assert main(["build", str(folder), str(tiny_shards), "--split", "ood", "--labels-none",
                 "--quiet"]) == 0
    assert "ood: 7 samples in 1 shards, unlabeled" in capsys.readouterr().out


def test_verify_refuses_a_labelled_sample_in_an_unlabeled_split(tiny_shards, tmp_path):
    add_ood(tiny_shards, write_ood(tmp_path / "ood_images"))
    path = tiny_shards / "index.json"
    d = json.loads(path.read_text())
    d["splits"]["ood"]["samples"]["label"][0] = 0
    path.write_text(seal(d))
    with pytest.raises(DataError, match="sample labels do not match"):
        verify(tiny_shards)
    d["splits"]["ood"]["samples"]["label"][0] = -1
    d["splits"]["ood"]["labeled"] = True                                # -1 in a labelled split
    path.write_text(seal(d))
    with pytest.raises(DataError, match=r"a label lies outside 0\.\.3"):
        verify(tiny_shards)


def strip_new_fields(out: Path) -> None:
    """Rewrite OUT/index.json as the builder wrote it before channels and modalities existed."""
    path = out / "index.json"
    d = json.loads(path.read_text())
    for split in d["splits"].values():
        for key in NEW_SPLIT_FIELDS:
            del split[key]
    build = d["source"]["builds"][-1]
    for key in ("modalities", "modes", "unlabeled"):
        build.pop(key, None)
    d.pop("checksum")  # nor a checksum
    path.write_text(json.dumps(d))


def test_old_index_without_new_fields_loads_as_one_gray_channel(tiny_raw, tiny_shards):
    fresh = ClassIndex.load(tiny_shards)
    strip_new_fields(tiny_shards)
    old = ClassIndex.load(tiny_shards)
    for name in ("train", "val"):
        split, ref = old.split(name), fresh.split(name)
        assert split.modalities == ["sar"] and split.channels == 1 and split.labeled
        assert split.pixel_mean_c == [ref.pixel_mean] and split.pixel_std_c == [ref.pixel_std]
        assert split.stats().channels == 1 and split.stats("sar").pixel_mean == ref.pixel_mean
        assert split.member().ext == "png" and split.extra == {}
        assert SampleReader(split).read(0) == SampleReader(ref).read(0)
    assert verify(tiny_shards).samples == 61
    # The same build again is recognised as done (the fingerprint of a plain SAR build is unchanged).
    before = (tiny_shards / "index.json").read_bytes()
    build_shards(tiny_raw, tiny_shards, val_fraction=0.2, seed=0, shard_size=8, workers=1)
    assert (tiny_shards / "index.json").read_bytes() == before


def test_old_index_round_trips_with_the_new_fields(tiny_shards):
    strip_new_fields(tiny_shards)
    index = ClassIndex.load(tiny_shards)
    index.save()
    d = json.loads((tiny_shards / "index.json").read_text())["splits"]["train"]
    assert d["modalities"] == ["sar"] and d["channels"] == 1 and d["labeled"] is True
    assert d["modality_stats"]["sar"]["pixel_mean"] == d["pixel_mean"]


def test_old_index_gets_an_added_split(tiny_shards, tmp_path):
    strip_new_fields(tiny_shards)
    index = add_ood(tiny_shards, write_ood(tmp_path / "ood_images"))
    assert index.split("ood").channels == 1 and index.split("train").channels == 1
    assert verify(tiny_shards).samples == 68
