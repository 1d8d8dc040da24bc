"""OOD scores and their metrics against hand computations."""
from __future__ import annotations

import math

import numpy as np
import pytest

from trainer.errors import ConfigError
from trainer.evaluate.ood import auroc, fpr_at_tpr, ood_metrics, ood_score


def test_scores_by_hand():
    z = np.array([[2.0, 0.0, -np.inf], [1.0, 1.0, 1.0]])
    assert ood_score(z, "max_logit").tolist() == [2.0, 1.0]
    np.testing.assert_allclose(ood_score(z, "energy"), [math.log(math.e ** 2 + 1), math.log(3 * math.e)])
    np.testing.assert_allclose(ood_score(z, "msp"), [math.e ** 2 / (math.e ** 2 + 1), 1 / 3])
    with pytest.raises(ConfigError, match="msp, energy, max_logit"):
        ood_score(z, "entropy")


def test_auroc_and_fpr95():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5                       # ties count half
    assert auroc([2, 0], [1]) == 0.5
    known = np.arange(100.0)                                  # threshold keeps 95: score >= 5
    assert fpr_at_tpr(known, np.array([4.0, 5.0, 50.0, -1.0])) == 0.5
    rng = np.random.default_rng(0)
    a, b = rng.normal(1, 1, 500), rng.normal(0, 1, 500)
    brute = np.mean(a[:, None] > b[None, :])
    assert auroc(a, b) == pytest.approx(brute, abs=1e-9)


def test_metrics_for_every_score():
    known = np.array([[5.0, 0.0], [4.0, 0.0], [6.0, 1.0]])
    unknown = np.array([[0.1, 0.0], [0.5, 0.4]])
    m = ood_metrics(known, unknown)
    assert set(m) == {"msp", "energy", "max_logit"}
    assert all(v["auroc"] == 1.0 and v["fpr95"] == 0.0 for v in m.values())
