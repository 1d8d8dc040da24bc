"""BatchNorm statistics re-estimated by a post-hoc head (cRT/LWS bn: train) or a frozen-backbone
stage (bn: train): only BatchNorm layers switch mode, the classifier carries its statistics,
scoring swaps them in for that classifier alone."""
from __future__ import annotations

import torch
from torch import nn

from trainer.evaluate.scoring import score_views
from trainer.models import build_model
from trainer.models.heads import FullLogits, Head
from trainer.posthoc import batchnorm
from trainer.posthoc.classifiers.crt import CRT
from trainer.train.transition import set_train_mode


def shake() -> nn.Module:
    torch.manual_seed(0)
    return build_model({"name": "shake_shake", "depth": 8, "width": 4}, 4)


def test_bn_only_train_reestimates_statistics_without_shaking_the_branches():
    net, x = shake().train(), torch.randn(8, 1, 16, 16)
    before = batchnorm.bn_state(net)
    with batchnorm.batchnorm_train(net):
        assert all(m.training == isinstance(m, batchnorm.BN) for m in net.modules())
        with torch.no_grad():
            a, b = net.features(x), net.features(x)
    torch.testing.assert_close(a, b)     # Shake-Shake's random mix would make these differ
    assert all(m.training for m in net.modules())   # modes restored
    after = batchnorm.bn_state(net)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_using_stats_swaps_and_restores():
    net, x = shake().eval(), torch.randn(4, 1, 16, 16)
    own = batchnorm.bn_state(net)
    other = {k: v + 1.0 if k.endswith("mean") else v * 2.0 for k, v in own.items()}
    with torch.no_grad():
        plain = net.features(x)
        with batchnorm.using_stats(net, other):
            swapped = net.features(x)
            assert all(torch.equal(v, batchnorm.bn_state(net)[k]) for k, v in other.items())
    assert not torch.allclose(plain, swapped)
    assert all(torch.equal(v, batchnorm.bn_state(net)[k]) for k, v in own.items())


def test_score_views_gives_a_batchnormed_classifier_its_own_pass():
    net, x = shake().eval(), torch.randn(4, 1, 16, 16)
    own = batchnorm.bn_state(net)
    other = {k: v + 0.5 if k.endswith("mean") else v * 3.0 for k, v in own.items()}
    head = FullLogits(Head(net.feature_dim, 4), 4)
    wrapped = batchnorm.BatchNormed(head, other)
    with torch.no_grad():
        plain, carried = score_views(net, [head, wrapped], x, ["identity"])
        with batchnorm.using_stats(net, other):
            expected = head(net.features(x))
        torch.testing.assert_close(plain, head(net.features(x)))
    torch.testing.assert_close(carried, expected)


def test_a_batchnormed_head_classifier_saves_and_loads_with_its_statistics():
    net = shake()
    head = FullLogits(Head(net.feature_dim, 4), 4)
    clf = batchnorm.BatchNormed(head, batchnorm.bn_state(net))
    card = CRT.card(clf)
    assert card["normalized"] is False and len(card["batchnorm"]) == len(clf.names)
    empty = CRT.empty(card, net.feature_dim, 4)
    empty.load_state_dict(clf.state_dict())
    assert empty.names == clf.names
    assert all(torch.equal(empty.stats[k], v) for k, v in clf.stats.items())
    plain = CRT.empty(CRT.card(head), net.feature_dim, 4)
    assert batchnorm.stats_of(plain) is None


def test_a_frozen_stage_with_bn_train_moves_only_the_statistics():
    net, x = shake(), torch.randn(8, 1, 16, 16)
    for bn, moves in (("eval", False), ("train", True)):
        set_train_mode(net, "classifier", bn)
        bns = [m for m in net.modules() if isinstance(m, batchnorm.BN)]
        assert net.classifier.training and all(m.training == moves for m in bns)
        assert not any(m.training for m in net.modules() if not isinstance(m, batchnorm.BN) and m is not net.classifier)
        before = batchnorm.bn_state(net)
        with torch.no_grad():
            net(x)
        after = batchnorm.bn_state(net)
        assert any(not torch.equal(before[k], after[k]) for k in before) == moves
