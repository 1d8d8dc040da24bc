"""Post-hoc classifiers after a stage (Kang et al. 2020): cRT, NCM, τ-norm and LWS.

Each becomes a module mapping features to logits over all classes, evaluated like the model
(same TTA), saved in RUN/stages/<i>-<name>/classifiers/ and loadable by `evaluate`/`predict`.
- cRT: a fresh linear head trained class-balanced on the frozen representation.
- LWS: the stage's head with a learnable scale per class, trained the same way.
  Both train, as classifier-balancing does, through the frozen backbone on augmented batches
  (`features: stream`); `features: cached` trains on one unaugmented view, computed once.
- NCM: class means of the training features (classifier-balancing's centred, L2-normalised,
  Euclidean form by default).
- τ-norm: the stage's head with rows divided by ||w||^τ, τ chosen on validation.
Every rank fits the same classifiers from the same seed and gathered data; no broadcast needed.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from datasets.sampling import SamplingSpec
from datasets.stream_spec import StreamSpec
from shards.atomic import atomic_path, write_json
from trainer.posthoc.classifiers import LWS, NCM, crt_head, search_tau, tau_normalized_head, train_head_on_features
from trainer.errors import TrainingError
from trainer.evaluate.evaluator import Evaluator
from trainer.models.heads import Head
from trainer.preflight import Setup
from trainer.evaluate.scoring import FullLogits
from trainer.spec.resolve import HeadTrainingSpec, OptimSpec, StageSpec
from trainer.train.optim import lr_at, set_lr
from trainer.streams import per_rank_batch
from trainer.train.tensor_files import load_tensors

FOLDER = "classifiers"
KINDS = {"crt": "head", "tau_norm": "head", "lws": "head", "ncm": "ncm"}


def fit_classifiers(setup: Setup, evaluator: Evaluator, model: nn.Module, stage: StageSpec) -> tuple[dict, dict]:
    """Fit the stage's classifiers; return (fitted {name: module}, {name: val EVAL})."""
    net = setup.accelerator.unwrap_model(model)
    seed = setup.cfg["seed"] * 1000 + stage.index
    fitted, evals = {}, {}
    train_feats = None
    # Fresh heads draw from the global RNG: fork it so that the run's random stream (and so
    # exact resume) does not depend on which classifiers ran.
    with torch.random.fork_rng(devices=[]):
        for k, name in enumerate(stage.classifiers):
            extra = {}
            if name in ("crt", "lws"):
                spec = setup.recipe.head_training[name]
                if spec.features == "cached" and train_feats is None:
                    train_feats = evaluator.outputs(model, "train", features=True)
                fitted[name] = _fit_head(name, setup, net, stage, spec, train_feats, seed * 10 + k)
            elif name == "ncm":
                train_feats = train_feats or evaluator.outputs(model, "train", features=True)
                fitted[name] = NCM(net.feature_dim, setup.recipe.num_classes, setup.recipe.ncm_metric).fit(
                    torch.from_numpy(train_feats.features), torch.from_numpy(train_feats.labels))
            elif name == "tau_norm":
                fitted[name], extra = _fit_tau(setup, evaluator, model, net)
            fitted[name] = fitted[name].to(setup.accelerator.device)   # scored on the model's features
            evals[name] = {**evaluator.evaluate(model, "val", fitted[name]), **extra}
    return fitted, evals


def _fit_tau(setup: Setup, evaluator: Evaluator, model, net) -> tuple[nn.Module, dict]:
    """τ with the best balanced accuracy on validation (one view), the first of ties."""
    val = evaluator.outputs(model, "val", features=True)
    head = _cpu_head(net.classifier)
    tau, curve = search_tau(torch.from_numpy(val.features), torch.from_numpy(val.labels),
                            head.weight.detach(), None, taus=setup.recipe.taus, classes=head.classes)
    return FullLogits(tau_normalized_head(head, tau), setup.recipe.num_classes), {"tau": tau, "tau_curve": curve}


