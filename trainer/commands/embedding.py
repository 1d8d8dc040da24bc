"""Seed 000's Figure 2 for a run: validation chips through each stage's backbone, projected to 2-D
(PCA, and LDA where there are enough chips per feature dimension), class 0 in red."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datasets.stream import ShardStream
from datasets.stream_spec import StreamSpec
from trainer.commands import plots
from trainer.train.checkpoint import load_weights
from trainer.errors import ConfigError

LDA_MIN_SAMPLES_PER_DIM = 5


def collect_val_chips(shards: str, input_size: int, max_per_class: int):
    """Up to `max_per_class` validation chips per class, normalised as the trainer feeds them."""
    stream = ShardStream(shards, "val", StreamSpec.sequential(256, input_size))
    want = np.minimum(np.asarray(stream.class_counts), max_per_class)
    have = np.zeros_like(want)
    xs, ys = [], []
    for images, labels, _ in stream:
        keep = []
        for j, c in enumerate(labels.tolist()):
            if have[c] < want[c]:
                have[c] += 1
                keep.append(j)
        if keep:
            xs.append(images[keep])
            ys.append(labels[keep])
        if (have >= want).all():
            break
    if not xs:
        raise ConfigError(f"{shards}: the val split is empty")
    return torch.cat(xs), torch.cat(ys).numpy()


def stage_features(model, x, device, batch: int = 256) -> np.ndarray:
    model = model.to(device).eval()
    with torch.inference_mode():
        return torch.cat([model.features(x[i:i + batch].to(device)).float().cpu()
                          for i in range(0, len(x), batch)]).numpy()


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


def section_features(run, out: Path, labels: list[str], device, max_per_class: int) -> list[str]:
    """The report section (markdown lines); `run` is a report.RunFolder."""
    if not run.stage_dirs:
        return ["_Skipped: no stage weights (RUN/stages/<i>-<name>/model.pt)._"]
    if not (run.config.get("data") or {}).get("shards"):
        return ["_Skipped: config.yaml names no data.shards._"]
    try:
        _, info = load_weights(list(run.stage_dirs.values())[-1])
        x, y = collect_val_chips(run.config["data"]["shards"], info["input_size"], max_per_class)
    except Exception as e:  # noqa: BLE001 - no val split, shards moved: note it, keep the report
        return [f"_Skipped: no validation chips to embed ({e})._"]
    names = run.stage_names()
    pca, lda, notes = [], [], []
    for i, d in run.stage_dirs.items():
        try:
            f = stage_features(load_weights(d)[0], x, device)
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
          "stage's backbone; class 0 in red, as in seed 000 Figure 2. PCA keeps the directions of "
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
