"""Fitting a stage's post-hoc classifiers in a run, saving them with it, loading them back.

Each classifier (trainer.posthoc.registry) is fitted through a `FitContext`, scored on
validation like the model (same TTA) and saved in RUN/stages/<i>-<name>/classifiers/, where
`evaluate`, `predict` and `export` find it. Every rank fits the same classifiers from the same
seed and gathered data; no broadcast needed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from datasets.sampling import SamplingSpec
from datasets.stream_spec import StreamSpec
from shards.atomic import atomic_path, write_json
from trainer.errors import TrainingError
from trainer.evaluate.evaluator import Evaluator, Outputs
from trainer.models.heads import FullLogits, Head
from trainer.posthoc import batchnorm
from trainer.posthoc.batchnorm import BatchNormed
from trainer.posthoc.head_training import HeadTrainingSpec, feature_batches, train_head
from trainer.posthoc.registry import table
from trainer.preflight import Setup
from trainer.spec.resolve import StageSpec
from trainer.streams import per_rank_batch
from trainer.train.tensor_files import load_tensors

FOLDER = "classifiers"


@dataclass
class FitContext:
    """What a classifier's `fit` may use: features of a split, the model's head, head training."""
    setup: Setup
    evaluator: Evaluator
    model: nn.Module                # prepared (DDP-wrapped where distributed)
    stage: StageSpec
    seed: int                       # this classifier's own
    cache: dict = field(default_factory=dict)   # split -> Outputs, shared by the stage's classifiers
    stats: dict | None = None       # BatchNorm statistics the last trained head was trained with (bn: train)
    trained: dict = field(default_factory=dict)  # how the last head was trained (its val EVAL fields)

    @property
    def net(self) -> nn.Module:
        return self.setup.accelerator.unwrap_model(self.model)

    @property
    def num_classes(self) -> int:
        return self.setup.recipe.num_classes

    @property
    def feature_dim(self) -> int:
        return self.net.feature_dim

    @property
    def device(self) -> torch.device:
        return self.setup.accelerator.device

    @property
    def train_counts(self) -> np.ndarray:
        """Training samples per class (the class prior, up to normalisation)."""
        return self.setup.index.split("train").class_counts()

    def features(self, split: str) -> Outputs:
        """Unaugmented features and labels of every sample of `split`, gathered over ranks."""
        if split not in self.cache:
            self.cache[split] = self.evaluator.outputs(self.model, split, features=True)
        return self.cache[split]

    def linear_head(self) -> Head:
        """A CPU copy of the model's head."""
        head = self.net.classifier
        out = head.like().cpu()
        out.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
        return out

    def train_head(self, head: nn.Module, spec: HeadTrainingSpec) -> nn.Module:
        """Train `head` class-balanced on the frozen representation (trainer.posthoc.head_training);
        select: best keeps the epoch with the best validation score, as classifier-balancing does."""
        self.stats = None
        keeper = _Best(self, head) if spec.select == "best" else None
        if spec.features == "cached":
            train = self.features("train")
            batches, per_epoch = feature_batches(head.cpu(), torch.from_numpy(train.features),
                                                 torch.from_numpy(train.labels), spec.batch_size, self.seed)
            train_head(head.to(self.device), _on(batches, self.device), spec.schedule(per_epoch),
                       momentum=spec.momentum, weight_decay=spec.weight_decay, after_epoch=keeper)
        else:
            self._train_on_stream(head, spec, keeper)
        epoch = keeper.restore() if keeper else spec.epochs - 1
        bn = spec.bn if spec.features == "stream" else "eval"
        self.trained = {"bn": bn, "select": spec.select, "epoch": epoch, "epochs": spec.epochs}
        return head.eval()

    def finish(self, classifier: nn.Module) -> nn.Module:
        """The fitted classifier, with the BatchNorm statistics its head was trained with."""
        return BatchNormed(classifier, self.stats) if self.stats else classifier

    def _train_on_stream(self, head: nn.Module, spec: HeadTrainingSpec, keeper: "_Best | None") -> None:
        """Augmented class-balanced batches through the frozen backbone; with bn: train its
        BatchNorm layers re-estimate their statistics (trainer.posthoc.batchnorm), which go to
        `self.stats` while the model gets its own back. Gradients of the head are averaged over
        ranks by hand: it is the only part that trains, and this keeps the run's prepared model
        out of it."""
        acc, streams, net = self.setup.accelerator, self.setup.streams, self.net
        batch = per_rank_batch(spec.batch_size, acc.num_processes, 1, key="posthoc batch_size")
        stream = streams.open("train", StreamSpec(batch, SamplingSpec(kind="class", classes=list(head.classes)),
                                                  self.stage.augment, self.setup.recipe.input_size, self.seed,
                                                  acc.process_index, acc.num_processes, spec.epochs))
        lookup = torch.full((self.num_classes,), -1, dtype=torch.long, device=acc.device)
        lookup[torch.tensor(head.classes, device=acc.device)] = torch.arange(len(head.classes), device=acc.device)

        def batches(epoch: int):
            stream.set_epoch(epoch)
            if spec.bn == "train":
                batchnorm.bn_only_train(net)   # again each epoch: validation leaves eval mode
            for images, labels, _ in streams.iterate(stream):
                with torch.no_grad(), acc.autocast():
                    feats = net.features(images.to(acc.device, non_blocking=True)).float()
                yield feats, lookup[labels.to(acc.device)]

        reduce = (lambda g: acc.reduce(g, reduction="mean")) if acc.num_processes > 1 else None

        def after_epoch(epoch: int) -> None:
            if spec.bn == "train" and reduce is not None:
                batchnorm.average_over_ranks(net, reduce)
            if keeper is not None:
                keeper(epoch)

        was_training, own = net.training, batchnorm.bn_state(net)
        net.eval()
        try:
            train_head(head, batches, spec.schedule(len(stream)), momentum=spec.momentum,
                       weight_decay=spec.weight_decay, reduce=reduce, after_epoch=after_epoch)
            if spec.bn == "train":
                self.stats = batchnorm.bn_state(net)
        finally:
            batchnorm.load_bn_state(net, own)
            net.train(was_training)


