"""Models and the classifier head: shapes, parameter counts, Shake-Shake behaviour, head changes."""
from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torch import nn

from trainer.errors import ConfigError
from trainer.models import MODELS, build_model
from trainer.models.heads import Head
from trainer.models.shake_shake import ShakeBlock, ShakeMix, shake_mix

# Small versions of every model so that the behaviour tests stay fast on 2 cores.
SMALL = {
    "shake_shake": {"name": "shake_shake", "depth": 8, "width": 4},
    "resnet_cifar": {"name": "resnet_cifar", "depth": 8, "width": 4},
    "resnet18": {"name": "resnet18", "depth": 10, "width": 4},
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_shake_shake_26_2x32d_has_2_92m_parameters():
    n = n_params(build_model({"name": "shake_shake"}, 10))
    assert abs(n - 2.92e6) / 2.92e6 < 0.03, n


def test_resnet32_has_0_46m_parameters():
    n = n_params(build_model({"name": "resnet_cifar"}, 10))
    assert abs(n - 0.46e6) / 0.46e6 < 0.03, n


def test_resnet18_matches_torchvision_with_small_chip_stem():
    ref = torchvision.models.resnet18(weights=None, num_classes=10)
    ref.conv1 = nn.Conv2d(1, 64, 3, padding=1, bias=False)
    ref.maxpool = nn.Identity()
    assert n_params(build_model({"name": "resnet18"}, 10)) == n_params(ref)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("size", [16, 17, 56])
def test_output_and_feature_shapes(name, size):
    model = build_model(SMALL[name], 5).eval()
    x = torch.randn(3, 1, size, size)
    feats = model.features(x)
    assert feats.shape == (3, model.feature_dim)
    assert model(x).shape == (3, 5)
    assert torch.equal(model(x), model.classifier(feats))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_eval_is_deterministic_and_channels_last_agrees(name):
    model = build_model(SMALL[name], 4).eval()
    x = torch.randn(2, 1, 20, 20)
    with torch.no_grad():
        a, b = model(x), model(x)
        c = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_gradients_reach_every_parameter(name):
    model = build_model(SMALL[name], 4).train()
    model(torch.randn(4, 1, 16, 16)).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (CPU kernels are deterministic anyway)")
@pytest.mark.parametrize("name", sorted(SMALL))
def test_backward_is_deterministic_on_cuda(name):
    """Global pooling is a mean: adaptive_avg_pool2d has no deterministic CUDA backward.
    cuBLAS's own condition, CUBLAS_WORKSPACE_CONFIG, is read once per process: conftest.py sets
    it at import, before any test makes a CUDA call."""
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
    model = build_model(SMALL[name], 4).cuda().train()
    torch.use_deterministic_algorithms(True, warn_only=False)
    try:
        model(torch.randn(4, 1, 16, 16, device="cuda")).logsumexp(1).sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_last_block_is_the_last_residual_block_run(name):
    model = build_model(SMALL[name], 3).eval()
    block = model.last_block()
    block_type = type(block)
    order = []
    for m in model.modules():
        if isinstance(m, block_type):
            m.register_forward_hook(lambda mod, i, o: order.append((mod, o.shape)))
    model(torch.randn(1, 1, 16, 16))
    assert order[-1][0] is block
    assert order[-1][1][1] == model.feature_dim
    assert len(order) > 1


def test_shake_mix_forward_and_backward_coefficients():
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, requires_grad=True)
    alpha = torch.tensor([0.2, 0.9]).view(2, 1, 1, 1)
    beta = torch.tensor([0.7, 0.1]).view(2, 1, 1, 1)
    out = ShakeMix.apply(a, b, alpha, beta)
    torch.testing.assert_close(out, alpha * a + (1 - alpha) * b)
    grad = torch.randn_like(out)
    out.backward(grad)
    # The backward pass uses β, not α: that is the "Shake" in the backward direction.
    torch.testing.assert_close(a.grad, beta * grad)
    torch.testing.assert_close(b.grad, (1 - beta) * grad)


