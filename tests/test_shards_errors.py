"""Bad input to `shards build`: one DataError naming the file, and nothing half-written."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_raw
from shards.__main__ import main
from shards.build import build_shards
from shards.errors import DataError


def build(raw: Path, out: Path, **kw):
    return build_shards(raw, out, **{"shard_size": 8, "workers": 1, **kw})


def expect_error(raw: Path, out: Path, culprit: Path, match: str, **kw) -> None:
    """The build fails with a message that starts with the culprit's path; no index, no tmp files."""
    had_index = (out / "index.json").exists()
    before = (out / "index.json").read_bytes() if had_index else None
    with pytest.raises(DataError, match=match) as e:
        build(raw, out, **kw)
    assert str(e.value).startswith(str(culprit)), str(e.value)
    if had_index:
        assert (out / "index.json").read_bytes() == before
    else:
        assert not (out / "index.json").exists()
    assert not list(out.rglob("*.tmp")) if out.exists() else True


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    return write_raw(tmp_path / "raw", counts=(10, 3, 2))


def last_image(raw: Path) -> Path:
    return sorted((raw / "2").glob("SAR_*.png"))[-1]  # written in the last shard


def test_corrupt_png(raw, tmp_path):
    bad = last_image(raw)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the pixel data
    bad.write_bytes(bytes(data))
    expect_error(raw, tmp_path / "out", bad, "corrupt or truncated PNG")


def test_truncated_png(raw, tmp_path):
    bad = last_image(raw)
    bad.write_bytes(bad.read_bytes()[:300])
    expect_error(raw, tmp_path / "out", bad, "corrupt or truncated PNG")


def test_not_a_png(raw, tmp_path):
    bad = last_image(raw)
    Image.fromarray(np.zeros((56, 56), np.uint8)).save(bad, format="JPEG")
    expect_error(raw, tmp_path / "out", bad, "not a PNG")


@pytest.mark.parametrize("pixels, what", [
    (np.zeros((56, 56, 3), np.uint8), r"colour image \(mode RGB\)"),
    (np.full((56, 56), 3000, np.uint16), "16-bit image"),
])
def test_wrong_pixel_format(raw, tmp_path, pixels, what):
    bad = last_image(raw)
    Image.fromarray(pixels).save(bad)
    expect_error(raw, tmp_path / "out", bad, f"{what}, expected 8-bit grayscale")


@pytest.mark.parametrize("shape", [(8, 56), (56, 400)])
def test_size_far_outside_range(raw, tmp_path, shape):
    bad = last_image(raw)
    Image.fromarray(np.zeros(shape, np.uint8)).save(bad)
    expect_error(raw, tmp_path / "out", bad, r"outside the accepted 16\.\.256 px")


def test_size_range_is_configurable(raw, tmp_path):
    expect_error(raw, tmp_path / "out", raw / "0", r"outside the accepted 16\.\.50 px",
                 size_range=(16, 50))


def test_empty_class_folder(raw, tmp_path):
    for p in (raw / "1").iterdir():
        p.unlink()
    (raw / "1" / "EO_7.png").write_bytes(b"not SAR")  # only non-SAR files: still empty
    expect_error(raw, tmp_path / "out", raw / "1", "empty class folder")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_gap_in_numeric_classes(raw, tmp_path):
    (raw / "2").rename(raw / "3")
    expect_error(raw, tmp_path / "out", raw, r"must be exactly 0\.\.2.*missing \[2\]")


def test_numbers_mixed_with_names(raw, tmp_path):
    (raw / "2").rename(raw / "bus")
    expect_error(raw, tmp_path / "out", raw, "mix numbers and names")


def test_image_next_to_class_folders(raw, tmp_path):
    stray = raw / "SAR_999.png"
    shutil.copy(last_image(raw), stray)
    expect_error(raw, tmp_path / "out", stray, "next to class folders")


def test_flat_folder_without_labels(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((56, 56), np.uint8)).save(flat / "SAR_1.png")
    expect_error(flat, tmp_path / "out", flat, "no class folders")


def test_same_key_in_two_classes(raw, tmp_path):
    dup = raw / "1" / last_image(raw).name
    shutil.copy(last_image(raw), dup)
    with pytest.raises(DataError, match="keys .* must be unique"):
        build(raw, tmp_path / "out")


def test_class_too_small_to_split(tmp_path):
    raw = write_raw(tmp_path / "raw", counts=(4, 1))
    expect_error(raw, tmp_path / "out", raw / "1", "at least 2 are needed")


def flat_test_set(tmp_path: Path, rows: str) -> tuple[Path, Path]:
    folder = tmp_path / "test_images"
    folder.mkdir()
    for i in (1, 2, 3):
        Image.fromarray(np.full((56, 56), i, np.uint8)).save(folder / f"SAR_{i}.png")
    csv = tmp_path / "labels.csv"
    csv.write_text("image_id,class_id\n" + rows)
    return folder, csv


def test_label_outside_classes(tiny_shards, tmp_path):
    folder, csv = flat_test_set(tmp_path, "1,0\n2,3\n3,4\n")  # tiny_shards has classes 0..3
    expect_error(folder, tiny_shards, Path(f"{csv}:4"), r"class_id 4 outside 0\.\.3",
                 split="test", labels_csv=csv)


def test_image_without_label_row(tiny_shards, tmp_path):
    folder, csv = flat_test_set(tmp_path, "1,0\n2,1\n")
    expect_error(folder, tiny_shards, folder / "SAR_3.png", "no label row",
                 split="test", labels_csv=csv)


def test_label_row_without_image(tiny_shards, tmp_path):
    folder, csv = flat_test_set(tmp_path, "1,0\n2,1\n3,1\n4,2\n")
    expect_error(folder, tiny_shards, Path(f"{csv}:5"), "SAR_4.png not found",
                 split="test", labels_csv=csv)


def test_bad_csv_header_and_values(tiny_shards, tmp_path):
    folder, csv = flat_test_set(tmp_path, "1,zero\n")
    expect_error(folder, tiny_shards, Path(f"{csv}:2"), "not an integer",
                 split="test", labels_csv=csv)
    csv.write_text("id,label\n1,0\n")
    expect_error(folder, tiny_shards, csv, "header must be", split="test", labels_csv=csv)


def test_out_holds_a_different_dataset(tiny_shards, tmp_path):
    other = write_raw(tmp_path / "other", counts=(5, 5, 5, 5), seed=3)
    expect_error(other, tiny_shards, tiny_shards / "index.json", "different dataset")
    # The same raw folder with other options is a different dataset too.
    expect_error(tmp_path / "raw", tiny_shards, tiny_shards / "index.json", "different dataset",
                 val_fraction=0.3)


def test_out_is_an_unrelated_folder(raw, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    expect_error(raw, out, out, "holds no shard index")
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_prints_error_and_exits_2(raw, tmp_path, capsys):
    (raw / "2").rename(raw / "5")
    assert main(["build", str(raw), str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {raw.resolve()}: numeric class folders") and "Traceback" not in err


def test_cli_rejects_bad_options(raw, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build", str(raw), str(tmp_path / "out"), "--val-fraction", "1.5"])
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_cli_build_reports_ignored_files(raw, tmp_path, capsys):
    (raw / "0" / "EO_1.png").write_bytes(b"eo chip")
    assert main(["build", str(raw), str(tmp_path / "out"), "--shard-size", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "train: 12 samples" in out and "val: 3 samples" in out
    assert "ignored 1 files that are not SAR_*.png (e.g. EO_1.png)" in out
