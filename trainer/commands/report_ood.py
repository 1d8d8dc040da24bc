"""The report's out-of-distribution section: score histograms of known and unknown chips.

Scores come from the run's final model exactly as `predict --score` computes them (logits
averaged over the TTA views; trainer/evaluate/ood.py), on the known split that metrics.json used
(test, or val) and on the shards' `ood` split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from datasets.resident import ResidentStream
from datasets.stream_spec import StreamSpec
from trainer.commands import plots
from trainer.evaluate.ood import SCORES, auroc, ood_score
from trainer.commands.predict import load_scorer
from trainer.evaluate.scoring import score_views


def split_logits(scorer, shards: str, split: str, size: int, device) -> np.ndarray:
    stream = ResidentStream(shards, split, StreamSpec.sequential(256, size), device=device)
    out = []
    with torch.no_grad():
        for images, _, _ in stream:
            out.append(score_views(scorer.model, [scorer.classifier], images, scorer.views, mean_logits=True)[0][1])
    return torch.cat(out).cpu().numpy()


def section_ood(run, out: Path, device) -> list[str]:
    """Markdown lines (`run` is a report.RunFolder)."""
    ood = (run.metrics.get("final") or {}).get("ood")
    if not ood:
        return ["_Skipped: the shards have no `ood` split (build one with `shards build … --split ood --unlabeled`)._"]
    try:
        scorer, info = load_scorer(run.root)
        scorer.to(device).eval()
        shards = run.config["data"]["shards"]
        known = split_logits(scorer, shards, ood["known_split"], info["input_size"], device)
        unknown = split_logits(scorer, shards, ood["unknown_split"], info["input_size"], device)
    except Exception as e:  # noqa: BLE001 - shards moved, weights missing: note it, keep the report
        return [f"_Skipped: could not score the chips again ({e})._"]
    k = {s: ood_score(known, s) for s in SCORES}
    u = {s: ood_score(unknown, s) for s in SCORES}
    plots.score_histograms(out / "ood_scores.png", k, u, {s: auroc(k[s], u[s]) for s in SCORES})
    rows = [f"| {s} | {ood['model'][s]['auroc']:.3f} | {ood['model'][s]['fpr95']:.3f} |" for s in SCORES]
    return [f"Known: the {ood['known_split']} split; unknown: {ood['num_unknown']} chips of the "
            f"`{ood['unknown_split']}` split. Higher scores should mean known.", "",
            "![OOD score histograms](ood_scores.png)", "", "| score | AUROC | FPR at 95% TPR |",
            "|---|---|---|", *rows]
