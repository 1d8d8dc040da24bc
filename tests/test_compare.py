"""`python -m trainer compare`: collecting/launching runs and the mean ± std table (trainer/commands/compare.py)."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest

from trainer.commands import compare
from trainer.spec.config import RECIPES_DIR, dump_yaml, load_config

RECIPE = """\
data: {{shards: {shards}, input_size: 24}}
model: {{name: resnet_cifar, depth: 8, width: 4}}
stages:
  - {{name: joint, epochs: 1}}
"""
DECOUPLED = RECIPE + "  - {{name: classifier, epochs: 1, train: classifier, classifiers: [crt, tau_norm]}}\n"


def write_recipes(tmp_path: Path) -> tuple[Path, Path]:
    shards = tmp_path / "shards"
    a = tmp_path / "recipes" / "plain.yaml"
    b = tmp_path / "recipes" / "dec.yaml"
    a.parent.mkdir()
    a.write_text(RECIPE.format(shards=shards))
    b.write_text(DECOUPLED.format(shards=shards))
    return a, b


def fake_eval(rng: np.random.Generator, classifiers: tuple[str, ...] = ()) -> dict:
    ev = {"top1": float(rng.uniform(0.3, 0.9)), "balanced_acc": float(rng.uniform(0.2, 0.8)),
          "per_class_acc": rng.uniform(0, 1, 4).tolist(),
          "groups": {"head": float(rng.uniform()), "middle": float(rng.uniform()), "tail": float(rng.uniform()),
                     "many": None, "medium": None, "few": None},
          "group_classes": {"head": [0], "middle": [1, 2], "tail": [3], "many": [], "medium": [], "few": []}}
    if classifiers:
        ev["classifiers"] = {c: fake_eval(rng) for c in classifiers}
    return ev


def fabricate(recipe: Path, seed: int, root: Path, overrides: list[str] = (), *, metrics: bool = True) -> Path:
    """The run folder the trainer would leave for (recipe, seed) under `root`."""
    out = compare.run_dir(root, recipe.stem, seed)
    out.mkdir(parents=True)
    cfg = load_config(str(recipe), compare.run_args(seed, out, list(overrides)))
    (out / "config.yaml").write_text(dump_yaml(cfg))
    if metrics:
        rng = np.random.default_rng(1000 * seed + len(recipe.stem))
        clfs = ("crt", "tau_norm") if recipe.stem == "dec" else ()
        m = {"classes": ["0", "1", "2", "3"], "stages": [],
             "final": {"val": fake_eval(rng, clfs), "test": fake_eval(rng, clfs)}}
        (out / "metrics.json").write_text(json.dumps(m))
    return out


def no_launch(*args, **kwargs):
    raise AssertionError(f"compare launched a run it should have collected: {args}")


def read_csv(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {row["recipe"]: row for row in csv.DictReader(f)}


def check_table(rows: dict[str, dict[str, str]], name: str, evals: list[dict]) -> None:
    """The CSV row equals mean and sample std of the runs' metrics.json values."""
    assert int(rows[name]["seeds"]) == len(evals)
    for m in compare.METRICS:
        vals = np.array([ev[m] if m in ("top1", "balanced_acc") else ev["groups"][m] for ev in evals])
        assert float(rows[name][f"{m}_mean"]) == pytest.approx(vals.mean(), abs=1e-12)
        assert float(rows[name][f"{m}_std"]) == pytest.approx(vals.std(ddof=1) if len(vals) > 1 else 0.0, abs=1e-12)


def test_collects_existing_runs_and_tabulates_them(tmp_path: Path, monkeypatch, capsys) -> None:
    a, b = write_recipes(tmp_path)
    root = tmp_path / "runs"
    runs = {r: [fabricate(r, s, root) for s in range(3)] for r in (a, b)}
    monkeypatch.setattr(compare, "launch", no_launch)
    assert compare.main([str(a), str(b), "--seeds", "3", "--runs-root", str(root), "--out", str(tmp_path / "t")]) == 0
    out = tmp_path / "t"
    rows = read_csv(out / "compare.csv")
    assert list(rows) == ["plain", "dec", "dec/crt", "dec/tau_norm"]
    final = {r.stem: [json.loads((d / "metrics.json").read_text())["final"]["val"] for d in ds] for r, ds in runs.items()}
    check_table(rows, "plain", final["plain"])
    check_table(rows, "dec", final["dec"])
    check_table(rows, "dec/crt", [ev["classifiers"]["crt"] for ev in final["dec"]])
    md = (out / "compare.md").read_text()
    top1 = np.array([ev["top1"] for ev in final["plain"]])
    assert f"| plain | 3 | {100 * top1.mean():.1f} ± {100 * top1.std(ddof=1):.1f} |" in md
    assert "Produced by: `python -m trainer compare" in md
    assert "head = classes 0; middle = classes 1, 2; tail = classes 3" in md
    assert md in capsys.readouterr().out
    img = mpimg.imread(out / "compare.png")
    assert img.shape[0] > 250 and img.shape[1] > 400 and img[..., :3].std() > 0.05


