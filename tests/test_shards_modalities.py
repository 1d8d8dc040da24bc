"""shards build with channels and modalities: grayscale, RGB, paired SAR + EO samples, unlabeled
splits, and old index files without the new fields."""
from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shards import writer
from shards.__main__ import main
from shards.access import SampleReader
from shards.build import build_shards
from shards.errors import DataError
from shards.index import ClassIndex, seal
from shards.verify import verify

COUNTS = (6, 4, 3)


def chip(rng, mode: str) -> Image.Image:
    h, w = (int(x) for x in rng.integers(54, 61, size=2))
    if mode == "L":
        return Image.fromarray(rng.integers(0, 200, (h, w), dtype=np.uint8), mode="L")
    pixels = rng.integers(0, 200, (h, w, 3)) + np.array([40, 20, 0])       # channels differ
    return Image.fromarray(pixels.astype(np.uint8), mode="RGB")


def write_set(root: Path, counts=COUNTS, *, sar="L", eo="RGB", flat: bool = False,
              first_id: int = 1, seed: int = 0) -> dict[str, int]:
    """SAR_<id>.png (mode `sar`) + EO_<id>.png (mode `eo`) in class folders, or flat; None skips a
    modality. Returns {id: label}."""
    rng = np.random.default_rng(seed)
    labels, ident = {}, first_id
    for label, n in enumerate(counts):
        folder = root if flat else root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            if sar:
                chip(rng, sar).save(folder / f"SAR_{ident}.png")
            if eo:
                chip(rng, eo).save(folder / f"EO_{ident}.png")
            labels[ident] = label
            ident += 1
    return labels


def build(raw: Path, out: Path, **kw) -> ClassIndex:
    return build_shards(raw, out, **{"shard_size": 4, "workers": 1, "quiet": True, **kw})


@pytest.fixture
def paired(tmp_path: Path) -> Path:
    write_set(tmp_path / "raw")
    return tmp_path / "raw"


@pytest.fixture
def paired_shards(paired: Path, tmp_path: Path) -> Path:
    build(paired, tmp_path / "shards", modalities="sar,eo")
    return tmp_path / "shards"


