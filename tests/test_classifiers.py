"""Post-hoc classifiers against hand-computed values: τ-norm, NCM, LWS, cRT, τ search."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.posthoc.classifiers.lws import LWS
from trainer.posthoc.classifiers.ncm import NCM
from trainer.posthoc.classifiers.tau_norm import balanced_accuracy, search_tau, tau_normalize, tau_normalized_head
from trainer.posthoc.head_training import _sample_probs, train_head_on_features
from trainer.errors import ConfigError
from trainer.models.heads import Head


def test_tau_normalize_2x2():
    w = torch.tensor([[3.0, 4.0], [0.0, 2.0]])  # row norms 5 and 2
    torch.testing.assert_close(tau_normalize(w, 1.0), torch.tensor([[0.6, 0.8], [0.0, 1.0]]))
    s5, s2 = math.sqrt(5), math.sqrt(2)
    torch.testing.assert_close(tau_normalize(w, 0.5), torch.tensor([[3 / s5, 4 / s5], [0.0, 2 / s2]]))
    assert torch.equal(tau_normalize(w, 0.0), w)


def test_tau_norm_and_lws_on_a_cosine_head():
    head = Head(3, [0, 2], normalized=True)
    out = tau_normalized_head(head, 0.5)
    assert out.normalized and out.bias is None
    x = torch.randn(4, 3)
    torch.testing.assert_close(out(x), head(x))  # unit rows already: τ changes nothing
    with pytest.raises(ConfigError, match="linear head"):
        LWS(head)


def test_tau_normalized_head_drops_bias_by_default():
    head = Head(2, [1, 3])
    out = tau_normalized_head(head, 1.0)
    assert out.classes == [1, 3]
    torch.testing.assert_close(out.weight.norm(dim=1), torch.ones(2))
    assert torch.equal(out.bias, torch.zeros(2))
    assert torch.equal(tau_normalized_head(head, 0.0, keep_bias=True).bias, head.bias)


def crafted_tau_case():
    # Class 0's row is 10× longer, so at τ = 0 class-1 points (0.3, 1) score [3, 1] → wrong.
    # Class-1 points are right for τ > 1 - log10(3.33) ≈ 0.477; class-0 points (1, 0.5) stay
    # right for τ < 1 + log10(2) ≈ 1.301. So τ ∈ {0.5, ..., 1.3} score 1, the first is 0.5.
    weight = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[1.0, 0.5], [1.0, 0.5], [0.3, 1.0]])
    labels = torch.tensor([0, 0, 1])
    return feats, labels, weight


def test_search_tau_picks_the_known_best():
    feats, labels, weight = crafted_tau_case()
    best, curve = search_tau(feats, labels, weight, None)
    assert best == 0.5
    assert len(curve) == 21
    scores = dict(curve)
    assert scores[0.0] == 0.5 and scores[0.4] == 0.5 and scores[1.3] == 1.0 and scores[1.4] == 0.5
    assert all(scores[round(t, 1)] == 1.0 for t in np.arange(0.5, 1.31, 0.1))


def test_search_tau_maps_rows_to_classes():
    feats, labels, weight = crafted_tau_case()
    best, _ = search_tau(feats, labels + 4, weight, None, taus=[0.0, 1.0], classes=[4, 5])
    assert best == 1.0


def test_balanced_accuracy_is_mean_recall():
    preds = torch.tensor([0, 0, 0, 1, 1])
    labels = torch.tensor([0, 0, 1, 1, 1])
    assert balanced_accuracy(preds, labels) == pytest.approx((1.0 + 2 / 3) / 2)


def test_ncm_cosine_and_euclidean_disagree_on_crafted_point():
    feats = torch.tensor([[9.0, 0.0], [11.0, 0.0], [1.0, 0.0], [1.0, 2.0]])
    labels = torch.tensor([0, 0, 1, 1])  # means (10, 0) and (1, 1)
    point = torch.tensor([[3.0, 0.5]])
    cos = NCM(2, 2, metric="cosine").fit(feats, labels)
    euc = NCM(2, 2, metric="euclidean").fit(feats, labels)
    torch.testing.assert_close(cos.means, torch.tensor([[10.0, 0.0], [1.0, 1.0]]))
    # cosine: 3/√9.25 = 0.986394 vs 3.5/(√9.25·√2) = 0.813733 → class 0
    torch.testing.assert_close(cos(point), torch.tensor([[0.986394, 0.813733]]))
    # euclidean, squared as the reference's l2_similarity: -(49 + 0.25) vs -(4 + 0.25) → class 1
    # (was -√ of these before; the argmax is the same)
    torch.testing.assert_close(euc(point), torch.tensor([[-49.25, -4.25]]))
    assert cos(point).argmax().item() == 0 and euc(point).argmax().item() == 1


def test_ncm_l2_centred_by_hand():
    # Training mean (3, 2). Centred: (3,-2), (1,-2), (-3,-2), (-1,6); each L2-normalised:
    #   (3,-2)/√13, (1,-2)/√5, (-3,-2)/√13, (-1,6)/√37
    feats = torch.tensor([[6.0, 0.0], [4.0, 0.0], [0.0, 0.0], [2.0, 8.0]])
    labels = torch.tensor([0, 0, 1, 1])
    ncm = NCM(2, 3).fit(feats, labels)
    assert ncm.metric == "l2_centred"
    r13, r5, r37 = math.sqrt(13), math.sqrt(5), math.sqrt(37)
    c0 = torch.tensor([(3 / r13 + 1 / r5) / 2, (-2 / r13 - 2 / r5) / 2])
    c1 = torch.tensor([(-3 / r13 - 1 / r37) / 2, (-2 / r13 + 6 / r37) / 2])
    torch.testing.assert_close(ncm.feature_mean, torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(ncm.means[:2], torch.stack([c0, c1]))
    # Query (7, 2): centred (4, 0), normalised (1, 0); score -||(1, 0) - c_j||²
    x = torch.tensor([1.0, 0.0])
    want = torch.tensor([[-((x - c0) ** 2).sum(), -((x - c1) ** 2).sum(), float("-inf")]])
    torch.testing.assert_close(ncm(torch.tensor([[7.0, 2.0]])), want)
    # The query's scale does not matter after centring and normalising.
    assert ncm(torch.tensor([[3.0 + 40.0, 2.0]])).argmax().item() == 0


def test_ncm_state_dict_loads_into_a_fresh_ncm():
    feats, labels = separable_features()
    ncm = NCM(4, 5).fit(feats, labels)
    fresh = NCM(4, 5, metric="cosine")       # the metric is state too, so it is adopted
    fresh.load_state_dict(ncm.state_dict())
    assert fresh.metric == "l2_centred" and fresh.classes == [0, 1, 2, 3, 4]
    assert torch.equal(fresh(feats), ncm(feats))
    assert (fresh(feats)[:, 3:] == float("-inf")).all()
    assert balanced_accuracy(ncm(feats).argmax(1), labels) > 0.95


def test_ncm_absent_class_scores_minus_inf_and_errors():
    ncm = NCM(2, 3, metric="euclidean").fit(torch.tensor([[0.0, 1.0], [2.0, 2.0]]), torch.tensor([0, 2]))
    assert ncm(torch.zeros(1, 2))[0, 1] == float("-inf")
    with pytest.raises(ConfigError, match="l2_centred, cosine, euclidean"):
        NCM(2, 3, metric="manhattan")
    with pytest.raises(ConfigError, match="fit"):
        NCM(2, 3)(torch.zeros(1, 2))
    with pytest.raises(ConfigError, match="labels must lie in 0..2"):
        NCM(2, 3).fit(torch.zeros(1, 2), torch.tensor([3]))
    with pytest.raises(ConfigError, match="features"):
        NCM(2, 3).fit(torch.zeros(1, 4), torch.tensor([0]))


def lws_case():
    # Identity weights: class 1's points (1, 0.8) score [1, 0.8] and are all predicted as class 0.
    head = Head(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    feats = torch.tensor([[1.0, 0.2]] * 20 + [[1.0, 0.8]] * 4)
    labels = torch.tensor([0] * 20 + [1] * 4)
    return head, feats, labels


def test_lws_learns_to_boost_the_under_scored_class():
    head, feats, labels = lws_case()
    lws = LWS(head)
    assert torch.equal(lws.scales, torch.ones(2))
    assert balanced_accuracy(lws(feats).argmax(1), labels) == 0.5
    weight, bias = lws.weight.clone(), lws.bias.clone()
    train_head_on_features(lws, feats, labels, epochs=15, lr=0.5, batch_size=8, seed=0)
    assert torch.equal(lws.weight, weight) and torch.equal(lws.bias, bias)  # only scales train
    assert lws.scales[1] > lws.scales[0]
    assert balanced_accuracy(lws(feats).argmax(1), labels) == 1.0
    with torch.no_grad():
        torch.testing.assert_close(lws.to_head()(feats), lws(feats))


def separable_features(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 4.0, 0]])
    labels = torch.tensor([0] * 200 + [1] * 20 + [2] * 5)
    return centres[labels] + 0.5 * torch.randn(len(labels), 4, generator=gen), labels


def crt_head(feats: torch.Tensor, labels: torch.Tensor, seed: int) -> Head:
    """cRT on cached features: a fresh head (seeded) trained class-balanced."""
    torch.manual_seed(seed)
    return train_head_on_features(Head(feats.shape[1], 3), feats, labels, epochs=5, lr=0.1, batch_size=32, seed=seed)


def test_crt_on_separable_features_reaches_100_percent_and_is_seeded():
    feats, labels = separable_features()
    head = crt_head(feats, labels, seed=3)
    assert head.classes == [0, 1, 2]
    assert (head(feats).argmax(1) == labels).all()
    again = crt_head(feats, labels, seed=3)
    assert torch.equal(head.weight, again.weight)


def test_train_head_maps_labels_to_subset_head_columns():
    feats, labels = separable_features()
    keep = labels > 0
    torch.manual_seed(0)  # the head's init: unseeded, ~1 run in 20 missed a sample after 5 epochs
    head = Head(4, [1, 2])
    train_head_on_features(head, feats[keep], labels[keep], epochs=5, lr=0.1, batch_size=16)
    preds = torch.tensor(head.classes)[head(feats[keep]).argmax(1)]
    assert torch.equal(preds, labels[keep])
    # Samples of classes outside the head are left out: the same data without them gives the
    # same head.
    a, b = Head(4, [1, 2]), Head(4, [1, 2])
    b.load_state_dict(a.state_dict())
    train_head_on_features(a, feats, labels, epochs=2, lr=0.1, batch_size=16, seed=1)
    train_head_on_features(b, feats[keep], labels[keep], epochs=2, lr=0.1, batch_size=16, seed=1)
    assert torch.equal(a.weight, b.weight)
    with pytest.raises(ConfigError, match="samples"):
        train_head_on_features(a, feats[~keep], labels[~keep], epochs=1, lr=0.1, batch_size=16)


def test_sampling_is_class_balanced_by_default_and_follows_weights():
    targets = torch.tensor([0] * 90 + [1] * 10)
    p = _sample_probs(targets, 2, None, [0, 1])
    torch.testing.assert_close(p[targets == 0].sum() / p.sum(), torch.tensor(0.5))
    p = _sample_probs(targets, 2, np.array([3.0, 1.0]), [0, 1])
    torch.testing.assert_close(p[targets == 0].sum() / p.sum(), torch.tensor(0.75))
    with pytest.raises(ConfigError, match="weight 0"):
        _sample_probs(targets, 2, np.array([0.0, 0.0]), [0, 1])