def test_test_split_and_single_seed(tmp_path: Path, monkeypatch) -> None:
    a, _ = write_recipes(tmp_path)
    root = tmp_path / "runs"
    run = fabricate(a, 0, root)
    monkeypatch.setattr(compare, "launch", no_launch)
    assert compare.main([str(a), "--seeds", "1", "--runs-root", str(root), "--split", "test"]) == 0
    rows = read_csv(root / "compare.csv")  # --out defaults to the runs root
    check_table(rows, "plain", [json.loads((run / "metrics.json").read_text())["final"]["test"]])


def test_launches_missing_and_unfinished_runs_only(tmp_path: Path, monkeypatch) -> None:
    a, _ = write_recipes(tmp_path)
    root = tmp_path / "runs"
    fabricate(a, 0, root, ["optim.lr=0.05"])
    fabricate(a, 1, root, ["optim.lr=0.05"], metrics=False)  # interrupted: resumed by the same command
    launched = []

    def fake_launch(recipe, seed, out, overrides, log):
        launched.append((recipe.stem, seed, overrides))
        if not out.exists():
            fabricate(recipe, seed, out.parent, overrides)
        else:
            (out / "metrics.json").write_text(json.dumps({"classes": [], "final": {"val": fake_eval(np.random.default_rng(seed))}}))
        return 0

    monkeypatch.setattr(compare, "launch", fake_launch)
    # Overrides may also follow the options (as in the README's and the demo's commands).
    assert compare.main([str(a), "--seeds", "3", "--runs-root", str(root), "optim.lr=0.05"]) == 0
    assert launched == [("plain", 1, ["optim.lr=0.05"]), ("plain", 2, ["optim.lr=0.05"])]
    assert read_csv(root / "compare.csv")["plain"]["seeds"] == "3"


def test_a_run_with_another_config_is_an_error_not_overwritten(tmp_path: Path, monkeypatch, capsys) -> None:
    a, _ = write_recipes(tmp_path)
    root = tmp_path / "runs"
    run = fabricate(a, 0, root)  # trained with the default lr
    before = (run / "metrics.json").read_text()
    monkeypatch.setattr(compare, "launch", no_launch)
    assert compare.main([str(a), "optim.lr=0.01", "--seeds", "1", "--runs-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(run) in err and "optim.lr" in err
    assert (run / "metrics.json").read_text() == before


def test_failed_training_names_recipe_seed_and_log(tmp_path: Path, monkeypatch, capsys) -> None:
    a, _ = write_recipes(tmp_path)

    def failing(recipe, seed, out, overrides, log):
        log.write_text("Traceback ...\nTrainingError: loss is NaN at stage joint step 3\n")
        return 1

    monkeypatch.setattr(compare, "launch", failing)
    assert compare.main([str(a), "--seeds", "1", "--runs-root", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "plain seed 0" in err and "plain-s0.log" in err and "loss is NaN" in err
    assert not (tmp_path / "runs" / "compare.md").exists()


@pytest.mark.parametrize("args, message", [
    (["{a}", "--seeds", "0"], "--seeds"),
    (["{a}", "seed=3", "--seeds", "1"], "seed and run.dir"),
    (["{a}", "run.dir=/x", "--seeds", "1"], "seed and run.dir"),
    (["no_such_recipe_xyz", "--seeds", "1"], "no_such_recipe_xyz"),
    (["{a}", "optim.lrr=1", "--seeds", "1"], "optim.lrr"),
    (["{a}", "{a}", "--seeds", "1"], "repeat"),
])
def test_bad_arguments_are_one_clear_error(tmp_path: Path, monkeypatch, capsys, args, message) -> None:
    a, _ = write_recipes(tmp_path)
    monkeypatch.setattr(compare, "launch", no_launch)
    argv = [x.format(a=a) for x in args] + ["--runs-root", str(tmp_path / "runs")]
    assert compare.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


@pytest.mark.slow
def test_compare_with_a_real_tiny_run(tmp_path: Path, tiny_shards: Path) -> None:
    pytest.importorskip("datasets.stream")
    recipe = RECIPES_DIR / "decoupled_mini.yaml"
    root = tmp_path / "runs"
    cmd = [sys.executable, "-m", "trainer", "compare", str(recipe), f"data.shards={tiny_shards}",
           "stages.0.epochs=1", "posthoc.crt.steps=4", "posthoc.lws.steps=4", "model.width=4", "data.batch_size=16", "data.num_workers=0",
           "run.progress_bar=false", "--seeds", "1", "--runs-root", str(root)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = read_csv(root / "compare.csv")
    ev = json.loads((root / "decoupled_mini-s0" / "metrics.json").read_text())["final"]["val"]
    check_table(rows, "decoupled_mini", [ev])
    for name in ("crt", "ncm", "tau_norm", "lws"):
        check_table(rows, f"decoupled_mini/{name}", [ev["classifiers"][name]])
    # A second call collects the finished run instead of training again.
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "training decoupled_mini" not in again.stderr
