"""The synthetic generator's optical twins (--eo every|only), out-of-distribution chips (--ood N),
and the shard sets built from them: grayscale-only, RGB-only, paired SAR + EO, an ood split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.ntire import (OOD_IMAGES, OOD_LIST, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES, chip_id,
                            image_id, is_eo_chip, is_sar_chip)
from datasets.synth_render import chip_rng, render_eo_twin, render_sar_of
from datasets.synth_vehicles import ARMOUR, HULL, OOD_KINDS, TYRE, ood_model, vehicle_model
from datasets.synthetic import (CONTACT_SHEET_EO, CONTACT_SHEET_OOD, MANIFEST, PRESETS, make_synthetic)
from shards.access import SampleReader
from shards.build import build_shards
from shards.errors import DataError
from shards.verify import verify

COUNTS = (6, 4, 3, 3, 2, 2, 2, 2, 2, 2)
TEST_PER_CLASS = 2
OOD = 6


def _make(out: Path, workers: int = 1, **kw) -> dict:
    return make_synthetic(out, "mini", 0, counts=COUNTS, test_per_class=TEST_PER_CLASS, workers=workers, **kw)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth_eo")
    made = {"default": root / "default", "every": root / "every", "only": root / "only"}
    _make(made["default"])
    _make(made["every"], eo="every", ood=OOD)
    _make(made["only"], eo="only", ood=OOD)
    return made


def test_every_chip_has_an_rgb_twin_of_the_same_size(sets):
    every = sets["every"]
    sar = sorted(every.glob(f"{TRAIN_IMAGES}/*/SAR_*.png")) + sorted(every.glob(f"{TEST_IMAGES}/SAR_*.png")) \
        + sorted(every.glob(f"{OOD_IMAGES}/SAR_*.png"))
    eo = sorted(every.rglob("EO_*.png"))
    assert len(sar) == len(eo) == sum(COUNTS) + 10 * TEST_PER_CLASS + OOD
    for path in sar:
        twin = path.with_name(path.name.replace("SAR_", "EO_"))
        assert is_eo_chip(twin) and chip_id(twin) == image_id(path)
        with Image.open(path) as a, Image.open(twin) as b:
            assert a.mode == "L" and b.mode == "RGB" and a.size == b.size, path   # sizes vary per chip
            pixels = np.asarray(b)
        assert pixels.std() > 5 and np.abs(np.diff(pixels.astype(int), axis=-1)).mean() > 2   # coloured, noisy


def test_every_keeps_the_sar_chips_and_labels_of_the_default_set(sets):
    default, every = _files(sets["default"]), _files(sets["every"])
    for name, data in default.items():
        if "SAR_" in name or name == TEST_LABELS:
            assert every[name] == data, name
    decoys = [n for n in default if "EO_" in n]
    assert decoys and all(every[n] != default[n] for n in decoys)       # twins replace the decoys
    record = json.loads((sets["every"] / MANIFEST).read_text())
    assert record["eo"] == "every" and record["ood"] == OOD and record["eo_files"] == []
    assert "eo" not in json.loads((sets["default"] / MANIFEST).read_text())   # default: as before


def test_only_writes_the_same_twins_without_sar(sets):
    only, every = _files(sets["only"]), _files(sets["every"])
    assert not [n for n in only if "SAR_" in n]
    eo = [n for n in every if "EO_" in n]
    assert sorted(n for n in only if "EO_" in n) == sorted(eo)
    assert all(only[n] == every[n] for n in eo) and only[TEST_LABELS] == every[TEST_LABELS]


def test_twin_shows_the_same_vehicle():
    """Same scene as the SAR chip (size, heading, position): long buses cover far more of the
    chip than motorcycles, in both pictures."""
    def spread(label: int) -> float:
        out = []
        for i in range(12):
            model = lambda rng: vehicle_model(label, rng)                 # noqa: E731
            eo = render_eo_twin(model, chip_rng(2, "train", i), chip_rng(2, "eo_train", i)).astype(float)
            centre = eo[18:-18, 18:-18]
            out.append(np.abs(centre - np.median(eo.reshape(-1, 3), axis=0)).mean())
        return float(np.mean(out))
    assert spread(7) > 1.5 * spread(5)
    sar = render_sar_of(lambda rng: vehicle_model(3, rng), chip_rng(1, "test", 4))
    eo = render_eo_twin(lambda rng: vehicle_model(3, rng), chip_rng(1, "test", 4), chip_rng(1, "eo_test", 4))
    assert eo.shape == sar.shape + (3,)


def test_ood_chips_ids_and_list(sets):
    every = sets["every"]
    ood = sorted(every.glob(f"{OOD_IMAGES}/SAR_*.png"))
    ids = [image_id(p) for p in ood]
    listed = [int(x) for x in (every / OOD_LIST).read_text().split()]
    assert sorted(ids) == listed and len(listed) == OOD
    known = {image_id(p) for p in every.rglob("SAR_*.png") if OOD_IMAGES not in str(p)}
    assert len(known) == sum(COUNTS) + 10 * TEST_PER_CLASS and not known & set(ids)
    record = json.loads((every / MANIFEST).read_text())
    assert record["ood_kinds"] == {k: OOD // 3 for k in OOD_KINDS} and record["ood_list"] == OOD_LIST
    assert (every / CONTACT_SHEET_OOD).is_file() and (every / CONTACT_SHEET_EO).is_file()
    assert sorted(p.name for p in (sets["only"] / OOD_IMAGES).iterdir()) == [f"EO_{i}.png" for i in listed]


def test_ood_models_are_vehicle_like_but_of_no_class():
    rng = np.random.default_rng(0)
    tracked, _, length = ood_model("tracked", rng)
    assert 5 < length < 13 and tracked[:, 2].max() > 1.4 and (tracked[:, 5] == ARMOUR).any()
    tractor, _, _ = ood_model("tractor", rng)
    tyres = tractor[tractor[:, 5] == TYRE]
    assert len(tyres) == 1 and tyres[0, 2] > tractor[0, 2]           # rear wheels wider than the hood
    boat, _, _ = ood_model("boat_trailer", rng)
    hull = boat[boat[:, 5] == HULL]
    assert len(hull) == 4 and list(hull[:, 2]) == sorted(hull[:, 2])  # narrows to a bow
    for kind in OOD_KINDS:
        chip = render_sar_of(lambda r: ood_model(kind, r), chip_rng(0, "ood", 3))
        assert chip.dtype == np.uint8 and 54 <= min(chip.shape) <= max(chip.shape) <= 60 and chip.std() > 5


def test_same_bytes_any_workers(sets, tmp_path):
    _make(tmp_path / "again", workers=2, eo="every", ood=OOD)
    assert _files(tmp_path / "again") == _files(sets["every"])


def test_manifest_refuses_other_eo_or_ood(sets, tmp_path):
    with pytest.raises(DataError, match=r"OUT holds a different synthetic set.*'eo': 'every'"):
        _make(sets["every"], eo="decoys", ood=OOD)
    with pytest.raises(DataError, match=r"OUT holds a different synthetic set.*'ood': 6"):
        _make(sets["every"], eo="every", ood=2)
    with pytest.raises(DataError, match="different synthetic set"):
        _make(sets["default"], eo="every")
    with pytest.raises(DataError, match="unknown eo mode"):
        _make(tmp_path / "x", eo="sometimes")
    with pytest.raises(DataError, match="ood must be >= 0"):
        _make(tmp_path / "x", ood=-1)


def test_cli_options(tmp_path, monkeypatch, capsys, sets):
    from datasets.__main__ import main
    monkeypatch.setitem(PRESETS, "mini", (COUNTS, TEST_PER_CLASS))
    out = tmp_path / "raw"
    assert main(["synth", str(out), "--eo", "every", "--ood", str(OOD), "--workers", "1"]) == 0
    assert f"eo every, {OOD} ood) to" in capsys.readouterr().out
    assert _files(out) == _files(sets["every"])
    with pytest.raises(SystemExit):
        main(["synth", str(tmp_path / "r2"), "--eo", "all"])


def build(raw: Path, out: Path, **kw):
    return build_shards(raw, out, shard_size=8, workers=1, quiet=True, **kw)


@pytest.mark.parametrize("kind, source, modalities, channels", [
    ("gray", "every", None, {"sar": 1}),
    ("rgb", "only", "eo", {"eo": 3}),
    ("rgb_from_every", "every", "eo", {"eo": 3}),
    ("paired", "every", "sar,eo", {"sar": 1, "eo": 3}),
])
def test_synthetic_sets_build(sets, tmp_path, kind, source, modalities, channels):
    """The README's commands: train/val, test with labels, an unlabeled ood split; all verify."""
    raw, out = sets[source], tmp_path / kind
    index = build(raw / TRAIN_IMAGES, out, modalities=modalities)
    build(raw / TEST_IMAGES, out, split="test", labels_csv=raw / TEST_LABELS)
    index = build(raw / OOD_IMAGES, out, split="ood", unlabeled=True)
    for name in ("train", "val", "test", "ood"):
        split = index.split(name)
        assert {m: split.stats(m).channels for m in split.modalities} == channels, name
    assert index.split("test").class_counts().tolist() == [TEST_PER_CLASS] * 10
    assert index.split("ood").class_counts().sum() == 0 and len(index.split("ood")) == OOD
    reader = SampleReader(index.split("ood"))
    for m in channels:
        key = index.split("ood").keys[0]
        prefix = {"sar": "SAR_", "eo": "EO_"}[m]
        assert reader.read(0, m) == (raw / OOD_IMAGES / f"{prefix}{key.split('_')[1]}.png").read_bytes()
    assert verify(out).samples == sum(COUNTS) + 10 * TEST_PER_CLASS + OOD


def test_decoy_set_cannot_pair(sets, tmp_path):
    """The default set's few decoy EO chips have no twins for most SAR chips: pairing names one."""
    with pytest.raises(DataError, match="has no EO partner"):
        build(sets["default"] / TRAIN_IMAGES, tmp_path / "out", modalities="sar,eo")
    assert not is_sar_chip("EO_1.png") and is_eo_chip("EO_1.png") and not is_eo_chip("SAR_1.png")
