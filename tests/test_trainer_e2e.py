"""Every recipe end to end on tiny shards (tiny model, 16 px, 1 epoch per stage), the run
folder and metrics.json contract, predict/evaluate, and the bad-input errors."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from trainer.__main__ import main
from trainer_helpers import TINY, build_tiny, recipe_overrides

EVAL_KEYS = {"top1", "balanced_acc", "per_class_acc", "groups", "confusion"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return build_tiny(tmp_path_factory.mktemp("tiny"))


def train(recipe: str, shards: Path, run: Path, *extra: str) -> int:
    return main(["--config", recipe, f"data.shards={shards}", f"run.dir={run}", *TINY,
                 *recipe_overrides(recipe), *extra])


def check_eval(ev: dict, classes: int) -> None:
    assert EVAL_KEYS <= set(ev)
    assert 0 <= ev["top1"] <= 1 and 0 <= ev["balanced_acc"] <= 1
    assert len(ev["per_class_acc"]) == classes
    assert {"head", "middle", "tail", "many", "medium", "few"} <= set(ev["groups"])
    assert len(ev["confusion"]) == classes


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["joint_mini", "two_stage_mini", "decoupled_mini", "three_stage_mini"])
def test_recipe_end_to_end(recipe, shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(recipe, shards, run) == 0
    out = capsys.readouterr().out
    assert "bal_acc" in out and "head" in out  # the summary table

    m = json.loads((run / "metrics.json").read_text())
    assert m["classes"] == ["0", "1", "2", "3"]
    from trainer.spec.config import load_run_config
    cfg = load_run_config(run)
    assert [s["name"] for s in m["stages"]] == [s["name"] for s in cfg["stages"]]
    for s in m["stages"]:
        check_eval(s["val"], 4)
    check_eval(m["final"]["val"], 4)
    check_eval(m["final"]["test"], 4)  # the shards have a test split
    assert m["final"]["test"]["num_samples"] == 8
    if recipe == "decoupled_mini":
        for split in ("val", "test"):
            assert set(m["final"][split]["classifiers"]) == {"crt", "ncm", "tau_norm", "lws", "logit_adjust"}
            for ev in m["final"][split]["classifiers"].values():
                check_eval(ev, 4)
        assert 0 <= m["final"]["val"]["classifiers"]["tau_norm"]["tau"] <= 2
    for i, st in enumerate(cfg["stages"]):
        folder = run / "stages" / f"{i}-{st['name']}"
        assert (folder / "model.pt").is_file()
        assert json.loads((folder / "card.json").read_text())["num_classes"] == 4
    if recipe == "three_stage_mini":
        heads = [json.loads((run / "stages" / f"{i}-{s['name']}" / "card.json").read_text())["classes"]
                 for i, s in enumerate(cfg["stages"])]
        assert heads == [[0, 1, 2, 3], [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
        # stage 2 never saw class 0 and cannot predict it
        assert m["stages"][1]["val"]["per_class_acc"][0] == 0.0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert {h["kind"] for h in history} == {"train", "val"}
    assert all(math.isfinite(h["loss"]) for h in history if h["kind"] == "train")
    assert list((run / "tb").rglob("events.out.tfevents*"))
    assert (run / "config.yaml").is_file()


@pytest.mark.slow
def test_predict_evaluate_rerun_and_refusals(shards, tmp_path, capsys):
    run = tmp_path / "run"
    assert train("joint_mini", shards, run) == 0
    capsys.readouterr()

    out = tmp_path / "results.csv"
    images = shards.parent / "test_images"
    assert main(["predict", "--run", str(run), "--images", str(images), "--out", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["image_id", "class_id"]
    assert sorted(int(r[0]) for r in rows[1:]) == list(range(1000, 1008))  # EO_ file ignored
    assert all(0 <= int(r[1]) < 4 for r in rows[1:])

    assert main(["evaluate", "--run", str(run), "--split", "test", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    m = json.loads((run / "metrics.json").read_text())
    assert ev["top1"] == m["final"]["test"]["top1"]  # same weights, same numbers

    # The same command again: already finished, prints the table.
    assert train("joint_mini", shards, run) == 0
    assert "already finished" in capsys.readouterr().err
    # Another recipe into the same folder is refused.
    assert train("joint_mini", shards, run, "optim.lr=0.3") == 2
    assert "different recipe" in capsys.readouterr().err

    assert main(["evaluate", "--run", str(run), "--split", "nope"]) == 2
    assert "splits" in capsys.readouterr().err


def test_missing_shards_is_a_clear_error(tmp_path, capsys):
    code = main(["--config", "joint_mini", f"data.shards={tmp_path / 'none'}", f"run.dir={tmp_path / 'r'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "none") in err
    assert not (tmp_path / "r" / "config.yaml").exists()


def test_recipe_classes_must_match_shards(shards, tmp_path, capsys):
    assert main(["--config", "three_stage_mini", f"data.shards={shards}", f"run.dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "stages.1.sampler.classes" in err and "4 classes" in err


def test_unknown_key_on_command_line(tmp_path, capsys):
    assert main(["--config", "joint_mini", "optim.lrr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lrr" in err and "did you mean 'lr'" in err


def test_bad_sampler_and_loss_settings(shards, tmp_path, capsys):
    assert main(["--config", "joint_mini", f"data.shards={shards}", f"run.dir={tmp_path / 'a'}",
                 "stages.0.sampler.q=0.5"]) == 2
    assert "stages.0.sampler" in capsys.readouterr().err
    assert train("joint_mini", shards, tmp_path / "b", "stages.0.loss.name=nope") == 2
    assert "loss" in capsys.readouterr().err


@pytest.mark.slow
def test_nan_loss_names_stage_and_step(shards, tmp_path, capsys):
    assert train("joint_mini", shards, tmp_path / "r", "optim.lr=1e30", "optim.warmup_epochs=0") == 2
    err = capsys.readouterr().err
    assert "stage 0 (joint)" in err and "step" in err and "loss is" in err


@pytest.mark.slow
def test_select_best_epoch_on_validation(shards, tmp_path):
    run = tmp_path / "run"
    assert train("joint_mini", shards, run, "stages.0.epochs=3", "stages.0.select=best", "optim.lr=0.3") == 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    val = [h["balanced_acc"] for h in history if h["kind"] == "val"]
    m = json.loads((run / "metrics.json").read_text())
    assert len(val) == 3 and m["final"]["val"]["balanced_acc"] == max(val)
    assert (run / "stages" / "0-joint" / "best.pt").is_file()


@pytest.mark.slow
def test_dali_loader_trains_and_resumes_like_an_uninterrupted_run(shards, tmp_path):
    """data.loader=dali without CUDA runs DALI's CPU mode through the whole trainer (three
    stages, subset and expanded heads), and a crash mid-stage followed by resume gives the same
    final metrics and weights: the DALI stream continues where it stopped."""
    pytest.importorskip("nvidia.dali")
    import subprocess
    import sys

    import torch

    def command(run: Path) -> list[str]:
        return [sys.executable, "-m", "trainer", "--config", "three_stage_mini", f"data.shards={shards}",
                f"run.dir={run}", *TINY, *recipe_overrides("three_stage_mini"), "data.loader=dali"]

    repo = Path(__file__).resolve().parents[1]
    ref, crashed = tmp_path / "ref", tmp_path / "crashed"
    r = subprocess.run(command(ref), cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert yaml_load(ref / "config.yaml")["data"]["loader"] == "dali"
    hooked = [sys.executable, str(repo / "tests" / "hooked_trainer.py"), "--fail-at-step", "5"]
    r = subprocess.run(hooked + command(crashed)[3:], cwd=repo, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode != 0 and "injected failure at global step 5" in r.stderr
    r = subprocess.run([sys.executable, "-m", "trainer", "resume", str(crashed)], cwd=repo, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((crashed / "metrics.json").read_text()) == json.loads((ref / "metrics.json").read_text())
    for folder in sorted((ref / "stages").iterdir()):
        a = torch.load(crashed / "stages" / folder.name / "model.pt", weights_only=True)
        b = torch.load(folder / "model.pt", weights_only=True)
        assert all(torch.equal(a[k], b[k]) for k in b), folder.name


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_resident_and_shard_reader_give_the_same_run(shards, tmp_path):
    """The resident loader (decoded once) and the per-batch shard reader feed the same batches,
    so a run gives the same metrics and weights with either; the run records which it used."""
    import torch

    runs = {}
    for loader in ("resident", "torch"):
        run = tmp_path / loader
        assert train("three_stage_mini", shards, run, f"data.loader={loader}") == 0
        runs[loader] = run
        assert json.loads((run / "run.json").read_text())["loader"] == loader
    a, b = (json.loads((runs[k] / "metrics.json").read_text()) for k in ("resident", "torch"))
    assert a == b
    for folder in sorted((runs["torch"] / "stages").iterdir()):
        x = torch.load(runs["resident"] / "stages" / folder.name / "model.pt", weights_only=True)
        y = torch.load(folder / "model.pt", weights_only=True)
        assert all(torch.equal(x[k], y[k]) for k in y), folder.name


@pytest.mark.slow
def test_posthoc_classifiers_are_saved_and_predict_matches_metrics(shards, tmp_path, capsys):
    """`predict --classifier X` on the test images gives, chip for chip, the confusion matrix
    that metrics.json reports for X on the test split (with the run's TTA); so does `evaluate`."""
    run = tmp_path / "run"
    assert train("decoupled_mini", shards, run, "data.tta=3") == 0
    m = json.loads((run / "metrics.json").read_text())
    labels = {int(r["image_id"]): int(r["class_id"]) for r in csv.DictReader((shards.parent / "test_labels.csv").open())}
    for name in ("model", "crt", "ncm", "tau_norm", "lws", "logit_adjust"):
        expected = m["final"]["test"] if name == "model" else m["final"]["test"]["classifiers"][name]
        out = tmp_path / f"{name}.csv"
        assert main(["predict", "--run", str(run), "--images", str(shards.parent / "test_images"),
                     "--out", str(out), "--classifier", name]) == 0
        confusion = [[0] * 4 for _ in range(4)]
        for row in list(csv.reader(out.open()))[1:]:
            confusion[labels[int(row[0])]][int(row[1])] += 1
        assert confusion == expected["confusion"], name
        capsys.readouterr()
        assert main(["evaluate", "--run", str(run), "--split", "test", "--classifier", name, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["confusion"] == expected["confusion"], name
    assert main(["predict", "--run", str(run), "--images", str(shards.parent / "test_images"),
                 "--out", str(tmp_path / "x.csv"), "--classifier", "knn"]) == 2
    err = capsys.readouterr().err
    assert "no classifier 'knn'" in err and "crt" in err and "lws" in err
    check_export_matches_predict(run, shards.parent / "test_images", tmp_path)


def check_export_matches_predict(run: Path, images: Path, tmp_path: Path) -> None:
    """An exported model (uint8 chips in, class and score out) agrees with `predict --score`."""
    import numpy as np
    import torch
    from torchvision.io import ImageReadMode, decode_png, read_file

    from datasets.augment import to_input
    from trainer.commands.export import load_exported

    files = sorted(images.glob("SAR_*.png"), key=lambda p: int(p.stem[4:]))
    size = json.loads((run / "run.json").read_text())["input_size"]
    chips = torch.stack([to_input(decode_png(read_file(str(f)), mode=ImageReadMode.GRAY), size) for f in files])
    for name, fmt in (("model", "torchscript"), ("ncm", "onnx"), ("lws", "torchscript")):
        if fmt == "onnx":
            pytest.importorskip("onnxruntime")
        out = tmp_path / f"pred-{name}.csv"
        assert main(["predict", "--run", str(run), "--images", str(images), "--out", str(out),
                     "--classifier", name, "--score", "msp"]) == 0
        rows = list(csv.DictReader(out.open()))
        assert main(["export", "--run", str(run), "--classifier", name, "--format", fmt]) == 0
        path = run / "export" / f"model-{name}.{'onnx' if fmt == 'onnx' else 'pt'}"
        classes, scores = load_exported(path, fmt)(chips.numpy())
        assert [int(r["class_id"]) for r in rows] == np.asarray(classes).tolist(), (name, fmt)
        np.testing.assert_allclose(np.asarray(scores, dtype=np.float64), [float(r["score"]) for r in rows],
                                   atol=1e-4)
