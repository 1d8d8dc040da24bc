"""Loss formulas against small worked examples, DRW timing, -inf logits, config errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.errors import ConfigError
from trainer.losses import build_loss, loss_weights, ldam_margins

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2], [1.0, 1.0, 0.0], [-0.5, 2.5, 0.0]])
TARGET = torch.tensor([0, 2, 1, 1])


def test_cb_weights_worked_example():
    # counts [100, 10], β = 0.99: effective numbers (1 - β^n)/(1 - β)
    #   E_100 = (1 - 0.366032)/0.01 = 63.3968,  E_10 = (1 - 0.904382)/0.01 = 9.56179
    #   1/E = [0.0157737, 0.1045828], normalised to sum 2 → [0.262117, 1.737883]
    np.testing.assert_allclose(loss_weights([100, 10], "cb", 0.99), [0.262117, 1.737883], rtol=1e-5)


def test_inverse_and_sqrt_inverse_weights_and_empty_classes():
    np.testing.assert_allclose(loss_weights([1, 3], "inverse"), [1.5, 0.5])
    np.testing.assert_allclose(loss_weights([1, 4], "sqrt_inverse"), [4 / 3, 2 / 3])
    np.testing.assert_allclose(loss_weights([0, 1, 3], "inverse"), [0.0, 1.5, 0.5])
    np.testing.assert_allclose(loss_weights([5, 0, 7], "none"), [1.0, 0.0, 1.0])


def test_ce_equals_torch_cross_entropy_and_set_epoch_exists():
    loss = build_loss({"name": "ce"}, [10, 5, 1])
    loss.set_epoch(3)
    torch.testing.assert_close(loss(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET))


CB_LOGITS, CB_TARGET = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.tensor([0, 1, 1])
CB_W = [0.262117, 1.737883]  # counts [100, 10], β = 0.99 (worked example above)
CB_CE = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(-1)), math.log(1 + math.exp(2))]


def test_cb_loss_default_is_cui_batch_mean():
    # Cui et al.'s reference: Σ w_y·l / B (was Σ w_y·l / Σ w_y before `normalize` existed)
    expected = (CB_W[0] * CB_CE[0] + CB_W[1] * CB_CE[1] + CB_W[1] * CB_CE[2]) / 3
    got = build_loss({"name": "cb", "beta": 0.99}, [100, 10])(CB_LOGITS, CB_TARGET)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    same = build_loss({"name": "cb", "beta": 0.99, "normalize": "batch"}, [100, 10])(CB_LOGITS, CB_TARGET)
    assert same.item() == got.item()


def test_cb_loss_weight_normalisation_is_the_weighted_mean():
    expected = (CB_W[0] * CB_CE[0] + CB_W[1] * CB_CE[1] + CB_W[1] * CB_CE[2]) / (CB_W[0] + 2 * CB_W[1])
    got = build_loss({"name": "cb", "beta": 0.99, "normalize": "weight"}, [100, 10])(CB_LOGITS, CB_TARGET)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_reweight_inverse_matches_torch_weighted_ce_in_both_normalisations():
    counts = [10, 5, 1]
    w = torch.tensor(loss_weights(counts, "inverse"), dtype=torch.float32)
    got = build_loss({"name": "ce", "reweight": "inverse", "normalize": "weight"}, counts)(LOGITS, TARGET)
    torch.testing.assert_close(got, F.cross_entropy(LOGITS, TARGET, weight=w))
    got = build_loss({"name": "ce", "reweight": "inverse"}, counts)(LOGITS, TARGET)
    torch.testing.assert_close(got, F.cross_entropy(LOGITS, TARGET, weight=w, reduction="sum") / len(TARGET))


@pytest.mark.parametrize("normalize", ["batch", "weight"])
def test_equal_weights_give_plain_cross_entropy(normalize):
    # inverse weights of equal counts are all 1
    for cfg, counts in [({"name": "ce"}, [10, 5, 1]), ({"name": "ce", "reweight": "inverse"}, [4, 4, 4])]:
        got = build_loss({**cfg, "normalize": normalize}, counts)(LOGITS, TARGET)
        torch.testing.assert_close(got, F.cross_entropy(LOGITS, TARGET))


def test_reduce_sum_divides_by_the_reduced_weight_total():
    # Two ranks with halves of the batch: with reduce_sum = mean of the rank totals, the mean of
    # the two rank losses equals the single-process loss.
    counts = [10, 5, 1]
    full = build_loss({"name": "ce", "reweight": "inverse", "normalize": "weight"}, counts)(LOGITS, TARGET)
    w = torch.tensor(loss_weights(counts, "inverse"), dtype=torch.float32)
    totals = [w[TARGET[:2]].sum(), w[TARGET[2:]].sum()]
    mean_total = (totals[0] + totals[1]) / 2
    seen = []

    def all_reduce_mean(t):
        seen.append(t.clone())
        return mean_total

    loss = build_loss({"name": "ce", "reweight": "inverse", "normalize": "weight"}, counts,
                      reduce_sum=all_reduce_mean)
    halves = [loss(LOGITS[:2], TARGET[:2]), loss(LOGITS[2:], TARGET[2:])]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)
    torch.testing.assert_close(torch.stack(seen), torch.stack(totals))
    # "batch" ignores reduce_sum
    batch = build_loss({"name": "ce", "reweight": "inverse"}, counts, reduce_sum=lambda t: t * 0)
    assert torch.isfinite(batch(LOGITS, TARGET))


def test_default_normalisation_follows_each_reference():
    def normalize(cfg):
        return build_loss(cfg, [10, 5, 1]).normalize
    assert normalize({"name": "cb"}) == "batch"                      # Cui et al.
    assert normalize({"name": "focal", "reweight": "cb"}) == "batch"
    assert normalize({"name": "ldam"}) == "weight"                   # kaidic/LDAM-DRW
    assert normalize({"name": "ce", "drw_epoch": 3}) == "weight"     # CE-DRW, same reference
    assert normalize({"name": "ldam", "normalize": "batch"}) == "batch"


def test_focal_gamma_zero_equals_ce_and_gamma_two_worked_example():
    counts = [10, 5, 1]
    focal0 = build_loss({"name": "focal", "gamma": 0.0}, counts)
    torch.testing.assert_close(focal0(LOGITS, TARGET), F.cross_entropy(LOGITS, TARGET))
    # p_t = 0.8: (1 - 0.8)^2 · (-ln 0.8) = 0.04 · 0.2231436 = 0.00892574
    logits = torch.tensor([[math.log(0.8), math.log(0.2)]])
    got = build_loss({"name": "focal", "gamma": 2.0}, [1, 1])(logits, torch.tensor([0]))
    assert got.item() == pytest.approx(0.00892574, rel=1e-5)


def test_cb_focal_uses_cb_weights():
    counts = [100, 10]
    plain = build_loss({"name": "focal", "gamma": 0.0, "reweight": "cb", "beta": 0.99}, counts)
    cb = build_loss({"name": "cb", "beta": 0.99}, counts)
    logits, target = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]]), torch.tensor([0, 1, 1])
    torch.testing.assert_close(plain(logits, target), cb(logits, target))


def test_ldam_margins_scale_as_n_to_minus_quarter():
    # n^-1/4 of [10000, 16, 1] = [0.1, 0.5, 1]; the rarest class gets max_margin = 0.5
    np.testing.assert_allclose(ldam_margins([10000, 16, 1], 0.5), [0.05, 0.25, 0.5])
    np.testing.assert_allclose(ldam_margins([0, 16, 1], 0.5), [0.0, 0.25, 0.5])


def test_ldam_loss_subtracts_margin_from_target_then_scales():
    counts = [10000, 16, 1]
    loss = build_loss({"name": "ldam", "max_margin": 0.5, "scale": 30.0}, counts)
    logits = torch.tensor([[0.3, 0.1, 0.0], [0.0, 0.2, 0.1]])
    target = torch.tensor([0, 2])
    adjusted = torch.tensor([[0.3 - 0.05, 0.1, 0.0], [0.0, 0.2, 0.1 - 0.5]]) * 30
    torch.testing.assert_close(loss(logits, target), F.cross_entropy(adjusted, target))


def test_ldam_drw_matches_the_reference_formula():
    # kaidic/LDAM-DRW: m = n^-1/4 scaled to max_m = 0.5, s = 30, DRW weights from β = 0.9999
    # normalised to sum to C, reduced by F.cross_entropy(weight=...); before DRW all weights 1.
    counts = np.array([5000.0, 500.0, 50.0])
    m = counts ** -0.25 * (0.5 / counts.min() ** -0.25)
    w = (1 - 0.9999) / (1 - 0.9999 ** counts)
    w = torch.tensor(w / w.sum() * 3, dtype=torch.float32)
    z = torch.tensor([[0.3, 0.1, -0.2], [0.0, 0.2, 0.1], [0.5, -0.5, 0.4], [0.1, 0.9, 0.0]])
    y = torch.tensor([0, 2, 2, 1])
    adjusted = 30 * (z - torch.tensor(m, dtype=torch.float32)[y][:, None] * F.one_hot(y, 3))
    loss = build_loss({"name": "ldam", "drw_epoch": 1}, counts)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(adjusted, y))
    loss.set_epoch(1)
    torch.testing.assert_close(loss(z, y), F.cross_entropy(adjusted, y, weight=w))


def test_balanced_softmax_is_ce_on_logits_plus_log_prior():
    counts = [60, 30, 10]
    prior = torch.tensor([0.6, 0.3, 0.1])
    got = build_loss({"name": "balanced_softmax"}, counts)(LOGITS, TARGET)
    torch.testing.assert_close(got, F.cross_entropy(LOGITS + prior.log(), TARGET))


def test_drw_switches_to_cb_weights_at_drw_epoch():
    counts = [100, 10, 1]
    loss = build_loss({"name": "ldam", "drw_epoch": 2, "beta": 0.99, "scale": 1.0}, counts)
    unweighted = build_loss({"name": "ldam", "scale": 1.0}, counts)
    weighted = build_loss({"name": "ldam", "reweight": "cb", "beta": 0.99, "scale": 1.0}, counts)
    before, after = unweighted(LOGITS, TARGET), weighted(LOGITS, TARGET)
    assert not torch.allclose(before, after)
    for epoch, expected in [(0, before), (1, before), (2, after), (3, after), (0, before)]:
        loss.set_epoch(epoch)
        torch.testing.assert_close(loss(LOGITS, TARGET), expected)


def test_label_smoothing_matches_torch_when_all_classes_present():
    got = build_loss({"name": "ce", "label_smoothing": 0.1}, [3, 2, 1])(LOGITS, TARGET)
    torch.testing.assert_close(got, F.cross_entropy(LOGITS, TARGET, label_smoothing=0.1))


@pytest.mark.parametrize("cfg", [
    {"name": "ce", "label_smoothing": 0.1},
    {"name": "cb", "label_smoothing": 0.2},
    {"name": "ce", "reweight": "inverse"},
    {"name": "focal", "gamma": 0.5, "reweight": "cb"},
    {"name": "ldam", "drw_epoch": 0, "label_smoothing": 0.1},
    {"name": "balanced_softmax", "label_smoothing": 0.1},
])
def test_minus_inf_logits_of_absent_classes_give_no_nan(cfg):
    # Stage-2 style: class 0 is not in the head (its logit is -inf) and has count 0.
    counts = [0, 20, 5, 1]
    logits = torch.tensor([[-math.inf, 1.0, 0.2, -0.3], [-math.inf, 0.0, 3.0, 0.5],
                           [-math.inf, 30.0, -30.0, 0.0]], requires_grad=True)
    target = torch.tensor([1, 3, 2])
    value = build_loss(cfg, counts)(logits, target)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(logits.grad).all()
    assert torch.equal(logits.grad[:, 0], torch.zeros(3))


def test_smoothing_over_finite_classes_equals_smoothing_on_subset_logits():
    full = torch.tensor([[-math.inf, 1.0, 0.2], [-math.inf, 0.0, 3.0]])
    target = torch.tensor([1, 2])
    got = build_loss({"name": "ce", "label_smoothing": 0.1}, [0, 4, 4])(full, target)
    torch.testing.assert_close(got, F.cross_entropy(full[:, 1:], target - 1, label_smoothing=0.1))


def test_loss_follows_logits_device_dtype():
    loss = build_loss({"name": "cb"}, [10, 1])
    out = loss(torch.tensor([[1.0, 0.0]], dtype=torch.bfloat16), torch.tensor([1]))
    assert out.dtype == torch.float32 and torch.isfinite(out)


@pytest.mark.parametrize("cfg, counts, match", [
    ({"name": "hinge"}, [1, 2], "ce, cb, focal, ldam, balanced_softmax"),
    ({"name": "ce", "gamma": 2.0}, [1, 2], "unknown key.*gamma.*valid"),
    ({"name": "focal", "gama": 2.0}, [1, 2], "gama"),
    ({"name": "cb", "beta": 1.0}, [1, 2], "loss.beta"),
    ({"name": "ce", "reweight": "log"}, [1, 2], "none, inverse, sqrt_inverse, cb"),
    ({"name": "cb", "normalize": "mean"}, [1, 2], "loss.normalize.*batch, weight"),
    ({"name": "ldam", "max_margin": 0}, [1, 2], "max_margin"),
    ({"name": "ldam", "drw_epoch": -1}, [1, 2], "drw_epoch"),
    ({"name": "ce", "label_smoothing": 1.5}, [1, 2], "label_smoothing"),
    ({"name": "ce"}, [0, 0], "class_counts"),
    ({"name": "ce"}, [[1, 2]], "class_counts"),
    ({"name": "ce"}, [3, -1], "class_counts"),
])
def test_bad_config_is_one_clear_error(cfg, counts, match):
    with pytest.raises(ConfigError, match=match):
        build_loss(cfg, counts)


def test_logit_adjusted_loss_is_ce_on_logits_plus_tau_log_prior():
    # Menon et al. 2021 (google-research/logit_adj): CE(z + τ·log π); τ = 1 is balanced softmax
    counts = [60, 30, 10]
    prior = torch.tensor([0.6, 0.3, 0.1])
    for tau in (0.5, 1.0, 2.0):
        got = build_loss({"name": "logit_adjusted", "tau": tau}, counts)(LOGITS, TARGET)
        torch.testing.assert_close(got, F.cross_entropy(LOGITS + tau * prior.log(), TARGET))
    torch.testing.assert_close(build_loss({"name": "logit_adjusted"}, counts)(LOGITS, TARGET),
                               build_loss({"name": "balanced_softmax"}, counts)(LOGITS, TARGET))
    torch.testing.assert_close(build_loss({"name": "logit_adjusted", "tau": 0.0}, counts)(LOGITS, TARGET),
                               F.cross_entropy(LOGITS, TARGET))


def test_logit_adjusted_loss_handles_empty_classes_and_refuses_a_negative_tau():
    z = torch.tensor([[0.3, 0.1, float("-inf")], [0.0, 0.2, float("-inf")]])
    loss = build_loss({"name": "logit_adjusted", "tau": 1.0}, [30, 10, 0])(z, torch.tensor([0, 1]))
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="loss.tau"):
        build_loss({"name": "logit_adjusted", "tau": -1.0}, [3, 1])


def test_drw_at_is_a_share_of_the_stage_epochs():
    counts = [100, 10, 1]
    at = build_loss({"name": "ldam", "drw_at": 0.8}, counts, epochs=10)
    assert at.drw_epoch == 8
    assert build_loss({"name": "ce", "drw_at": 0.8}, counts, epochs=200).drw_epoch == 160   # kaidic's
    with pytest.raises(ConfigError, match="drw_at: needs the stage's epochs"):
        build_loss({"name": "ldam", "drw_at": 0.8}, counts)
    with pytest.raises(ConfigError, match="not both"):
        build_loss({"name": "ldam", "drw_at": 0.8, "drw_epoch": 3}, counts, epochs=10)
