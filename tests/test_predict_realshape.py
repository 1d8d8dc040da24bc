"""A real-shaped set end to end on a tiny model: 16-bit TIFF chips in named, nested class folders
-> shards -> train -> metrics.json and report by class name -> predict (file, class id, class
name) -> export; predict as strict as the build; the same pixels in build, predict and export."""
from __future__ import annotations

import csv
import io
import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.folder import Preprocess, list_chips, load_chips
from realshape import CLASSES, write_flat_test, write_train
from shards.access import SampleReader
from shards.build import build_shards
from shards.index import ClassIndex
from trainer.__main__ import main
from trainer_helpers import TINY, recipe_overrides

NAMES = sorted(CLASSES)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("realshape")
    out = root / "shards"
    kw = {"shard_size": 8, "workers": 1, "quiet": True}
    build_shards(write_train(root / "train", per_class=6, kind="tiff16"), out, val_fraction=0.34, **kw)
    write_flat_test(root / "test", root / "test.csv", per_class=2, kind="tiff16")
    build_shards(root / "test", out, split="test", labels_csv=root / "test.csv", **kw)
    run = root / "run"
    assert main(["--config", "joint_mini", f"data.shards={out}", f"run.dir={run}", *TINY,
                 *recipe_overrides("joint_mini")]) == 0
    return run


def head(run: Path) -> dict:
    return json.loads(next((run / "stages").glob("*/card.json")).read_text())


def test_class_names_through_metrics_and_predict(run, tmp_path, capsys):
    m = json.loads((run / "metrics.json").read_text())
    assert m["classes"] == NAMES
    assert set(m["final"]["test"]["per_class"]) == set(NAMES)
    assert list(m["final"]["test"]["per_class"].values()) == m["final"]["test"]["per_class_acc"]
    test = run.parent / "test"
    (test / "notes.txt").write_text("not a chip")
    out = tmp_path / "results.csv"
    capsys.readouterr()
    assert main(["predict", "--run", str(run), "--images", str(test), "--out", str(out), "--score", "msp"]) == 0
    assert "ignored 1 files that are not chips (e.g. notes.txt)" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["file", "class_id", "class_name", "score"]
    assert [r["file"] for r in rows] == sorted(r["file"] for r in rows)       # natural order here
    assert all(NAMES[int(r["class_id"])] == r["class_name"] for r in rows)
    truth = {r["file"]: r["class"] for r in csv.DictReader((run.parent / "test.csv").open())}
    confusion = np.zeros((4, 4), int)
    for r in rows:
        confusion[NAMES.index(truth[r["file"]]), int(r["class_id"])] += 1
    assert confusion.tolist() == m["final"]["test"]["confusion"]               # what evaluation saw


def test_same_pixels_in_build_predict_and_export(run, tmp_path):
    """A 16-bit TIFF gives the same uint8 chip in the shards, in predict and as the exported
    model's documented input; the exported model agrees with predict."""
    from trainer.commands.export import load_exported

    index = ClassIndex.load(run.parent / "shards")
    test = index.split("test")
    reader = SampleReader(test)
    info = head(run)
    prep = Preprocess.from_info(info)
    assert info["preprocess"]["mapping"] == "percentile" and info["preprocess"]["depth"] == "16-bit"
    files = [run.parent / "test" / f for f in test.files]
    size = info["input_size"]
    ours = load_chips([{"sar": f} for f in files], size, [1], prep).numpy()
    for i, chip in enumerate(ours):
        stored = np.asarray(Image.open(io.BytesIO(reader.read(i))))
        h, w = stored.shape
        top, left = (h - size) // 2, (w - size) // 2
        assert np.array_equal(chip[0], stored[top:top + size, left:left + size]), test.files[i]
    assert main(["export", "--run", str(run), "--format", "torchscript"]) == 0
    record = json.loads((run / "export" / "model-model.json").read_text())
    assert record["class_names"] == NAMES
    chip_rec = index.source["builds"][0]["chip"]
    assert {k: record["preprocess"][k] for k in chip_rec} == chip_rec
    classes, _ = load_exported(run / "export" / "model-model.pt", "torchscript")(ours)
    out = tmp_path / "r.csv"
    assert main(["predict", "--run", str(run), "--images", str(run.parent / "test"), "--out", str(out)]) == 0
    by_file = {r["file"]: int(r["class_id"]) for r in csv.DictReader(out.open())}
    assert [by_file[f] for f in test.files] == np.asarray(classes).tolist()


def corrupt_idat(path: Path) -> None:
    """Flip a byte inside the IDAT chunk and fix its CRC, so only the zlib stream is broken."""
    data = bytearray(path.read_bytes())
    at = data.index(b"IDAT")
    length = int.from_bytes(data[at - 4:at], "big")
    data[at + 4 + length // 2] ^= 0xFF
    data[at + 4 + length:at + 8 + length] = zlib.crc32(bytes(data[at:at + 4 + length])).to_bytes(4, "big")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", ["idat", "depth", "size", "header"])
def test_predict_refuses_what_the_build_refuses(run, tmp_path, capsys, case):
    folder = tmp_path / "imgs"
    shutil.copytree(run.parent / "test", folder, ignore=shutil.ignore_patterns("*.txt"))
    bad = folder / "zz_bad.png"
    if case == "idat":
        Image.fromarray(np.random.default_rng(0).integers(0, 60000, (150, 150)).astype(np.uint16)).save(bad)
        corrupt_idat(bad)
    elif case == "depth":
        Image.fromarray(np.zeros((150, 150), np.uint8)).save(bad)
    elif case == "size":
        Image.fromarray(np.zeros((300, 150), np.uint16)).save(bad)
    else:
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    capsys.readouterr()
    code = main(["predict", "--run", str(run), "--images", str(folder), "--out", str(tmp_path / "r.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {bad}: ") and err.count("\n") == 1, err
    want = {"idat": "corrupt or truncated PNG", "depth": "expected 16-bit grayscale (as the run's training chips)",
            "size": "outside the accepted 16..256", "header": "cannot read as an image"}[case]
    assert want in err and not (tmp_path / "r.csv").exists()


def test_ntire_names_collisions_are_counted(tmp_path):
    folder = tmp_path / "ntire"
    folder.mkdir()
    for name in ("SAR_1.png", "SAR_01.png", "SAR_10.png", "SAR_2.png", "EO_2.png", "readme.md"):
        (folder / name).write_bytes(b"x")
    found = list_chips({"sar": folder})
    assert found.ntire and [r for r, _ in found.rows] == ["1", "2", "10"]
    assert [(a.name, b.name) for a, b in found.collisions] == [("SAR_1.png", "SAR_01.png")]
    assert sorted(p.name for p in found.ignored) == ["EO_2.png", "readme.md"]


def test_report_names_classes_and_uses_the_test_split(run):
    assert main(["report", str(run), "--no-features", "--no-inference"]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "test split" in md and "sedan" not in md