class _Best:
    """After each epoch: the head (and the BatchNorm statistics it sees) scored on validation;
    the best epoch's kept (the first of equal scores); `restore` puts it back."""

    def __init__(self, ctx: FitContext, head: nn.Module) -> None:
        self.ctx, self.head, self.score, self.epoch = ctx, head, None, -1
        self.state: dict = {}
        self.stats: dict | None = None

    def __call__(self, epoch: int) -> None:
        ctx = self.ctx
        scored = self.head.to_head() if hasattr(self.head, "to_head") else self.head
        metric = ctx.setup.cfg["eval"]["select_metric"]
        score = ctx.evaluator.evaluate(ctx.model, "val", FullLogits(scored, ctx.num_classes))[metric]
        if self.score is None or score > self.score:
            self.score, self.epoch = score, epoch
            self.state = {k: v.detach().clone() for k, v in self.head.state_dict().items()}
            self.stats = batchnorm.bn_state(ctx.net)

    def restore(self) -> int:
        """The best epoch's head (and statistics, where the head re-estimated them); its epoch."""
        self.head.load_state_dict(self.state)
        if self.ctx.stats is not None:
            self.ctx.stats = self.stats
        return self.epoch


def _on(batches, device: torch.device):
    """Cached feature batches moved to the head's device."""
    return lambda epoch: ((f.to(device), t.to(device)) for f, t in batches(epoch))


def fit_classifiers(setup: Setup, evaluator: Evaluator, model: nn.Module, stage: StageSpec) -> tuple[dict, dict]:
    """Fit the stage's classifiers; return (fitted {name: module}, {name: val EVAL})."""
    seed, kinds, cache = setup.cfg["seed"] * 1000 + stage.index, table(), {}
    fitted, evals = {}, {}
    # Fresh heads draw from the global RNG: fork it so that the run's random stream (and so
    # exact resume) does not depend on which classifiers ran.
    with torch.random.fork_rng(devices=[]):
        for k, name in enumerate(stage.classifiers):
            ctx = FitContext(setup, evaluator, model, stage, seed * 10 + k, cache)
            clf, extra = kinds[name].fit(ctx, setup.recipe.posthoc[name])
            fitted[name] = clf.to(setup.accelerator.device)   # scored on the model's features
            evals[name] = {**evaluator.evaluate(model, "val", fitted[name]), **extra}
    return fitted, evals


def save_classifiers(folder: Path, fitted: dict[str, nn.Module]) -> None:
    """RUN/stages/<i>-<name>/classifiers/<name>.pt (state dict) + classifiers.json (what loads them)."""
    if not fitted:
        return
    kinds, meta = table(), {}
    for name, clf in fitted.items():
        with atomic_path(folder / FOLDER / f"{name}.pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in clf.state_dict().items()}, tmp)
        meta[name] = {"kind": name, **kinds[name].card(clf)}
    write_json(folder / FOLDER / "classifiers.json", meta, indent=1)


def load_classifier(folder: Path, name: str, feature_dim: int, num_classes: int) -> nn.Module:
    """A saved classifier, ready to score features; TrainingError naming what is missing."""
    meta_path = folder / FOLDER / "classifiers.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    kinds = table()
    if name not in meta or name not in kinds:
        have = ", ".join(["model", *sorted(meta)])
        raise TrainingError(f"{folder}: no classifier {name!r} was fitted in this run (available: {have})")
    clf = kinds[name].empty(meta[name], feature_dim, num_classes)
    state = load_tensors(folder / FOLDER / f"{name}.pt")  # refused pickle, damaged, NaN: one line
    clf.load_state_dict(state)
    return clf.eval()
