"""The report's out-of-distribution section: score histograms of known and unknown chips.

Scores come from the run's final model exactly as `predict --score` computes them (logits
averaged over the TTA views; trainer/evaluate/ood.py), on the known split that metrics.json used
(test, or val) and on the shards' `ood` split.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.commands import plots
from trainer.commands.predict import load_scorer, run_evaluator
from trainer.evaluate.ood import SCORES, auroc, ood_score


def mean_logits(evaluator, scorer, split: str) -> np.ndarray:
    """The logits averaged over the run's TTA views, per chip of `split` (the OOD scores' input)."""
    return evaluator.outputs_all(scorer.model, split, {"m": scorer.classifier}, mean_logits=True)["m"].mean_logits


def section_ood(run, out: Path) -> list[str]:
    """Markdown lines (`run` is a report.RunFolder)."""
    ood = (run.metrics.get("final") or {}).get("ood")
    if not ood:
        return ["_Skipped: the shards have no `ood` split (build one with `shards build … --split ood --unlabeled`)._"]
    try:
        _, evaluator = run_evaluator(run.root)
        scorer, _ = load_scorer(run.root)
        scorer.to(evaluator.accelerator.device)
        known = mean_logits(evaluator, scorer, ood["known_split"])
        unknown = mean_logits(evaluator, scorer, ood["unknown_split"])
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
