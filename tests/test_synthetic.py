"""The synthetic SAR generator: NTIRE layout, determinism, class structure, bad OUT folders,
presets and the radar's look direction."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets import synthetic
from datasets.ntire import (CLASS_NAMES, NTIRE_TRAIN_COUNTS, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES,
                            image_id, is_sar_chip)
from datasets.synthetic import (CONTACT_SHEET, EO_CLASSES, LOOKS, MANIFEST, PRESETS, Plan, chip_rng,
                                make_synthetic, orient, render_eo, render_sar)
from shards.errors import DataError

COUNTS = (6, 4, 3, 3, 2, 2, 2, 2, 2, 2)   # long-tailed like the real thing, tiny
TEST_PER_CLASS = 2


# sha256 of the default tiny set (seed 0, look left) as written before the generator was split
# into synth_vehicles / synth_render / synthetic: names and decoded pixels of every chip, plus
# test_labels.csv (decoded pixels, so a PNG encoder update does not break it).
TINY_DIGEST = "9c0b1967e51dde622e64e695ffb7a990a66396a0b8e4baf98b02f4863c27049c"


def _make(out: Path, seed: int = 0, workers: int = 1, look: str = "left") -> dict:
    return make_synthetic(out, "mini", seed, look=look, counts=COUNTS, test_per_class=TEST_PER_CLASS,
                          workers=workers)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "raw"
    _make(out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_ntire_names_and_counts():
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "sedan" and CLASS_NAMES[9] == "semi truck with trailer"
    assert sum(NTIRE_TRAIN_COUNTS) == 293772
    assert PRESETS["ntire"] == (NTIRE_TRAIN_COUNTS, 77)
    assert PRESETS["mini"] == ((3000, 360, 196, 136, 40, 24, 24, 20, 24, 20), 50)
    assert PRESETS["small"] == ((230, 149, 96, 62, 40, 26, 17, 11, 7, 5), 240)


def test_image_id_and_sar_names():
    assert image_id("SAR_1234.png") == 1234
    assert image_id(Path("/x/train_images/3/SAR_7.png")) == 7
    assert is_sar_chip("SAR_7.png") and is_sar_chip(Path("a/SAR_0012.png"))
    for bad in ("EO_7.png", "SAR_7.jpg", "SAR_.png", "SAR_7.png.tmp", ".SAR_7.png.12.tmp", "xSAR_7.png"):
        assert not is_sar_chip(bad)
        with pytest.raises(DataError, match=r"^/d/" + bad.replace(".", r"\.") + ": not a SAR chip"):
            image_id("/d/" + bad)


def test_ntire_plan_has_real_counts_and_unique_ids():
    plan = Plan.make(NTIRE_TRAIN_COUNTS, 77, seed=3)
    assert np.bincount(plan.train_labels).tolist() == list(NTIRE_TRAIN_COUNTS)
    assert np.bincount(plan.test_labels).tolist() == [77] * 10
    ids = np.concatenate([plan.train_ids, plan.test_ids])
    assert ids.size == 293772 + 770 and np.unique(ids).size == ids.size and ids.min() >= 1


def test_layout_and_counts_exact(tiny: Path):
    assert sorted(p.name for p in (tiny / TRAIN_IMAGES).iterdir()) == [str(c) for c in range(10)]
    train_ids = []
    for label, n in enumerate(COUNTS):
        folder = tiny / TRAIN_IMAGES / str(label)
        sar = [p for p in folder.iterdir() if is_sar_chip(p)]
        assert len(sar) == n
        train_ids += [image_id(p) for p in sar]
        others = {p.name for p in folder.iterdir()} - {p.name for p in sar}
        assert all(name.startswith("EO_") for name in others), others     # no temporaries left
    test_files = sorted((tiny / TEST_IMAGES).iterdir())
    assert len(test_files) == 10 * TEST_PER_CLASS and all(is_sar_chip(p) for p in test_files)
    test_ids = [image_id(p) for p in test_files]
    assert len(set(train_ids) | set(test_ids)) == len(train_ids) + len(test_ids)   # unique across splits
    record = json.loads((tiny / MANIFEST).read_text())
    assert record["complete"] and record["seed"] == 0 and record["preset"] == "mini"
    assert record["train_counts"] == list(COUNTS) and record["generator"] == synthetic.GENERATOR_VERSION
    assert record["look"] == "left"
    assert not [p for p in tiny.rglob(".*")]                                       # no hidden tmp files


def test_test_labels_csv_matches_test_files(tiny: Path):
    with open(tiny / TEST_LABELS, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_id", "class_id"]
    labels = {int(i): int(c) for i, c in rows[1:]}
    assert set(labels) == {image_id(p) for p in (tiny / TEST_IMAGES).iterdir()}
    assert np.bincount(list(labels.values()), minlength=10).tolist() == [TEST_PER_CLASS] * 10


def test_chips_are_8bit_grayscale_54_to_60(tiny: Path):
    sizes, peaks = set(), []
    for path in tiny.rglob("SAR_*.png"):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "L", path
            assert 54 <= im.width <= 60 and 54 <= im.height <= 60, (path, im.size)
            sizes.add(im.size)
            pixels = np.asarray(im)
        assert pixels.std() > 5, path                         # speckled clutter, never flat
        peaks.append(pixels.max())
    assert len(sizes) > 5                                     # sizes vary per chip
    assert np.mean(np.array(peaks) > 150) > 0.8               # most chips hold bright scatterers


def test_eo_files_sit_beside_sar_chips(tiny: Path):
    eo = sorted(tiny.rglob("EO_*.png"))
    assert eo and {int(p.parent.name) for p in eo} == set(EO_CLASSES)
    for path in eo:
        assert not is_sar_chip(path)
        assert (path.parent / path.name.replace("EO_", "SAR_")).exists()       # paired by id, as in NTIRE
        with Image.open(path) as im:
            assert im.mode == "RGB"


def test_same_seed_same_bytes_any_workers(tiny: Path, tmp_path: Path):
    again = tmp_path / "again"
    _make(again, seed=0, workers=2)
    assert _files(again) == _files(tiny)


def test_different_seed_differs(tiny: Path, tmp_path: Path):
    _make(tmp_path / "s1", seed=1)
    other, mine = _files(tmp_path / "s1"), _files(tiny)
    chips = [k for k in mine if k.startswith(TEST_IMAGES)]
    assert mine[TEST_LABELS] != other[TEST_LABELS]
    assert not set(mine[k] for k in chips) & set(other.values())


def _bright_area(label: int, n: int = 24) -> float:
    """Mean number of bright pixels (strong returns) per chip of one class."""
    return float(np.mean([(render_sar(label, chip_rng(5, "train", i)) > 150).sum() for i in range(n)]))


def test_class_structure_differs():
    moto, sedan, box, bus, semi = (_bright_area(c) for c in (5, 0, 4, 7, 9))
    assert moto < sedan < box < semi, (moto, sedan, box, semi)
    assert 2 * sedan < bus and 3 * moto < semi


def test_chip_rng_streams_are_independent():
    a = render_sar(0, chip_rng(0, "train", 0))
    assert np.array_equal(a, render_sar(0, chip_rng(0, "train", 0)))
    assert not np.array_equal(a, render_sar(0, chip_rng(0, "test", 0)))
    assert not np.array_equal(a, render_sar(0, chip_rng(0, "train", 1)))


def test_contact_sheet_shows_every_class(tiny: Path):
    with Image.open(tiny / CONTACT_SHEET) as im:
        sheet = np.asarray(im.convert("L"))
    cell = sheet.shape[0] // 10
    assert cell >= 60 and sheet.shape[1] > 12 * cell
    for label in range(10):                            # every row: a text label, then chips
        row = sheet[label * cell:(label + 1) * cell]
        text, first_chip = row[:, :150], row[5:cell - 10, -12 * cell:-11 * cell]
        assert (text < 128).sum() > 20, label
        assert first_chip.std() > 15 and first_chip.mean() < 200, label


def test_refuses_other_preset_or_seed(tiny: Path):
    with pytest.raises(DataError, match=f"^{tiny / MANIFEST}: OUT holds a different synthetic set"):
        make_synthetic(tiny, "mini", seed=1, counts=COUNTS, test_per_class=TEST_PER_CLASS)
    with pytest.raises(DataError, match=MANIFEST):
        make_synthetic(tiny, "ntire", seed=0, counts=COUNTS, test_per_class=TEST_PER_CLASS)


def test_refuses_non_empty_folder_without_manifest(tmp_path: Path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match=f"^{tmp_path / 'raw'}: not empty and has no {MANIFEST}"):
        _make(tmp_path / "raw")
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["notes.txt"]


def test_rejects_bad_counts(tmp_path: Path):
    with pytest.raises(DataError, match="train counts"):
        make_synthetic(tmp_path / "x", counts=(5, 5))
    with pytest.raises(DataError, match="seed must be >= 0"):
        make_synthetic(tmp_path / "x", seed=-1)
    with pytest.raises(DataError, match="unknown preset"):
        make_synthetic(tmp_path / "x", preset="huge")


def test_interrupted_run_then_rerun_is_complete(tmp_path: Path, monkeypatch, tiny: Path):
    real, calls = synthetic.render_sar, []

    def flaky(label, rng):
        calls.append(label)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real(label, rng)

    out = tmp_path / "raw"
    monkeypatch.setattr(synthetic, "render_sar", flaky)
    with pytest.raises(KeyboardInterrupt):
        _make(out)
    assert json.loads((out / MANIFEST).read_text())["complete"] is False
    for path in out.rglob("SAR_*.png"):                # what landed under a final name is whole
        with Image.open(path) as im:
            im.load()
    monkeypatch.setattr(synthetic, "render_sar", real)
    _make(out)
    assert _files(out) == _files(tiny)


def test_rerun_removes_temporaries_of_a_killed_run(tiny: Path, tmp_path: Path):
    out = tmp_path / "raw"
    _make(out)
    torn = out / TRAIN_IMAGES / "0" / ".SAR_999.png.123.tmp"
    torn.write_bytes(b"\x89PNG half")
    _make(out)
    assert not torn.exists() and _files(out) == _files(tiny)


def test_refuses_a_file_as_out(tmp_path: Path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is not a folder"):
        _make(tmp_path / "f")


def test_cli_writes_a_preset(tiny: Path, tmp_path: Path, monkeypatch, capsys):
    from datasets.__main__ import main
    monkeypatch.setitem(PRESETS, "mini", (COUNTS, TEST_PER_CLASS))      # the real mini takes seconds
    assert main(["synth", str(tmp_path / "raw"), "--preset", "mini", "--seed", "0", "--workers", "1"]) == 0
    assert f"wrote {sum(COUNTS)} train + 20 test chips" in capsys.readouterr().out
    assert _files(tmp_path / "raw") == _files(tiny)


def test_cli_error_exit_2(tiny: Path, capsys):
    from datasets.__main__ import main
    assert main(["synth", str(tiny), "--preset", "mini", "--seed", "7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and MANIFEST in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tiny), "--preset", "huge"])
    assert exc.value.code == 2


def _pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        if path.name == CONTACT_SHEET:
            continue
        with Image.open(path) as im:
            pixels = np.asarray(im)
        h.update(f"{path.relative_to(root)} {pixels.shape}\n".encode())
        h.update(pixels.tobytes())
    h.update((root / TEST_LABELS).read_bytes())
    return h.hexdigest()


def test_default_output_unchanged(tiny: Path):
    assert _pixel_digest(tiny) == TINY_DIGEST


def test_small_preset_counts(tmp_path: Path):
    counts, test_per_class = PRESETS["small"]
    assert sum(counts) == 643 and test_per_class == 240
    plan = Plan.make(counts, test_per_class, seed=0)
    assert np.bincount(plan.train_labels).tolist() == [230, 149, 96, 62, 40, 26, 17, 11, 7, 5]
    assert np.bincount(plan.test_labels).tolist() == [240] * 10
    # the shard builder takes 10% of each class (at least 1) for validation
    from shards.build import build_shards
    from shards.index import ClassIndex
    record = make_synthetic(tmp_path / "raw", "small", test_per_class=0, workers=2)
    assert record["preset"] == "small" and record["num_train"] == 643
    build_shards(tmp_path / "raw" / TRAIN_IMAGES, tmp_path / "shards", workers=1, quiet=True)
    index = ClassIndex.load(tmp_path / "shards")
    train, val = index.split("train"), index.split("val")
    assert val.class_counts().tolist() == [23, 15, 10, 6, 4, 3, 2, 1, 1, 1]
    assert (train.class_counts() + val.class_counts()).tolist() == list(counts)


def test_orient_turns_the_radar_to_the_named_side():
    a = np.arange(6).reshape(2, 3)                    # [[0 1 2], [3 4 5]]: the radar's side is column 0
    assert orient(a, "left").tolist() == a.tolist()
    assert orient(a, "right")[:, -1].tolist() == [3, 0]          # the near column is now the right one
    assert orient(a, "top")[0].tolist() == [3, 0]                # ... the top row
    assert orient(a, "bottom")[-1].tolist() == [0, 3]            # ... the bottom row
    rgb = np.stack([a, a + 10, a + 20], axis=-1)
    for look in LOOKS:                                            # an EO chip turns like its SAR twin
        assert np.array_equal(orient(rgb, look)[..., 1], orient(a, look) + 10)
    with pytest.raises(ValueError, match="unknown look"):
        orient(a, "up")


def test_look_top_is_left_rotated(tiny: Path, tmp_path: Path):
    top = tmp_path / "top"
    record = _make(top, look="top")
    assert record["look"] == "top" and json.loads((top / MANIFEST).read_text())["look"] == "top"
    mine, other = _files(tiny), _files(top)
    assert set(mine) == set(other) and mine[TEST_LABELS] == other[TEST_LABELS]
    for name in mine:
        if name.endswith(".png") and name != CONTACT_SHEET:
            with Image.open(tiny / name) as a, Image.open(top / name) as b:
                left_px, top_px = np.asarray(a), np.asarray(b)
            # the radar's side (left, column 0) becomes the top: a quarter turn clockwise
            assert np.array_equal(top_px, np.rot90(left_px, -1)), name
    for i in range(4):                                # the renderers themselves, same rng for both
        for label in (0, 7, 9):
            left_sar = render_sar(label, chip_rng(3, "train", i))
            assert np.array_equal(orient(left_sar, "top"), np.rot90(left_sar, -1))
            left_eo = render_eo(label, chip_rng(3, "eo", i))
            assert np.array_equal(orient(left_eo, "top"), np.rot90(left_eo, -1))


_OPPOSITE = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}


def _dark_beside_centre(chip: np.ndarray, side: str) -> float:
    """Fraction of dark pixels in a 16 px wide strip 4-16 px from the chip centre towards `side`."""
    h, w = chip.shape
    rows, cols = slice(h // 2 - 8, h // 2 + 8), slice(w // 2 - 8, w // 2 + 8)
    strip = {"left": (rows, slice(w // 2 - 16, w // 2 - 4)), "right": (rows, slice(w // 2 + 4, w // 2 + 16)),
             "top": (slice(h // 2 - 16, h // 2 - 4), cols), "bottom": (slice(h // 2 + 4, h // 2 + 16), cols)}
    return float((chip[strip[side]] < 40).mean())


def test_look_moves_the_shadow():
    """Buses cast long shadows away from the radar: to the right for "left", down for "top"."""
    chips = [render_sar(7, chip_rng(1, "train", i)) for i in range(30)]
    for look in LOOKS:
        away = np.mean([_dark_beside_centre(orient(c, look), _OPPOSITE[look]) for c in chips])
        near = np.mean([_dark_beside_centre(orient(c, look), look) for c in chips])
        assert away > near + 0.3, (look, away, near)


def test_refuses_other_look(tiny: Path, tmp_path: Path):
    with pytest.raises(DataError, match=f"^{tiny / MANIFEST}: OUT holds a different synthetic set.*'look': 'top'"):
        _make(tiny, look="top")
    with pytest.raises(DataError, match="unknown look"):
        _make(tmp_path / "x", look="up")
    old = tmp_path / "old"                             # a set written before `look` was recorded
    _make(old)
    record = json.loads((old / MANIFEST).read_text())
    del record["look"]
    (old / MANIFEST).write_text(json.dumps(record))
    _make(old)                                         # counts as left: regenerated, not refused
    with pytest.raises(DataError, match="OUT holds a different synthetic set"):
        _make(old, look="right")


def test_cli_look_flag(tiny: Path, tmp_path: Path, monkeypatch, capsys):
    from datasets.__main__ import main
    monkeypatch.setitem(PRESETS, "mini", (COUNTS, TEST_PER_CLASS))
    assert main(["synth", str(tmp_path / "raw"), "--seed", "0", "--look", "bottom", "--workers", "1"]) == 0
    assert "look bottom" in capsys.readouterr().out
    assert json.loads((tmp_path / "raw" / MANIFEST).read_text())["look"] == "bottom"
    assert main(["synth", str(tmp_path / "raw"), "--seed", "0", "--workers", "1"]) == 2   # left != bottom
    assert "different synthetic set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "raw2"), "--look", "up"])
