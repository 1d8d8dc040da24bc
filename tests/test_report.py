"""`python -m trainer report RUN` on fabricated and real tiny run folders (trainer/commands/report.py, plots.py)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from trainer.commands import embedding, plots, report
from trainer.spec.config import RECIPES_DIR

STAGES = ["joint", "no_class0", "balanced"]
COUNTS = [40, 12, 6, 3]  # the tiny_shards fixture's class profile


def fake_eval(rng: np.random.Generator, n: int, **extra) -> dict:
    cm = rng.integers(0, 4, size=(n, n)) + np.diag(rng.integers(3, 12, size=n))
    per = cm.diagonal() / cm.sum(axis=1)
    groups = {"head": [0], "middle": [1], "tail": list(range(2, n)), "many": [], "medium": [0, 1],
              "few": list(range(2, n))}
    return {"top1": float(cm.diagonal().sum() / cm.sum()), "balanced_acc": float(per.mean()),
            "per_class_acc": per.tolist(), "confusion": cm.tolist(), "group_classes": groups,
            "groups": {g: (float(per[c].mean()) if c else None) for g, c in groups.items()}, **extra}


def make_run(root: Path, n: int = 4, seed: int = 0, *, shards: str = "/nonexistent/shards",
             classifiers: bool = True, confusion: bool = True, history: bool = True) -> Path:
    """A run folder as the trainer writes it (config.yaml, metrics.json, history.jsonl), no weights."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    cfg = {"seed": seed, "data": {"shards": shards, "input_size": 24, "tta": 1},
           "model": {"name": "resnet_cifar", "depth": 8, "width": 4},
           "stages": [{"name": s, "epochs": 2} for s in STAGES]}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    final = fake_eval(rng, n)
    if classifiers:
        curve = [[t, 0.3 + 0.2 * np.sin(2 * t)] for t in np.linspace(0, 1.5, 7)]
        final["classifiers"] = {"crt": fake_eval(rng, n), "ncm": fake_eval(rng, n),
                                "tau_norm": fake_eval(rng, n, tau=0.75, tau_curve=curve)}
    if not confusion:
        final.pop("confusion")
    metrics = {"classes": [str(i) for i in range(n)], "class_counts": COUNTS[:n],
               "stages": [{"name": s, "val": fake_eval(rng, n)} for s in STAGES], "final": {"val": final}}
    (root / "metrics.json").write_text(json.dumps(metrics))
    if history:
        rows, step = [], 0
        for i, s in enumerate(STAGES):
            for epoch in range(2):
                for _ in range(3):
                    step += 1
                    rows.append({"stage": i, "stage_name": s, "epoch": epoch, "step": step, "kind": "train",
                                 "loss": 2 / step, "lr": 0.1 / (epoch + 1)})
                rows.append({"stage": i, "stage_name": s, "epoch": epoch, "step": step, "kind": "val",
                             "loss": 1.5 / step, "top1": 0.1 * step / 3, "balanced_acc": 0.05 * step / 3})
        (root / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"torn')
    return root


def assert_real_png(path: Path, min_side: int = 250) -> None:
    """The file is a PNG of a sensible size with real content (not one flat colour)."""
    import matplotlib.image as mpimg

    assert path.is_file(), f"{path} missing"
    img = mpimg.imread(path)
    h, w = img.shape[:2]
    assert min_side <= h <= 4000 and min_side <= w <= 6000, (path, img.shape)
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05, f"{path} looks blank"
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20, f"{path} has almost no colours"


def embedded_images(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def test_report_on_fabricated_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    assert report.main([str(run), "--no-inference"]) == 0
    out = run / "report"
    md = (out / "report.md").read_text()
    promised = ["per_class_accuracy.png", "confusion_matrix.png", "training_curves.png", "classifiers.png",
                "tau_curve.png"]
    for name in promised:
        assert_real_png(out / name)
        assert name in embedded_images(md)
    for name in embedded_images(md):
        assert (out / name).is_file()
    # The summary table carries metrics.json's numbers; class names and the torn line are noted.
    metrics = json.loads((run / "metrics.json").read_text())
    assert f"{100 * metrics['final']['val']['balanced_acc']:.1f}" in md
    assert "crt" in md and "tau_norm" in md
    assert "history.jsonl line" in md
    assert "Skipped: no stage weights" in md and "Skipped (--no-inference)" in md


def test_report_skips_missing_optional_parts(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run", classifiers=False, confusion=False, history=False)
    assert report.main([str(run), "--no-inference"]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "no post-hoc classifiers" in md and "no `final.val.confusion`" in md and "no history.jsonl" in md
    assert_real_png(run / "report" / "per_class_accuracy.png")
    assert not (run / "report" / "confusion_matrix.png").exists()


@pytest.mark.parametrize("breakage", ["no_dir", "no_metrics", "bad_json", "no_classes"])
def test_not_a_run_folder_is_exit_2_naming_the_path(tmp_path: Path, capsys, breakage: str) -> None:
    run = make_run(tmp_path / "run")
    if breakage == "no_dir":
        run = tmp_path / "elsewhere"
    elif breakage == "no_metrics":
        (run / "metrics.json").unlink()
    elif breakage == "bad_json":
        (run / "metrics.json").write_text("{not json")
    else:
        (run / "metrics.json").write_text("{}")
    assert report.main([str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(run) in err
    assert not (run / "report" / "report.md").exists()


def test_global_steps_monotone_when_stages_restart_their_count() -> None:
    hist = [{"stage": 0, "step": s} for s in (1, 2, 3)] + [{"stage": 1, "step": s} for s in (1, 2)]
    assert plots.global_steps(hist) == [1, 2, 3, 4, 5]
    hist = [{"stage": 0, "step": s} for s in (1, 2, 3)] + [{"stage": 1, "step": s} for s in (4, 5)]
    assert plots.global_steps(hist) == [1, 2, 3, 4, 5]
    # The trainer's global_step wins over the per-stage step; a stage starts where the last one ended.
    hist = [{"stage": 0, "step": 3, "global_step": 3}, {"stage": 1, "step": 2, "global_step": 5}]
    assert plots.global_steps(hist) == [3, 5]
    assert plots.stage_starts(hist, [3, 5]) == {0: 0.0, 1: 3}


def test_projections_find_the_structure() -> None:
    rng = np.random.default_rng(0)
    # PCA: the dominant direction is axis 2.
    f = rng.normal(size=(500, 5)) * np.array([1, 1, 10, 1, 1])
    p = embedding.pca_2d(f)
    assert abs(np.corrcoef(p[:, 0], f[:, 2])[0, 1]) > 0.99
    # LDA: classes differ along a low-variance axis that PCA would not pick first.
    y = np.repeat(np.arange(3), 200)
    f = rng.normal(size=(600, 6)) * np.array([20, 20, 1, 1, 1, 1])
    f[:, 3] += 4 * y
    lda = embedding.lda_2d(f, y)[:, 0]
    means = [lda[y == c].mean() for c in range(3)]
    spread = max(lda[y == c].std() for c in range(3))
    assert min(abs(a - b) for i, a in enumerate(means) for b in means[i + 1:]) > 2 * spread


# ---- with real tiny models and shards -------------------------------------------------------

def add_stage_weights(run: Path) -> None:
    """Real state_dicts from trainer.models, stage 1 with a head over classes 1..3 only."""
    import torch

    from trainer.models import build_model

    for i, name in enumerate(STAGES):
        model = build_model({"name": "resnet_cifar", "depth": 8, "width": 4}, 4)
        if i == 1:
            model.classifier.subset([1, 2, 3])
        d = run / "stages" / f"{i}-{name}"
        d.mkdir(parents=True)
        torch.save(model.state_dict(), d / "model.pt")
        (d / "card.json").write_text(json.dumps({   # as the trainer writes it (trainer.run.model_card)
            "classes": model.classifier.classes, "num_classes": 4, "input_size": 24, "tta": 1,
            "model": {"name": "resnet_cifar", "depth": 8, "width": 4, "head": "linear"},
            "pixel_mean": 0.3, "pixel_std": 0.2}))


def test_report_with_stage_weights_and_shards(tmp_path: Path, tiny_shards: Path) -> None:
    pytest.importorskip("datasets.stream")
    run = make_run(tmp_path / "run", shards=str(tiny_shards))
    add_stage_weights(run)
    assert report.main([str(run), "--large-batch", "8", "--repeats", "2"]) == 0
    out = run / "report"
    assert_real_png(out / "features_pca.png")
    fig = json.loads((out / "inference.json").read_text())
    assert fig["parameters"] > 0 and fig["state_dict_bytes"] > 4 * fig["parameters"]
    assert {"batch_1", "batch_8"} <= set(fig["latency_s_per_chip"])
    md = (out / "report.md").read_text()
    assert "features_pca.png" in md and "latency per chip" in md
    assert "LDA view skipped" in md  # 12 validation chips cannot support a 16-dim LDA
    assert "_Stage" not in md, "every stage's weights (subset head included) must load"


def test_report_features_skipped_without_val_split(tmp_path: Path) -> None:
    pytest.importorskip("trainer.models")
    run = make_run(tmp_path / "run")  # data.shards does not exist
    add_stage_weights(run)
    loaded = report.load_run(run)
    lines = report.section_features(loaded, tmp_path, ["0", "1", "2", "3"], 10)
    assert len(lines) == 1 and "Skipped: no validation chips" in lines[0] and "/nonexistent/shards" in lines[0]
    assert not list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_report_on_a_real_tiny_run(tmp_path: Path, tiny_shards: Path) -> None:
    pytest.importorskip("datasets.stream")
    recipe = RECIPES_DIR / "three_stage_mini.yaml"
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", "--config", str(recipe), f"data.shards={tiny_shards}",
           f"run.dir={run}", *TINY_OVERRIDES]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    # Inference figures are covered above; here the point is the trainer's real run folder.
    done = subprocess.run([sys.executable, "-m", "trainer", "report", str(run), "--no-inference"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = run / "report"
    md = (out / "report.md").read_text()
    for name in embedded_images(md):
        assert_real_png(out / name)
    for name in ("per_class_accuracy.png", "confusion_matrix.png", "training_curves.png", "features_pca.png"):
        assert name in embedded_images(md)


# three_stage_mini cut down to the 4-class tiny shards: one epoch per stage, a 4-wide model.
TINY_OVERRIDES = ["stages.1.sampler.classes=[1,2,3]", "stages.2.sampler.per_class=8",
                  "stages.3.sampler.per_class=8", *[f"stages.{i}.epochs=1" for i in range(4)],
                  "model.width=4", "data.batch_size=16", "data.num_workers=0", "data.tta=1",
                  "run.progress_bar=false"]


def test_lda_view_drawn_when_there_are_enough_chips(tmp_path: Path, tiny_shards: Path, monkeypatch) -> None:
    pytest.importorskip("datasets.stream")
    run = make_run(tmp_path / "run", shards=str(tiny_shards))
    add_stage_weights(run)
    monkeypatch.setattr(embedding, "LDA_MIN_SAMPLES_PER_DIM", 0)
    out = tmp_path / "out"
    out.mkdir()
    md = report.section_features(report.load_run(run), out, ["0", "1", "2", "3"], 200)
    assert "![features LDA](features_lda.png)" in md
    assert_real_png(out / "features_lda.png")
    assert_real_png(out / "features_pca.png")