def _fit_head(name: str, setup: Setup, net, stage: StageSpec, spec: HeadTrainingSpec, feats, seed: int) -> nn.Module:
    n = setup.recipe.num_classes
    if name == "crt":
        torch.manual_seed(seed)
        head = Head(net.feature_dim, n).to(setup.accelerator.device)
    else:
        head = LWS(_cpu_head(net.classifier)).to(setup.accelerator.device)
    if spec.features == "cached":
        head = head.cpu()
        train_head_on_features(head, torch.from_numpy(feats.features), torch.from_numpy(feats.labels),
                               epochs=spec.epochs, lr=spec.lr, batch_size=spec.batch_size, seed=seed,
                               momentum=spec.momentum, weight_decay=spec.weight_decay)
    else:
        train_head_on_stream(setup, net, head, stage, spec, seed)
    head = head.to_head() if isinstance(head, LWS) else head
    return FullLogits(head.eval().cpu(), n).to(setup.accelerator.device)


def train_head_on_stream(setup: Setup, net: nn.Module, head: nn.Module, stage: StageSpec,
                         spec: HeadTrainingSpec, seed: int) -> nn.Module:
    """SGD (momentum, cosine) with cross-entropy on class-balanced, augmented batches through the
    frozen backbone (eval mode). Gradients of the head are averaged over ranks by hand: it is the
    only part that trains, and this keeps the run's prepared model out of it."""
    acc = setup.accelerator
    sampling = SamplingSpec(kind="class", classes=list(head.classes))
    batch = per_rank_batch(spec.batch_size, acc.num_processes, 1, key="posthoc batch_size")
    stream = setup.streams.open("train", StreamSpec(batch, sampling, stage.augment, setup.recipe.input_size,
                                                    seed, acc.process_index, acc.num_processes, spec.epochs))
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)
    sched = OptimSpec(lr=spec.lr, momentum=spec.momentum, nesterov=False, weight_decay=spec.weight_decay,
                      warmup_epochs=0.0, schedule="cosine", min_lr=0.0, grad_accum=1)
    lookup = torch.full((setup.recipe.num_classes,), -1, dtype=torch.long, device=acc.device)
    lookup[torch.tensor(head.classes, device=acc.device)] = torch.arange(len(head.classes), device=acc.device)
    was_training = net.training
    net.eval()
    step, total = 0, spec.epochs * len(stream)
    for epoch in range(spec.epochs):
        stream.set_epoch(epoch)
        for images, labels, _ in setup.streams.iterate(stream):
            with torch.no_grad(), acc.autocast():
                feats = net.features(images.to(acc.device, non_blocking=True)).float()
            loss = F.cross_entropy(head(feats), lookup[labels.to(acc.device)])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            for p in params if acc.num_processes > 1 else []:
                p.grad = acc.reduce(p.grad, reduction="mean")
            set_lr(opt, lr_at(step, total, 0, sched))
            opt.step()
            step += 1
    net.train(was_training)
    return head


def _cpu_head(head: Head) -> Head:
    out = Head(head.in_features, head.classes, head.normalized)
    out.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
    return out


# ---------------------------------------------------------------- saved with the run
def save_classifiers(folder: Path, fitted: dict[str, nn.Module]) -> None:
    """RUN/stages/<i>-<name>/classifiers/<name>.pt (state dict) + classifiers.json (kinds)."""
    if not fitted:
        return
    meta = {}
    for name, clf in fitted.items():
        with atomic_path(folder / FOLDER / f"{name}.pt") as tmp:
            torch.save({k: v.detach().cpu() for k, v in clf.state_dict().items()}, tmp)
        meta[name] = {"kind": KINDS[name], **({"metric": clf.metric} if isinstance(clf, NCM) else
                                              {"normalized": clf.head.normalized})}
    write_json(folder / FOLDER / "classifiers.json", meta, indent=1)


def load_classifier(folder: Path, name: str, feature_dim: int, num_classes: int) -> nn.Module:
    """A saved classifier, ready to score features; TrainingError naming what is missing."""
    meta_path = folder / FOLDER / "classifiers.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if name not in meta:
        have = ", ".join(["model", *sorted(meta)])
        raise TrainingError(f"{folder}: no classifier {name!r} was fitted in this run (available: {have})")
    if meta[name]["kind"] == "ncm":
        clf = NCM(feature_dim, num_classes, meta[name]["metric"])
    else:
        clf = FullLogits(Head(feature_dim, num_classes, meta[name].get("normalized", False)), num_classes)
    state = load_tensors(folder / FOLDER / f"{name}.pt")  # refused pickle, damaged, NaN: one line
    clf.load_state_dict(state)
    return clf.eval()

