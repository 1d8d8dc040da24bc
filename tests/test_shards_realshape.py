"""`shards build` on folders as real SAR sets ship: named classes, serial sub-folders, original
file names, PNG/JPEG/TIFF/BMP of 8-bit, 16-bit and float32, several chip sizes."""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from realshape import CLASSES, chip, save, write_flat_test, write_train
from shards.__main__ import main
from shards.access import SampleReader
from shards.build import build_shards
from shards.chips import ChipSpec, to_uint8
from shards.errors import DataError
from shards.index import ClassIndex
from shards.names import is_safe_key, unique_keys
from shards.pixels import ExpectedMode, read_chip


def build(raw: Path, out: Path, **kw):
    return build_shards(raw, out, **{"shard_size": 8, "workers": 1, "quiet": True, **kw})


def stored(index: ClassIndex, split: str) -> dict[str, np.ndarray]:
    """{relative file: stored chip pixels} of a split."""
    s = index.split(split)
    reader = SampleReader(s)
    return {f: np.asarray(Image.open(io.BytesIO(reader.read(i)))) for i, f in enumerate(s.files)}


def test_named_classes_nested_folders_and_repeated_names(tmp_path):
    raw = write_train(tmp_path / "train", per_class=6)
    index = build(raw, tmp_path / "out")
    assert index.classes == sorted(CLASSES)
    train, val = index.split("train"), index.split("val")
    files = train.files + val.files
    assert len(files) == 24 == len(set(files))
    assert "BMP2/SN_9563/HB19377.jpeg" in files and "BMP2/SN_9566/HB19378.jpeg" in files
    assert sum(f.endswith("/HB19377.jpeg") for f in files) == 4        # the same name in every class
    keys = train.keys + val.keys
    assert len(set(keys)) == 24 and all(is_safe_key(k) for k in keys)
    assert "BMP2_SN_9563_HB19377" in keys
    for f, pixels in stored(index, "train").items():                   # JPEG decoded once, stored losslessly
        assert np.array_equal(pixels, np.asarray(Image.open(raw / f)))
    sizes = {f.split("/")[0]: p.shape for f, p in stored(index, "train").items()}
    assert sizes == {c: (s[0], s[0]) for c, s in CLASSES.items()}      # own size kept (crop later)
    rec = index.source["builds"][-1]
    assert rec["names"] == "any" and rec["depths"] == {"sar": "8-bit"}
    assert rec["chip"]["mapping"] == "linear" and rec["chip"]["size_policy"] == "crop"


@pytest.mark.parametrize("kind, depth, mapping", [
    ("png", "8-bit", "linear"), ("bmp", "8-bit", "linear"), ("jpeg", "8-bit", "linear"),
    ("tiff16", "16-bit", "percentile"), ("float", "float32", "db")])
