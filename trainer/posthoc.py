"""Post-hoc classifiers after a stage (cRT, NCM, τ-norm, LWS) on frozen features.

Features are computed once (eval mode, no augmentation, one view) for train and val, gathered
over ranks, and every rank fits the same classifiers from the same seed, so no broadcast is
needed. τ is chosen on validation only; test reuses the fitted classifiers.
"""
from __future__ import annotations

import numpy as np
import torch

from trainer.classifiers import LWS, NCM, crt_head, search_tau, tau_normalized_head, train_head_on_features

HEAD_EPOCHS, HEAD_LR, HEAD_BATCH = 10, 0.1, 512


def _full(logits: torch.Tensor, classes: list[int], num_classes: int) -> np.ndarray:
    full = logits.new_full((logits.shape[0], num_classes), float("-inf"))
    full[:, torch.tensor(classes, device=logits.device)] = logits
    return full.cpu().numpy()


def _predict(fitted, features: torch.Tensor, num_classes: int) -> np.ndarray:
    with torch.no_grad():
        if isinstance(fitted, NCM):
            return fitted.logits(features).cpu().numpy()
        return _full(fitted(features).float(), fitted.classes, num_classes)


def fit_classifiers(run, model, stage_index: int) -> tuple[dict, dict]:
    """Fit the stage's classifiers; return (fitted, {name: val EVAL})."""
    from trainer.run import eval_dict, split_outputs

    names = run.cfg["stages"][stage_index]["classifiers"]
    n = run.num_classes
    tr = split_outputs(run, model, "train", features=True)
    va = split_outputs(run, model, "val", features=True)
    ftr, ltr = torch.from_numpy(tr.features), torch.from_numpy(tr.labels)
    fva, lva = torch.from_numpy(va.features), torch.from_numpy(va.labels)
    head = run.model.classifier
    cpu_head = type(head)(head.in_features, head.classes)
    cpu_head.load_state_dict({k: v.detach().cpu() for k, v in head.state_dict().items()})
    seed = run.cfg["seed"] * 1000 + stage_index
    fitted, evals = {}, {}
    # Fresh heads and sampling draw from the global RNG: fork it so that the run's random
    # stream (and so exact resume) does not depend on which classifiers ran.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for name in names:
            if name == "crt":
                fitted[name] = crt_head(ftr, ltr, n, epochs=HEAD_EPOCHS, lr=HEAD_LR, batch_size=HEAD_BATCH, seed=seed)
            elif name == "ncm":
                fitted[name] = NCM("cosine").fit(ftr, ltr, n)
            elif name == "tau_norm":
                tau, _ = search_tau(fva, lva, cpu_head.weight.detach(), None, classes=cpu_head.classes)
                fitted[name] = tau_normalized_head(cpu_head, tau)
            elif name == "lws":
                lws = LWS(cpu_head)
                train_head_on_features(lws, ftr, ltr, epochs=HEAD_EPOCHS, lr=HEAD_LR, batch_size=HEAD_BATCH,
                                       seed=seed, weight_decay=0.0)
                fitted[name] = lws.to_head()
            ev = eval_dict(run, _predict(fitted[name], fva, n), va.labels)
            if name == "tau_norm":
                ev["tau"] = tau
            evals[name] = ev
    return fitted, evals


def apply_classifiers(run, model, split: str, fitted: dict) -> dict:
    """{name: EVAL} of already fitted classifiers on another split (test)."""
    from trainer.run import eval_dict, split_outputs

    out = split_outputs(run, model, split, features=True)
    feats = torch.from_numpy(out.features)
    result = {}
    for name, clf in fitted.items():
        result[name] = eval_dict(run, _predict(clf, feats, run.num_classes), out.labels)
    return result