def pixels_of(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


# ---- channels: grayscale, RGB, modes ----

def test_gray_build_records_one_channel(tiny_shards):
    split = ClassIndex.load(tiny_shards).split("train")
    d = json.loads((tiny_shards / "index.json").read_text())["splits"]["train"]
    assert d["modalities"] == ["sar"] and d["channels"] == 1 and d["labeled"] is True
    assert d["pixel_mean_c"] == [d["pixel_mean"]] and d["pixel_std_c"] == [d["pixel_std"]]
    assert d["modality_stats"]["sar"]["channels"] == 1
    assert split.modalities == ["sar"] and split.channels == 1 and split.labeled
    assert split.stats().pixel_mean == split.pixel_mean and split.stats("sar").image_sizes == split.image_sizes


def test_rgb_only_build(tmp_path):
    labels = write_set(tmp_path / "raw", sar=None)
    index = build(tmp_path / "raw", tmp_path / "out", modalities="eo")
    train = index.split("train")
    assert train.modalities == ["eo"] and train.channels == 3 and train.keys[0].startswith("EO_")
    reader = SampleReader(train)
    chans = []
    for i, key in enumerate(train.keys):
        data = reader.read(i)
        assert data == (tmp_path / "raw" / str(labels[int(key[3:])]) / f"{key}.png").read_bytes()
        assert reader.read(i, "eo") == data
        chans.append(pixels_of(data).reshape(-1, 3) / 255)
    chans = np.concatenate(chans)
    assert train.pixel_mean_c == pytest.approx(chans.mean(axis=0).tolist(), rel=1e-9)
    assert train.pixel_std_c == pytest.approx(chans.std(axis=0).tolist(), rel=1e-9)
    assert train.pixel_mean == pytest.approx(np.mean(train.pixel_mean_c), rel=1e-12)
    assert train.pixel_std == pytest.approx(np.mean(train.pixel_std_c), rel=1e-12)
    assert train.pixel_mean_c[0] > train.pixel_mean_c[2]                 # really per channel
    with tarfile.open(tmp_path / "out" / train.shards[0].path) as tf:
        assert tf.getnames()[:2] == [f"{train.keys[0]}.cls", f"{train.keys[0]}.png"]


def test_rgb_chips_under_sar_names_auto_and_forced_mode(tmp_path):
    write_set(tmp_path / "raw", sar="RGB", eo=None)
    assert build(tmp_path / "raw", tmp_path / "auto").split("train").channels == 3
    assert build(tmp_path / "raw", tmp_path / "rgb", mode="rgb").split("val").channels == 3
    first = tmp_path / "raw" / "0" / "SAR_1.png"
    with pytest.raises(DataError, match=r"colour image \(mode RGB\), expected 8-bit grayscale "
                                        r"\(--mode gray\)") as e:
        build(tmp_path / "raw", tmp_path / "gray", mode="gray")
    assert str(e.value).startswith(str(first))
    assert not (tmp_path / "gray" / "index.json").exists()


def test_mixed_modes_in_one_split_name_the_file(tmp_path):
    write_set(tmp_path / "raw", sar="RGB", eo=None)
    odd = tmp_path / "raw" / "2" / "SAR_12.png"
    Image.fromarray(np.zeros((56, 56), np.uint8)).save(odd)                  # one grayscale chip
    with pytest.raises(DataError, match=r"grayscale image \(mode L\), expected 8-bit RGB "
                                        r"\(the split's mode, from its first chip SAR_1\.png\)") as e:
        build(tmp_path / "raw", tmp_path / "out")
    assert str(e.value).startswith(str(odd))
    assert not (tmp_path / "out" / "index.json").exists() and not list((tmp_path / "out").rglob("*.tmp"))


def test_unsupported_first_chip_and_bad_mode_option(tmp_path, capsys):
    write_set(tmp_path / "raw", eo=None)
    first = tmp_path / "raw" / "0" / "SAR_1.png"
    Image.fromarray(np.zeros((56, 56, 4), np.uint8)).save(first)            # RGBA
    with pytest.raises(DataError, match=r"mode RGBA\), expected 8-bit grayscale or 8-bit RGB") as e:
        build(tmp_path / "raw", tmp_path / "out")
    assert str(e.value).startswith(str(first))
    with pytest.raises(DataError, match="one per modality"):
        build(tmp_path / "raw", tmp_path / "out", mode="gray,rgb")
    with pytest.raises(SystemExit):
        main(["build", str(tmp_path / "raw"), str(tmp_path / "out"), "--mode", "cmyk"])
    with pytest.raises(SystemExit):
        main(["build", str(tmp_path / "raw"), str(tmp_path / "out"), "--modalities", "sar,ir"])
    assert "modalities must be" in capsys.readouterr().err


def test_added_split_with_other_channel_count_names_the_folder(tiny_shards, tmp_path):
    write_set(tmp_path / "test", (2, 2, 2, 2), sar="RGB", eo=None, flat=True, first_id=1000)
    csv = tmp_path / "t.csv"
    csv.write_text("image_id,class_id\n" + "".join(f"{1000 + i},{i // 2}\n" for i in range(8)))
    before = (tiny_shards / "index.json").read_bytes()
    with pytest.raises(DataError, match=r"SAR_\*\.png chips have 3 channel\(s\).* has 1") as e:
        build(tmp_path / "test", tiny_shards, split="test", labels_csv=csv)
    assert str(e.value).startswith(str((tmp_path / "test").resolve()))
    with pytest.raises(DataError, match=r"modalities \['sar', 'eo'\] differ") as e:
        build(tmp_path / "test", tiny_shards, split="test", labels_csv=csv, modalities="sar,eo")
    assert str(e.value).startswith(str((tmp_path / "test").resolve()))
    assert (tiny_shards / "index.json").read_bytes() == before


# ---- paired SAR + EO ----

def test_paired_round_trip_and_index_fields(paired, paired_shards):
    index = ClassIndex.load(paired_shards)
    d = json.loads((paired_shards / "index.json").read_text())["splits"]["train"]
    for col in ("eo_offset", "eo_size", "eo_crc32", "eo_height", "eo_width"):
        assert len(d["samples"][col]) == d["num_samples"]
    assert d["modalities"] == ["sar", "eo"] and d["channels"] == 1
    assert {m: s["channels"] for m, s in d["modality_stats"].items()} == {"sar": 1, "eo": 3}
    assert index.source["builds"][-1]["modes"] == {"sar": "gray", "eo": "rgb"}
    seen = set()
    for split in index.splits.values():
        reader = SampleReader(split)
        eo = split.member("eo")
        assert eo.ext == "eo.png" and split.member().ext == "png"
        for i, key in enumerate(split.keys):
            folder = paired / str(split.labels[i])
            assert reader.read(i) == (folder / f"{key}.png").read_bytes()
            assert reader.read(i, "sar") == reader.read(i)
            assert reader.read(i, member="eo") == (folder / f"EO_{key[4:]}.png").read_bytes()
            assert pixels_of(reader.read(i, "eo")).shape == (eo.height[i], eo.width[i], 3)
            assert list(reader.read_all(i)) == ["sar", "eo"]
            seen.add(key)
        with pytest.raises(DataError, match=r"no modality 'ir'; modalities: \['sar', 'eo'\]"):
            reader.read(0, "ir")
        clone = pickle.loads(pickle.dumps(reader))
        assert clone.read(len(split) - 1, "eo") == reader.read(len(split) - 1, "eo")
    assert len(seen) == sum(COUNTS)


def test_paired_tar_members_and_dali_index(paired_shards):
    import webdataset as wds

    split = ClassIndex.load(paired_shards).split("train")
    tar = paired_shards / split.shards[0].path
    key = split.keys[0]
    with tarfile.open(tar) as tf:
        assert tf.getnames()[:3] == [f"{key}.cls", f"{key}.eo.png", f"{key}.png"]
    lines = tar.with_suffix(".idx").read_text().splitlines()
    assert lines[0] == f"v1.2 {split.shards[0].count}"
    exts = lines[1].split()[0::4]
    assert exts == ["cls", "eo.png", "png"] and lines[1].split()[3::4][1] == f"{key}.eo.png"
    sample = next(iter(wds.WebDataset([str(tar)], shardshuffle=False)))
    assert sorted(k for k in sample if not k.startswith("__")) == ["cls", "eo.png", "png"]
    assert SampleReader(split).read(0, "eo") == sample["eo.png"]


def test_dali_reads_both_members(paired_shards):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn

    split = ClassIndex.load(paired_shards).split("train")
    tar, count = paired_shards / split.shards[0].path, split.shards[0].count

    @dali.pipeline_def(batch_size=count, num_threads=1, device_id=None)
    def pipe():
        sar, eo = fn.readers.webdataset(paths=[str(tar)], index_paths=[str(tar.with_suffix(".idx"))],
                                        ext=["png", "eo.png"], missing_component_behavior="error")
        return sar, eo

    p = pipe()
    p.build()
    sar, eo = p.run()
    reader = SampleReader(split)
    assert [bytes(np.asarray(sar[i])) for i in range(count)] == [reader.read(i) for i in range(count)]
    assert [bytes(np.asarray(eo[i])) for i in range(count)] == [reader.read(i, "eo") for i in range(count)]


def test_missing_partner_names_the_id(paired, tmp_path):
    (paired / "1" / "EO_9.png").unlink()
    with pytest.raises(DataError, match=r"id 9 has no EO partner \(EO_9\.png missing") as e:
        build(paired, tmp_path / "out", modalities="sar,eo")
    assert str(e.value).startswith(str(paired.resolve() / "1" / "SAR_9.png"))
    (paired / "1" / "SAR_9.png").unlink()                                 # id 9 gone: fine
    (paired / "2" / "SAR_12.png").unlink()                                # an EO chip alone: not fine
    with pytest.raises(DataError, match=r"id 12 has no SAR partner \(SAR_12\.png missing") as e:
        build(paired, tmp_path / "out", modalities="sar,eo")
    assert str(e.value).startswith(str(paired.resolve() / "2" / "EO_12.png"))
    assert not (tmp_path / "out" / "index.json").exists()


def test_without_modalities_eo_files_are_ignored(paired, tmp_path, capsys):
    index = build(paired, tmp_path / "out")
    assert index.split("train").modalities == ["sar"] and index.split("train").channels == 1
    assert main(["build", str(paired), str(tmp_path / "cli"), "--quiet"]) == 0
    assert f"ignored {sum(COUNTS)} files that are not SAR_*.png" in capsys.readouterr().out


def test_eo_mode_must_hold_for_every_eo_chip(paired, tmp_path):
    odd = paired / "2" / "EO_13.png"
    Image.fromarray(np.zeros((56, 56), np.uint8)).save(odd)
    with pytest.raises(DataError, match=r"grayscale image \(mode L\), expected 8-bit RGB") as e:
        build(paired, tmp_path / "out", modalities="sar,eo")
    assert str(e.value).startswith(str(paired.resolve() / "2" / "EO_13.png"))
    with pytest.raises(DataError, match=r"SAR_1\.png: grayscale image \(mode L\), expected 8-bit RGB "
                                        r"\(--mode rgb\)"):
        build(paired, tmp_path / "out2", modalities="sar,eo", mode="rgb,rgb")


def test_added_test_split_inherits_modalities(paired_shards, tmp_path):
    labels = write_set(tmp_path / "test", COUNTS, flat=True, first_id=500, seed=4)
    csv = tmp_path / "t.csv"
    csv.write_text("image_id,class_id\n" + "".join(f"{i},{c}\n" for i, c in labels.items()))
    index = build(tmp_path / "test", paired_shards, split="test", labels_csv=csv)
    test = index.split("test")
    assert test.modalities == ["sar", "eo"] and test.class_counts().tolist() == list(COUNTS)
    reader = SampleReader(test)
    for i, key in enumerate(test.keys):
        assert reader.read(i, "eo") == (tmp_path / "test" / f"EO_{key[4:]}.png").read_bytes()
    assert verify(paired_shards).samples == 2 * sum(COUNTS)


def test_verify_catches_a_corrupted_eo_member(paired_shards, capsys):
    split = ClassIndex.load(paired_shards).split("train")
    shard = paired_shards / split.shards[0].path
    reader = SampleReader(split)
    eo = split.member("eo")
    data = bytearray(shard.read_bytes())
    data[int(eo.offset[1]) + 100] ^= 0x01
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match="sha256 differs"):
        verify(paired_shards)
    with pytest.raises(DataError, match=f"sample {split.keys[1]}.eo.png: crc32 mismatch") as e:
        reader.read(1, "eo")
    assert str(e.value).startswith(str(shard))
    assert reader.read(1) and reader.read(0, "eo")                       # the rest is intact
    # With the shard's checksum patched in the index, the member's own crc32 still catches it.
    path = paired_shards / "index.json"
    d = json.loads(path.read_text())
    d["splits"]["train"]["shards"][0]["sha256"] = writer.sha256_file(shard)
    path.write_text(seal(d))
    with pytest.raises(DataError, match=f"sample {split.keys[1]}: {split.keys[1]}.eo.png crc32 mismatch"):
        verify(paired_shards)
    assert main(["verify", str(paired_shards)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {shard}")


def test_verify_checks_eo_columns_and_members(paired_shards):
    path = paired_shards / "index.json"
    good = path.read_text()
    d = json.loads(good)
    d["splits"]["val"]["samples"]["eo_offset"][0] += 512
    path.write_text(seal(d))
    with pytest.raises(DataError, match=r"eo\.png at offset"):
        verify(paired_shards)
    d = json.loads(good)
    d["splits"]["val"]["modalities"] = ["sar"]                               # the tar has more members
    path.write_text(seal(d))
    with pytest.raises(DataError, match=r"has members \['cls', 'eo.png', 'png'\], expected cls \+ png"):
        verify(paired_shards)


def test_paired_build_resumes_after_an_interruption(paired, tmp_path, monkeypatch):
    build(paired, tmp_path / "ref", modalities="sar,eo")
    real, calls = writer.write_shard, []

    def crash_after_2(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[0].path)
        return real(*args)

    monkeypatch.setattr(writer, "write_shard", crash_after_2)
    with pytest.raises(KeyboardInterrupt):
        build(paired, tmp_path / "out", modalities="sar,eo")
    assert not (tmp_path / "out" / "index.json").exists()
    monkeypatch.setattr(writer, "write_shard", real)
    build(paired, tmp_path / "out", modalities="sar,eo")
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert files(tmp_path / "out") == files(tmp_path / "ref")
    build(paired, tmp_path / "two", modalities="sar,eo", workers=2)
    assert files(tmp_path / "two") == files(tmp_path / "ref")


def test_cli_paired_build_and_stats(paired, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["build", str(paired), str(out), "--modalities", "sar,eo", "--shard-size", "4",
                 "--quiet"]) == 0
    assert "train: 10 samples in 4 shards (sar 1 ch + eo 3 ch)" in capsys.readouterr().out
    assert main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "sar: 1 channel, eo: 3 channels (mean" in text
    assert main(["stats", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)["splits"]["train"]
    assert stats["modalities"] == ["sar", "eo"] and stats["channels"] == 1
    assert stats["modality_stats"]["eo"]["channels"] == 3 and len(stats["modality_stats"]["eo"]["pixel_mean_c"]) == 3
