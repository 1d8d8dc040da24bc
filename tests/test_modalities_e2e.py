"""Gray-only, RGB-only and paired SAR+EO shards through every loader, training (early and late
fusion), evaluation with an ood split, predict with a score column, and export."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.augment import AugmentSpec
from datasets.resident import ResidentStream
from datasets.sampling import SamplingSpec
from datasets.stream import ShardStream, make_loader
from datasets.stream_spec import StreamSpec
from datasets.synthetic import make_synthetic
from shards.build import build_shards
from trainer.__main__ import main

KINDS = {"gray": None, "rgb": "eo", "pair": "sar,eo"}
TINY = ["data.input_size=24", "data.batch_size=8", "data.eval_batch_size=32", "data.num_workers=0",
        "model.depth=8", "model.width=4", "run.progress_bar=false", "stages.0.steps=6"]


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("pbvs")
    raw = base / "raw"
    make_synthetic(raw, "mini", seed=0, counts=(6, 4, 3, 3, 3, 3, 3, 3, 3, 3), test_per_class=2, eo="every", ood=6)
    out = {}
    for kind, modalities in KINDS.items():
        root = base / kind
        build_shards(raw / "train_images", root, val_fraction=0.2, seed=0, workers=1, quiet=True, modalities=modalities)
        build_shards(raw / "test_images", root, split="test", labels_csv=raw / "test_labels.csv", workers=1, quiet=True)
        build_shards(raw / "ood_images", root, split="ood", unlabeled=True, workers=1, quiet=True)
        out[kind] = root
    out["raw"] = raw
    return out


@pytest.mark.parametrize("kind, channels", [("gray", 1), ("rgb", 3), ("pair", 4)])
def test_every_loader_gives_the_same_channels(sets, kind, channels):
    spec = StreamSpec(4, SamplingSpec(kind="class", per_class=2), AugmentSpec(hflip=True, translate=2), 24, seed=1)
    a = list(make_loader(ShardStream(sets[kind], "train", spec), 0))
    b = list(ResidentStream(sets[kind], "train", spec))
    assert a[0][0].shape[1] == channels
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(ia, ib) and torch.equal(ya, yb)
        torch.testing.assert_close(xa, xb, rtol=0, atol=1e-6)


def test_speckle_touches_only_the_radar_channel(sets):
    plain = StreamSpec(4, SamplingSpec(kind="sequential"), None, 24)
    noisy = StreamSpec(4, SamplingSpec(kind="sequential"), AugmentSpec(speckle=0.5), 24)
    (x0, _, _), (x1, _, _) = next(iter(ResidentStream(sets["pair"], "val", plain))), \
        next(iter(ResidentStream(sets["pair"], "val", noisy)))
    assert not torch.allclose(x0[:, :1], x1[:, :1]) and torch.allclose(x0[:, 1:], x1[:, 1:], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("kind, extra", [("gray", []), ("rgb", []), ("pair", []), ("pair", ["model.fusion=late"])])
def test_train_evaluate_predict_export(sets, tmp_path, capsys, kind, extra):
    run = tmp_path / "run"
    assert main(["--config", "joint_mini", f"data.shards={sets[kind]}", f"run.dir={run}", *TINY, *extra]) == 0
    out = capsys.readouterr().out
    assert "out-of-distribution" in out and "AUROC" in out
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["final"]["ood"]["model"]) == {"msp", "energy", "max_logit"}
    images = sets["raw"] / "test_images"
    csv_path = tmp_path / "results.csv"
    assert main(["predict", "--run", str(run), "--images", str(images), "--out", str(csv_path), "--score", "energy"]) == 0
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 20 and all(np.isfinite(float(r["score"])) for r in rows)
    labels = {int(r["image_id"]): int(r["class_id"]) for r in csv.DictReader((sets["raw"] / "test_labels.csv").open())}
    confusion = np.zeros((10, 10), dtype=int)
    for r in rows:
        confusion[labels[int(r["image_id"])], int(r["class_id"])] += 1
    assert confusion.tolist() == m["final"]["test"]["confusion"]   # predict sees what the evaluation saw
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--split", "test", "--json"]) == 0
    assert "ood" in json.loads(capsys.readouterr().out)
    assert main(["report", str(run), "--no-features", "--no-inference"]) == 0
    assert (run / "report" / "ood_scores.png").stat().st_size > 1000
    assert main(["export", "--run", str(run), "--format", "torchscript"]) == 0
    record = json.loads((run / "export" / "model-model.json").read_text())
    assert record["input"]["shape"][1] == {"gray": 1, "rgb": 3, "pair": 4}[kind]
