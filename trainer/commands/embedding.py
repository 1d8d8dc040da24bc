"""Figure 2 of Li, Tan & Pan (NTIRE 2021) for a run: validation chips through each stage's backbone, projected to 2-D
(PCA, and LDA where there are enough chips per feature dimension), class 0 in red."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.commands import plots
from trainer.commands.predict import run_evaluator
from trainer.train.checkpoint import load_weights
from trainer.errors import ConfigError

LDA_MIN_SAMPLES_PER_DIM = 5


def first_per_class(labels: np.ndarray, max_per_class: int) -> np.ndarray:
    """Positions of the first `max_per_class` samples of every class (in sample id order)."""
    keep, seen = [], {}
    for j, c in enumerate(labels.tolist()):
        if seen.get(c, 0) < max_per_class:
            seen[c] = seen.get(c, 0) + 1
            keep.append(j)
    return np.asarray(keep, dtype=np.int64)


def stage_features(evaluator, model, max_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (one unaugmented view) and labels of up to `max_per_class` validation chips per
    class through `model`'s backbone, computed by the run's Evaluator."""
    out = evaluator.outputs(model.to(evaluator.accelerator.device), "val", features=True)
    if len(out.labels) == 0:
        raise ConfigError("the val split is empty")
    keep = first_per_class(out.labels, max_per_class)
    return out.features[keep], out.labels[keep]


def pca_2d(f: np.ndarray) -> np.ndarray:
    f = f - f.mean(axis=0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    return f @ vt[:2].T


def lda_2d(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fisher discriminant directions (within-class whitened between-class scatter), computed
    after PCA to ≤ 64 dims and with a small ridge, so collapsed features stay well-posed."""
    f = f - f.mean(axis=0)
    _, _, vt = np.linalg.svd(f, full_matrices=False)
    f = f @ vt[:64].T
    d = f.shape[1]
    sw, sb = np.zeros((d, d)), np.zeros((d, d))
    for c in np.unique(y):
        fc = f[y == c]
        mu = fc.mean(axis=0)
        sw += (fc - mu).T @ (fc - mu)
        sb += len(fc) * np.outer(mu, mu)
    sw += (1e-3 * np.trace(sw) / d + 1e-9) * np.eye(d)
    evals, evecs = np.linalg.eigh(sw)
    white = evecs / np.sqrt(evals)
    _, vecs = np.linalg.eigh(white.T @ sb @ white)
    return f @ (white @ vecs[:, ::-1][:, :2])


def section_features(run, out: Path, labels: list[str], max_per_class: int) -> list[str]:
    """The report section (markdown lines); `run` is a report.RunFolder."""
    if not run.stage_dirs:
        return ["_Skipped: no stage weights (RUN/stages/<i>-<name>/model.pt)._"]
    if not (run.config.get("data") or {}).get("shards"):
        return ["_Skipped: config.yaml names no data.shards._"]
    try:
        _, evaluator = run_evaluator(run.root)
        evaluator.stream("val")
    except Exception as e:  # noqa: BLE001 - no val split, shards moved: note it, keep the report
        return [f"_Skipped: no validation chips to embed ({e})._"]
    names = run.stage_names()
    pca, lda, notes = [], [], []
    for i, d in run.stage_dirs.items():
        try:
            f, y = stage_features(evaluator, load_weights(d)[0], max_per_class)
        except Exception as e:  # noqa: BLE001
            notes.append(f"_Stage {i} ({d.name}) skipped: {e}_")
            continue
        title = f"after stage {i}: {names.get(i, d.name)}"
        pca.append((title, pca_2d(f), y))
        lda.append((title, lda_2d(f, y), y))
    if not pca:
        return notes or ["_Skipped: no stage model could be loaded._"]
    plots.feature_projection(out / "features_pca.png", pca, labels, "PCA")
    md = [f"Validation chips (up to {max_per_class} per class, {len(y)} in all) through each "
          "stage's backbone; class 0 in red, as in Figure 2 of Li, Tan & Pan (NTIRE 2021). PCA keeps the directions of "
          "largest variance.", "", "![features PCA](features_pca.png)", ""]
    # LDA is fitted on the chips it shows: with few chips per feature dimension any classes
    # look separable, so it is drawn only where that is not the case.
    if len(y) >= LDA_MIN_SAMPLES_PER_DIM * min(f.shape[1], 64):
        plots.feature_projection(out / "features_lda.png", lda, labels, "LDA")
        md += ["LDA: the two directions that best separate the classes (fitted on these chips).", "",
               "![features LDA](features_lda.png)"]
    else:
        md += [f"_LDA view skipped: {len(y)} chips are too few for {f.shape[1]}-dimensional features "
               "(it would separate any labels)._"]
    return md + notes
