"""Post-hoc logit adjustment: logits - τ·log prior, τ chosen on validation, saved and loaded."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from trainer.errors import ConfigError
from trainer.models.heads import Head
from trainer.posthoc.classifiers.logit_adjust import LogitAdjust, LogitAdjusted
from trainer.posthoc.fit import load_classifier, save_classifiers
from trainer.posthoc.registry import table

COUNTS = np.array([90, 10])


def biased_head() -> Head:
    """Scores class 0 higher by log(9) on features that are really balanced between the classes."""
    head = Head(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.copy_(torch.tensor([float(np.log(9.0)), 0.0]))
    return head


def context(head: Head, feats: np.ndarray, labels: np.ndarray):
    val = SimpleNamespace(features=feats.astype(np.float32), labels=labels)
    return SimpleNamespace(features=lambda split: val, linear_head=lambda: head, num_classes=2, train_counts=COUNTS)


def val_set():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    feats = np.eye(2)[labels] * 2.0 + rng.normal(0, 0.5, (100, 2))
    return feats, labels


def test_registered_with_options_and_settings():
    kind = table()["logit_adjust"]
    assert kind is LogitAdjust
    taus = kind.settings({"max": 1.0, "step": 0.5}, COUNTS)
    assert taus == (0.0, 0.5, 1.0)
    with pytest.raises(ConfigError, match="step must be > 0"):
        kind.settings({"max": 1.0, "step": 0.0}, COUNTS)


def test_subtracts_tau_log_prior_and_picks_tau_on_validation():
    feats, labels = val_set()
    clf, extra = LogitAdjust.fit(context(biased_head(), feats, labels), LogitAdjust.settings({}, COUNTS))
    assert extra["tau"] > 0 and len(extra["tau_curve"]) == 21
    scores = dict(extra["tau_curve"])
    assert scores[extra["tau"]] == max(scores.values()) > scores[0.0]
    x = torch.from_numpy(feats[:3].astype(np.float32))
    expected = biased_head()(x) - extra["tau"] * torch.log(torch.tensor([0.9, 0.1]))
    torch.testing.assert_close(clf(x), expected)


def test_saved_and_loaded_like_every_classifier(tmp_path):
    feats, labels = val_set()
    clf, _ = LogitAdjust.fit(context(biased_head(), feats, labels), (0.0, 1.0))
    save_classifiers(tmp_path, {"logit_adjust": clf})
    back = load_classifier(tmp_path, "logit_adjust", feature_dim=2, num_classes=2)
    assert isinstance(back, LogitAdjusted)
    x = torch.randn(4, 2)
    torch.testing.assert_close(back(x), clf(x))


def test_a_class_without_training_samples_is_not_boosted():
    clf = LogitAdjusted(Head(2, 3), 3).set_prior(np.array([5, 5, 0]), 1.0)
    assert torch.isfinite(clf.log_prior).all() and clf.log_prior[2] == 0