def test_each_format_and_depth_with_auto_intensity(tmp_path, capsys, kind, depth, mapping):
    raw = write_train(tmp_path / "train", per_class=2, kind=kind, classes=("2S1", "BMP2"))
    assert main(["build", str(raw), str(tmp_path / "out"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"{depth} gray chips; intensity auto -> {mapping} for {depth} chips" in out
    index = ClassIndex.load(tmp_path / "out")
    for f, pixels in {**stored(index, "train"), **stored(index, "val")}.items():
        source = np.asarray(Image.open(raw / f))
        x = source.astype(np.float64)
        if mapping == "percentile":
            lo, hi = np.percentile(x, [1, 99])
            want = np.rint(np.clip((x - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        elif mapping == "db":
            y = 20 * np.log10(np.maximum(x, max(x.max(), 1.0) * 1e-6))
            lo, hi = np.percentile(y, [1, 99])
            want = np.rint(np.clip((y - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
        else:
            want = source
        assert pixels.dtype == np.uint8 and np.array_equal(pixels, want), f


def test_explicit_intensity_and_mixed_depths(tmp_path):
    raw = write_train(tmp_path / "train", per_class=2, kind="tiff16", classes=("2S1", "BMP2"))
    index = build(raw, tmp_path / "out", intensity="linear")
    f, pixels = next(iter(stored(index, "train").items()))
    source = np.asarray(Image.open(raw / f)).astype(np.float64)
    assert np.array_equal(pixels, np.rint(source / 65535 * 255).astype(np.uint8))
    bad = save(raw / "BMP2" / "SN_9566" / "HB99999.jpeg", chip("BMP2", np.random.default_rng(0)), "jpeg")
    with pytest.raises(DataError, match=r"grayscale image \(mode L\), expected 16-bit grayscale") as e:
        build(raw, tmp_path / "out2")
    assert str(e.value).startswith(str(bad))


def test_flat_test_folder_with_a_csv_of_names(tmp_path):
    out = tmp_path / "out"
    build(write_train(tmp_path / "train", per_class=4), out)
    labels = write_flat_test(tmp_path / "test", tmp_path / "test.csv")
    index = build(tmp_path / "test", out, split="test", labels_csv=tmp_path / "test.csv")
    test = index.split("test")
    assert test.class_counts().tolist() == [3, 3, 3, 3]
    assert {f: index.classes[int(c)] for f, c in zip(test.files, test.labels)} == labels
    ood = tmp_path / "ood"
    for i, name in enumerate(("tank 1.jpeg", "Truck.JPG")):           # any names, unlabeled
        save(ood / name, chip("T72", np.random.default_rng(i)), "jpeg")
    index = build(ood, out, split="ood", unlabeled=True)
    assert index.split("ood").files == ["Truck.JPG", "tank 1.jpeg"] and index.split("ood").num_unlabeled == 2
    assert index.split("ood").keys == ["Truck", "tank_1"]
    (tmp_path / "bad.csv").write_text("file,class\nHB00000.jpeg,M1A1\n")
    with pytest.raises(DataError, match=r"bad\.csv:2: class_id 'M1A1' is not an integer nor one of"):
        build(tmp_path / "test", out, split="test2", labels_csv=tmp_path / "bad.csv")


def test_colliding_names_get_unique_keys(tmp_path):
    raw = write_train(tmp_path / "train", per_class=3, classes=("2S1", "BMP2"))
    rng = np.random.default_rng(5)
    for name in ("a b.jpeg", "a_b.jpeg", "x.png", "x.jpg"):
        save(raw / "2S1" / name, chip("2S1", rng), "png" if name.endswith("png") else "jpeg")
    index = build(raw, tmp_path / "out")
    keys = index.split("train").keys + index.split("val").keys
    assert len(keys) == len(set(keys)) == 10 and all(is_safe_key(k) for k in keys)
    assert unique_keys(["2S1/a b.jpeg", "2S1/a_b.jpeg"])[0].startswith("2S1_a_b-")
    assert unique_keys(["2S1/x.png", "2S1/x.jpg"]) == unique_keys(["2S1/x.png", "2S1/x.jpg"])


@pytest.mark.parametrize("policy", ["crop", "pad", "resize"])
def test_size_policy_is_recorded_and_applied(tmp_path, policy):
    raw = write_train(tmp_path / "train", per_class=2)
    index = build(raw, tmp_path / "out", size_policy=policy, chip_size=144)
    spec = ChipSpec(size_policy=policy, chip_size=144)
    assert ChipSpec.from_json(index.source["builds"][-1]["chip"]) == spec
    for f, pixels in stored(index, "train").items():
        assert pixels.shape == (144, 144)
        assert np.array_equal(pixels, read_chip(raw / f, (raw / f).read_bytes(), spec=spec))
    if policy == "pad":      # BMP2 chips are 128 px: 8 px of zeros each side
        p = next(p for f, p in stored(index, "train").items() if f.startswith("BMP2/"))
        assert not p[:8].any() and not p[:, -8:].any() and p[8:-8, 8:-8].any()
    labels = write_flat_test(tmp_path / "test", tmp_path / "test.csv", per_class=1)
    with pytest.raises(DataError, match="every split of a shard folder is prepared the same way"):
        build(tmp_path / "test", tmp_path / "out", split="test", labels_csv=tmp_path / "test.csv",
              intensity="percentile")
    index = build(tmp_path / "test", tmp_path / "out", split="test", labels_csv=tmp_path / "test.csv")
    assert set(index.split("test").image_sizes) == {"144x144"} and len(labels) == 4   # inherited


def test_size_is_checked_from_the_header_before_decoding(tmp_path):
    raw = write_train(tmp_path / "train", per_class=2, classes=("2S1", "BMP2"))
    big = raw / "2S1" / "HB77777.png"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4000, 300), np.uint8)).save(buf, format="PNG")
    big.write_bytes(buf.getvalue()[:200])                      # header intact, pixel data cut
    with pytest.raises(DataError, match=r"size 4000x300 \(HxW\) outside the accepted 16\.\.256") as e:
        build(raw, tmp_path / "out")
    assert str(e.value).startswith(str(big))


def test_bad_pixels_and_formats_name_the_file(tmp_path):
    raw = write_train(tmp_path / "train", per_class=2, kind="float", classes=("2S1", "BMP2"))
    nan = raw / "BMP2" / "SN_9566" / "HB19378.tiff"
    pixels = np.asarray(Image.open(nan)).copy()
    pixels[5, 5] = np.nan
    save(nan, pixels, "float")
    with pytest.raises(DataError, match="1 non-finite pixel values") as e:
        build(raw, tmp_path / "out")
    assert str(e.value).startswith(str(nan))
    save(nan, np.full((130, 130), -20.0, np.float32), "float")   # already in dB: not amplitude
    with pytest.raises(DataError, match=r"negative values .* use --intensity percentile") as e:
        build(raw, tmp_path / "out")
    assert str(e.value).startswith(str(nan))
    save(nan, np.zeros((130, 130), np.uint8), "png")          # PNG bytes under a .tiff name
    with pytest.raises(DataError, match=r"not a TIFF \(found PNG\)"):
        build(raw, tmp_path / "out")


def test_symlink_loop_and_dangling_link(tmp_path, capsys):
    raw = write_train(tmp_path / "train", per_class=2, classes=("2S1", "BMP2"))
    loop = raw / "BMP2" / "SN_9563" / "again"
    os.symlink(raw / "BMP2", loop)
    assert main(["build", str(raw), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {loop.resolve().parent / 'again'}") or str(loop) in err
    assert "symbolic link loop" in err and "Traceback" not in err
    loop.unlink()
    dangling = raw / "2S1" / "HB1.jpeg"
    os.symlink(tmp_path / "nowhere.jpeg", dangling)
    assert main(["build", str(raw), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "dangling symbolic link" in err and "HB1.jpeg" in err


def test_same_numbers_from_the_shared_reader(tmp_path):
    """The stored chip is exactly what read_chip (predict's reader) makes of the file."""
    raw = write_train(tmp_path / "train", per_class=2, kind="tiff16", classes=("2S1", "BMP2"))
    index = build(raw, tmp_path / "out")
    expected = ExpectedMode("gray", depth="16-bit")
    for f, pixels in stored(index, "train").items():
        assert np.array_equal(pixels, read_chip(raw / f, (raw / f).read_bytes(), expected=expected))
    assert to_uint8(np.full((4, 4), 7, np.uint16), "16-bit", "percentile").max() == 0   # flat chip


def test_display_names_only_where_the_data_carries_them(tmp_path):
    from conftest import write_raw

    raw = write_raw(tmp_path / "a" / "raw", counts=(3, 3))
    assert build(raw, tmp_path / "a" / "out").source["builds"][-1]["class_names"] is None
    (raw / "classes.txt").write_text("sedan\nSUV\n")
    rec = build(raw, tmp_path / "a" / "out2").source["builds"][-1]
    assert rec["class_names"] == ["sedan", "SUV"] and rec["ignored_files"] == 0
    raw = write_raw(tmp_path / "b" / "train_images", counts=(3, 3))
    (tmp_path / "b" / "synth.json").write_text('{"classes": ["van", "bus"]}')   # the synthetic set's record
    assert build(raw, tmp_path / "b" / "out").source["builds"][-1]["class_names"] == ["van", "bus"]
    named = write_train(tmp_path / "c" / "raw", per_class=2, classes=("2S1", "BMP2"))
    assert build(named, tmp_path / "c" / "out").source["builds"][-1]["class_names"] is None


@pytest.mark.parametrize("inside", ["out_in_raw", "raw_in_out", "same"])
def test_out_and_raw_must_not_nest(tmp_path, capsys, inside):
    from shards.__main__ import main

    raw = write_train(tmp_path / "data", per_class=2, classes=("2S1", "BMP2"))
    out = {"out_in_raw": raw / "shards", "raw_in_out": tmp_path, "same": raw}[inside]
    assert main(["build", str(raw), str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must not contain one another" in err[0]
    assert not (raw / "shards").exists() and not (out / "index.json").exists()


@pytest.mark.parametrize("char", ["\n", "\x85", "\u2028", "\x1e", "\x7f"])
def test_error_lines_stay_one_line_whatever_a_name_holds(char):
    from shards.errors import printable

    text = printable(f"a{char}b")
    assert len(text.splitlines()) == 1 and text.startswith("a\\") and text.endswith("b")


def test_the_split_follows_the_files_not_their_folders(tmp_path):
    """The same chips, once as NTIRE class folders and once under named class folders with
    serial sub-folders, get the same train/val split, in the same order."""
    import shutil

    from conftest import write_raw

    ntire = write_raw(tmp_path / "ntire", counts=(9, 7))
    for label, name in enumerate(("a_sedan", "b_van")):
        for i, f in enumerate(sorted((ntire / str(label)).glob("SAR_*.png"), reverse=True)):
            dest = tmp_path / "named" / name / f"SN_{i % 3}" / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dest)
    a, b = build(ntire, tmp_path / "a"), build(tmp_path / "named", tmp_path / "b")
    for split in ("train", "val"):
        pa, pb = stored(a, split), stored(b, split)
        assert [p.tobytes() for p in pa.values()] == [p.tobytes() for p in pb.values()]
        assert list(a.split(split).labels) == list(b.split(split).labels)
