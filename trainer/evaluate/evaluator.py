"""Evaluation: run a scorer over a split on every rank, gather, de-duplicate by id, score.

Training (validation after each epoch), the post-hoc classifiers, `evaluate`, `predict`'s
checks and the report all go through `Evaluator`, so every number is computed one way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.evaluate.metrics import evaluate
from trainer.evaluate.ood import ood_metrics
from trainer.evaluate.scoring import Scorer, score_views
from trainer.posthoc.batchnorm import stats_of, using_stats
from trainer.streams import Streams


@dataclass
class Outputs:
    """Per-sample outputs of one split, ordered by sample id."""
    ids: np.ndarray
    labels: np.ndarray
    logits: np.ndarray           # [N, num_classes], classes a classifier does not predict are -inf
    features: np.ndarray | None  # [N, D] (one unaugmented view) when requested
    mean_logits: np.ndarray | None = None   # logits averaged over the TTA views (OOD scores)


class Evaluator:
    """Evaluation of one run's models on its splits, for this rank (collective over ranks)."""

    def __init__(self, accelerator, streams: Streams, *, num_classes: int, train_counts: np.ndarray,
                 groups: dict | None, views: tuple[str, ...]) -> None:
        self.accelerator, self.streams = accelerator, streams
        self.num_classes, self.train_counts = num_classes, np.asarray(train_counts)
        self.groups, self.views = groups, views
        self._streams: dict[str, object] = {}

    def stream(self, split: str):
        """The split's evaluation stream, built once (every pass re-reads the same samples)."""
        if split not in self._streams:
            self._streams[split] = self.streams.eval(split)
        return self._streams[split]

    def outputs(self, model: nn.Module, split: str, *, classifier: nn.Module | None = None,
                features: bool = False) -> Outputs:
        """Scores (with the run's TTA, or one view when `features`) of every sample of `split`."""
        return self.outputs_all(model, split, {"_": classifier}, features=features)["_"]

    def outputs_all(self, model: nn.Module, split: str, classifiers: dict[str, nn.Module | None], *,
                    features: bool = False, mean_logits: bool = False) -> dict[str, Outputs]:
        """`outputs` of several classifiers (None: the model's head) from one backbone pass per view."""
        net = self.accelerator.unwrap_model(model)
        clfs = {k: Scorer(net, c, 1, self.num_classes).classifier for k, c in classifiers.items()}
        rows = self._run(net, clfs, self.stream(split), ("identity",) if features else self.views,
                         features, mean_logits)
        rows = _gather(self.accelerator, rows)
        keep = _dedupe(rows["ids"])
        return {k: Outputs(ids=rows["ids"][keep], labels=rows["labels"][keep], logits=rows[f"logits/{k}"][keep],
                           features=rows["features"][keep] if features else None,
                           mean_logits=rows[f"mean/{k}"][keep] if mean_logits else None) for k in clfs}

    def score(self, logits: np.ndarray, labels: np.ndarray) -> dict:
        """The EVAL dict (trainer.evaluate.metrics.evaluate) with the run's groups."""
        return evaluate(logits, labels, num_classes=self.num_classes, train_counts=self.train_counts,
                        groups=self.groups)

    def evaluate(self, model: nn.Module, split: str, classifier: nn.Module | None = None) -> dict:
        return self.evaluate_all(model, split, {"_": classifier})["_"]

    def evaluate_all(self, model: nn.Module, split: str, classifiers: dict[str, nn.Module | None]) -> dict[str, dict]:
        """{name: EVAL} of several classifiers on one split (None: the model's own head)."""
        return {k: self.score(o.logits, o.labels) for k, o in self.outputs_all(model, split, classifiers).items()}

    def ood(self, model: nn.Module, known: str, classifiers: dict[str, nn.Module | None],
            unknown: str = "ood") -> dict:
        """AUROC and FPR at 95% TPR of every OOD score, known chips of split `known` against the
        chips of split `unknown`: {"known_split", name: {score: {"auroc", "fpr95"}}}."""
        a = self.outputs_all(model, known, classifiers, mean_logits=True)
        b = self.outputs_all(model, unknown, classifiers, mean_logits=True)
        return {"known_split": known, "unknown_split": unknown, "num_unknown": int(len(b[next(iter(b))].ids)),
                **{k: ood_metrics(a[k].mean_logits, b[k].mean_logits) for k in classifiers}}

    def _run(self, net: nn.Module, clfs: dict[str, nn.Module], stream, views: tuple[str, ...],
             features: bool, mean_logits: bool = False) -> dict[str, torch.Tensor]:
        acc, device = self.accelerator, self.accelerator.device
        was_training = net.training
        net.eval()
        stream.set_epoch(0, 0)
        cols: dict[str, list] = {"ids": [], "labels": [], "features": [], **{f"logits/{k}": [] for k in clfs},
                                 **({f"mean/{k}": [] for k in clfs} if mean_logits else {})}
        with torch.no_grad(), acc.autocast():
            for images, labels, ids in self.streams.iterate(stream):
                images = images.to(device, non_blocking=True)
                if features:
                    cols["features"].append(net.features(images).float())
                    scores = [c(_features(net, c, images, cols["features"][-1])).float() for c in clfs.values()]
                    scores = [(s, s) for s in scores] if mean_logits else scores
                else:
                    scores = score_views(net, list(clfs.values()), images, views, mean_logits=mean_logits)
                for k, sc in zip(clfs, scores):
                    if mean_logits:
                        sc, mean = sc
                        cols[f"mean/{k}"].append(mean)
                    cols[f"logits/{k}"].append(sc)
                cols["labels"].append(labels.to(device))
                cols["ids"].append(ids.to(device))
        net.train(was_training)
        shapes = {"ids": (0,), "labels": (0,), "features": (0, net.feature_dim)}
        return {k: torch.cat(v) if v else torch.zeros(shapes.get(k, (0, self.num_classes)), device=device,
                                                     dtype=torch.long if k in ("ids", "labels") else torch.float32)
                for k, v in cols.items() if features or k != "features"}


def _features(net: nn.Module, clf: nn.Module, images: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    """The features `clf` scores: the model's, or computed with its own BatchNorm statistics."""
    stats = stats_of(clf)
    if stats is None:
        return own
    with using_stats(net, stats):
        return net.features(images).float()


def _gather(accelerator, tensors: dict) -> dict:
    """Pad every rank's rows to the same count (ids padded with -1), gather, move to numpy."""
    if accelerator.num_processes == 1:
        return {k: v.cpu().numpy() for k, v in tensors.items()}
    out = {}
    for k, v in tensors.items():
        # -inf logits do not survive the padding value; pad with 0 and drop by id instead.
        padded = accelerator.pad_across_processes(v.contiguous(), dim=0, pad_index=-1 if k == "ids" else 0)
        out[k] = accelerator.gather(padded).cpu().numpy()
    return out


def _dedupe(ids: np.ndarray) -> np.ndarray:
    """Positions of the first row of every real id, in id order."""
    valid = np.flatnonzero(ids >= 0)
    _, first = np.unique(ids[valid], return_index=True)
    return valid[first]