def test_shake_mix_is_one_coefficient_per_image_in_training_and_half_in_eval():
    a, b = torch.ones(64, 2, 3, 3), torch.zeros(64, 2, 3, 3)
    out = shake_mix(a, b, training=True)
    per_image = out.flatten(1)
    assert torch.equal(per_image, per_image[:, :1].expand_as(per_image))  # constant within an image
    assert per_image[:, 0].unique().numel() > 1                         # varies across images
    assert (per_image >= 0).all() and (per_image <= 1).all()
    assert torch.equal(shake_mix(a, b, training=False), torch.full_like(a, 0.5))


def test_shake_block_at_eval_is_the_average_of_its_branches():
    block = ShakeBlock(4, 8, stride=2).eval()
    x = torch.randn(2, 4, 9, 9)
    with torch.no_grad():
        expected = block.shortcut(x) + 0.5 * (block.branch1(x) + block.branch2(x))
        torch.testing.assert_close(block(x), expected)
    assert block(x).shape == (2, 8, 5, 5)


def test_shake_shake_training_mode_is_stochastic():
    model = build_model(SMALL["shake_shake"], 4).train()
    x = torch.randn(4, 1, 16, 16)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    torch.manual_seed(0)
    c = model(x)
    assert not torch.allclose(a, b)
    assert torch.equal(a, c)


def test_build_model_rejects_bad_config():
    with pytest.raises(ConfigError, match="shake_shake, resnet_cifar, resnet18"):
        build_model({"name": "vgg"}, 10)
    with pytest.raises(ConfigError, match="unknown key.*widht.*valid: name, depth, width"):
        build_model({"name": "shake_shake", "widht": 32}, 10)
    with pytest.raises(ConfigError, match="6n\\+2"):
        build_model({"name": "resnet_cifar", "depth": 30}, 10)
    with pytest.raises(ConfigError, match="depth"):
        build_model({"name": "resnet18", "depth": 50}, 10)
    with pytest.raises(ConfigError, match="width"):
        build_model({"name": "shake_shake", "width": "32"}, 10)
    assert set(MODELS) == set(SMALL)


def test_in_channels_is_configurable():
    model = build_model({**SMALL["resnet_cifar"], "in_channels": 3}, 2).eval()
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 2)


# --- Head --------------------------------------------------------------------------------

def test_head_subset_keeps_learned_rows_bit_identical():
    head = Head(6, 10)
    w, b = head.weight.detach().clone(), head.bias.detach().clone()
    out = head.subset(range(1, 10))
    assert out is head and head.classes == list(range(1, 10))
    assert torch.equal(head.weight, w[1:]) and torch.equal(head.bias, b[1:])
    head.subset([7, 3])  # any order; rows follow it
    assert head.classes == [7, 3]
    assert torch.equal(head.weight, w[[7, 3]])


def test_head_expand_keeps_learned_rows_and_initialises_new_ones():
    head = Head(6, 10).subset(range(1, 10))
    w = head.weight.detach().clone()
    head.expand(10)
    assert head.classes == list(range(10))
    assert torch.equal(head.weight[1:], w)
    assert head.weight[0].abs().sum() > 0 and not any(torch.equal(head.weight[0], r) for r in w)


def test_head_changes_reject_unknown_classes():
    head = Head(4, [0, 2, 5])
    with pytest.raises(ConfigError, match="\\[1\\] are not in the head"):
        head.subset([1, 2])
    with pytest.raises(ConfigError, match="cannot expand"):
        head.expand(5)
    with pytest.raises(ConfigError, match="distinct"):
        Head(4, [1, 1])


def test_to_full_logits_puts_minus_inf_for_absent_classes():
    head = Head(3, [2, 0])
    logits = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    full = head.to_full_logits(logits, 4)
    inf = float("-inf")
    assert torch.equal(full, torch.tensor([[2.0, inf, 1.0, inf], [4.0, inf, 3.0, inf]]))
    full[:, [0, 2]].sum().backward()
    assert torch.equal(logits.grad, torch.ones(2, 2))


