"""The methods end to end on tiny shards: cRT/LWS with re-estimated BatchNorm statistics and
best-epoch selection, logit adjustment through evaluate/predict/export, one sub-dataset for
stages 3a and 3b, per-stage group accuracies in the history, and the LDAM-DRW recipe."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.__main__ import main
from trainer.evaluate.scoring import score_views
from trainer_helpers import TINY, build_tiny, recipe_overrides


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def train(recipe: str, shards: Path, run: Path, *extra: str) -> int:
    return main(["--config", recipe, f"data.shards={shards}", f"run.dir={run}", *TINY,
                 *recipe_overrides(recipe), *extra])


@pytest.mark.slow
def test_decoupled_crt_carries_its_batchnorm_statistics_and_logit_adjust_is_usable(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("decoupled_mini", shards, run, "stages.0.classifiers=[crt,lws,logit_adjust]",
                 "posthoc.crt.bn=train", "posthoc.crt.select=best", "posthoc.lws.bn=eval",
                 "posthoc.lws.select=last", "posthoc.crt.steps=12") == 0
    capsys.readouterr()
    m = json.loads((run / "metrics.json").read_text())
    val = m["final"]["val"]["classifiers"]
    assert set(m["final"]["test"]["classifiers"]) == {"crt", "lws", "logit_adjust"}
    assert val["crt"]["bn"] == "train" and val["crt"]["select"] == "best"
    assert 0 <= val["crt"]["epoch"] < val["crt"]["epochs"]
    assert val["lws"]["bn"] == "eval" and val["lws"]["epoch"] == val["lws"]["epochs"] - 1
    assert "tau" in val["logit_adjust"]

    folder = run / "stages" / "0-joint"
    meta = json.loads((folder / "classifiers" / "classifiers.json").read_text())
    assert meta["crt"]["batchnorm"] and "batchnorm" not in meta["lws"]
    crt = torch.load(folder / "classifiers" / "crt.pt", weights_only=True)
    model = torch.load(folder / "model.pt", weights_only=True)
    # the classifier's statistics are its own; the model kept the ones joint training left
    name, _ = meta["crt"]["batchnorm"][0]
    assert not torch.equal(crt["bn0"], model[name])

    # evaluate / predict / export read the saved classifiers, statistics included
    for clf in ("crt", "logit_adjust"):
        assert main(["evaluate", "--run", str(run), "--split", "test", "--json", "--classifier", clf]) == 0
        ev = json.loads(capsys.readouterr().out)
        assert ev["top1"] == pytest.approx(m["final"]["test"]["classifiers"][clf]["top1"])
    out = tmp_path / "la.csv"
    assert main(["predict", "--run", str(run), "--images", str(shards.parent / "test_images"),
                 "--out", str(out), "--classifier", "logit_adjust"]) == 0
    assert len(out.read_text().splitlines()) == 9
    for clf in ("crt", "logit_adjust"):
        assert main(["export", "--run", str(run), "--classifier", clf, "--format", "torchscript"]) == 0
    # the exported crt model carries the classifier's statistics: it predicts as the scorer does
    from trainer.commands.export import load_exported
    from trainer.commands.predict import load_scorer, run_normalizer

    scorer, info = load_scorer(run, "crt")
    chips = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    ids, conf = load_exported(run / "export" / "model-crt.pt", "torchscript")(chips)
    with torch.no_grad():
        scores, mean = score_views(scorer.model, [scorer.classifier], run_normalizer(info).from_uint8(chips),
                                   scorer.views, mean_logits=True)[0]
    assert (ids == scores.argmax(1).numpy()).all()
    np.testing.assert_allclose(conf, mean.softmax(1).max(1).values.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_three_stage_shares_one_sub_dataset_and_logs_group_accuracy(shards, tmp_path):
    run = tmp_path / "run"
    assert train("three_stage_mini", shards, run) == 0
    info = json.loads((run / "run.json").read_text())
    subs = {s["name"]: s["sub_dataset"] for s in info["stages"]}
    assert subs["stage1_all"] is None and subs["stage2_rest"] is None
    assert subs["stage3a_balanced"] is not None
    assert subs["stage3a_balanced"]["digest"] == subs["stage3b_classifier"]["digest"]
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    val = [h for h in history if h["kind"] == "val"]
    assert {h["stage"] for h in val} == {0, 1, 2, 3}
    assert all({"head", "middle", "tail"} <= set(h) for h in val)
    m = json.loads((run / "metrics.json").read_text())
    assert all({"head", "middle", "tail"} <= set(s["val"]["groups"]) for s in m["stages"])


@pytest.mark.slow
def test_ldam_drw_mini_runs_with_a_scaled_cosine_head(shards, tmp_path):
    run = tmp_path / "run"
    assert train("ldam_drw_mini", shards, run, "stages.0.epochs=3") == 0
    info = json.loads((run / "run.json").read_text())
    assert info["model"]["head"] == "cosine" and info["model"]["cosine_scale"] == 30.0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert all(h["loss"] == h["loss"] for h in history if h["kind"] == "train")   # finite, not NaN
    card = json.loads((run / "stages" / "0-ldam_drw" / "card.json").read_text())
    assert card["model"]["cosine_scale"] == 30.0