def test_model_state_dict_round_trips_the_head_class_list():
    model = build_model(SMALL["resnet_cifar"], 10).eval()
    model.classifier.subset(range(1, 10))
    state = model.state_dict()
    fresh = build_model(SMALL["resnet_cifar"], 10).eval()
    fresh.load_state_dict(state)
    assert fresh.classifier.classes == list(range(1, 10))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_loading_a_head_with_another_feature_size_fails():
    with pytest.raises(RuntimeError, match="size mismatch"):
        Head(8, 3).load_state_dict(Head(4, 3).state_dict())


def test_head_expand_with_generator_is_reproducible():
    rows = []
    for _ in range(2):
        head = Head(6, [2, 3])
        head.expand(5, generator=torch.Generator().manual_seed(7))
        rows.append(head.weight[[0, 1, 4]].detach())
    assert torch.equal(rows[0], rows[1])


# --- cosine head (LDAM-DRW's NormedLinear) ----------------------------------------------

def test_cosine_logits_are_bounded_and_scale_invariant():
    head = Head(6, [0, 3, 4], normalized=True)
    assert head.bias is None and "bias" not in head.state_dict()
    x = torch.randn(5, 6)
    logits = head(x)
    assert logits.shape == (5, 3) and logits.abs().max() <= 1.0 + 1e-6
    with torch.no_grad():
        scaled = Head(6, [0, 3, 4], normalized=True)
        scaled.weight.copy_(head.weight * torch.tensor([[2.0], [0.5], [7.0]]))  # any positive row scales
    torch.testing.assert_close(scaled(3.0 * x), logits)
    # a row's cosine with itself is 1
    torch.testing.assert_close(head(head.weight.detach()).diagonal(), torch.ones(3))


def test_ldam_on_cosine_logits_ignores_the_weight_scale():
    from trainer.losses import build_loss

    head = Head(8, 4, normalized=True)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    loss = build_loss({"name": "ldam", "drw_epoch": 0}, [500, 100, 20, 5])
    before = loss(head(x), y)
    with torch.no_grad():
        head.weight.mul_(5.0)
    torch.testing.assert_close(loss(head(x), y), before)


def test_cosine_head_starts_with_unit_rows_and_keeps_them_through_changes():
    head = Head(6, 10, normalized=True)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10))
    w = head.weight.detach().clone()
    head.subset([7, 3])
    assert head.classes == [7, 3] and torch.equal(head.weight, w[[7, 3]]) and head.bias is None
    head.expand(10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(head.weight[[7, 3]], w[[7, 3]]) and head.bias is None
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10))
    small = Head(6, [2, 5], normalized=True)
    full = small.to_full_logits(small(torch.randn(2, 6)), 6)
    assert torch.isinf(full[:, [0, 1, 3, 4]]).all() and torch.isfinite(full[:, [2, 5]]).all()


def test_build_model_cosine_head_round_trips_and_refuses_a_linear_state():
    cfg = {**SMALL["resnet_cifar"], "head": "cosine"}
    model = build_model(cfg, 10).eval()
    assert model.classifier.normalized and model.classifier.in_features == model.feature_dim
    assert not build_model(SMALL["resnet_cifar"], 10).classifier.normalized
    model.classifier.subset(range(1, 10))
    fresh = build_model(cfg, 10).eval()
    fresh.load_state_dict(model.state_dict())                # adopts the class list
    assert fresh.classifier.classes == list(range(1, 10))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
        assert model(x).abs().max() <= 1.0 + 1e-6
    with pytest.raises(RuntimeError, match="bias"):
        build_model(SMALL["resnet_cifar"], 10).load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="bias"):
        Head(4, 3, normalized=True).load_state_dict(Head(4, 3).state_dict())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_cosine_models_train_every_parameter(name):
    model = build_model({**SMALL[name], "head": "cosine"}, 4).train()
    (30 * model(torch.randn(4, 1, 16, 16))).logsumexp(1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_build_model_rejects_an_unknown_head():
    with pytest.raises(ConfigError, match="model.head.*linear, cosine"):
        build_model({**SMALL["resnet_cifar"], "head": "mlp"}, 3)
