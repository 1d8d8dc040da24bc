"""A cosine head carries its scale s: every loss, TTA and OOD score see s·cos (LDAM-DRW's s = 30)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trainer.errors import ConfigError
from trainer.losses import build_loss
from trainer.models import build_model
from trainer.models.heads import Head
from trainer.posthoc.registry import head_card, head_from_card

sys.path.insert(0, str(Path(__file__).parent))


def _fit(head: Head, loss, steps: int = 300) -> float:
    """Train `head` alone on 10 well-separated clusters; the last loss."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(10, 16, generator=gen) * 3
    y = torch.arange(10).repeat(20)
    x = centres[y] + 0.1 * torch.randn(len(y), 16, generator=gen)
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    for _ in range(steps):
        value = loss(head(x), y)
        opt.zero_grad()
        value.backward()
        opt.step()
    return float(value.detach())


def test_ce_on_a_scaled_cosine_head_falls_well_below_the_unscaled_floor():
    ce = build_loss({"name": "ce"}, [1] * 10)
    torch.manual_seed(0)
    unscaled = _fit(Head(16, 10, normalized=True, scale=1.0), ce)
    torch.manual_seed(0)
    scaled = _fit(Head(16, 10, normalized=True, scale=30.0), ce)
    # softmax of cosines in [-1, 1] over 10 classes is at most e/(e + 9/e) ≈ 0.45: CE ≥ 0.80
    assert unscaled > 0.79
    assert scaled < 0.2


def test_ldam_on_a_scaled_cosine_head_is_kaidics_s_times_cos_minus_margin():
    counts = [500, 100, 20, 5]
    head = Head(8, 4, normalized=True, scale=30.0)
    x, y = torch.randn(16, 8), torch.randint(0, 4, (16,))
    cos = Head(8, 4, normalized=True)
    cos.load_state_dict(head.state_dict())
    ldam = build_loss({"name": "ldam", "scale": 30.0}, counts, logit_scale=30.0)
    m = torch.tensor(counts, dtype=torch.float32) ** -0.25
    m = m * 0.5 / m.max()
    expected = F.cross_entropy(30.0 * (cos(x) - m[y][:, None] * F.one_hot(y, 4)), y)
    torch.testing.assert_close(ldam(head(x), y), expected)
    torch.testing.assert_close(head(x), 30.0 * cos(x))


def test_build_model_gives_the_cosine_head_its_scale_and_cards_keep_it():
    model = build_model({"name": "resnet_cifar", "depth": 8, "width": 4, "head": "cosine",
                         "cosine_scale": 30.0}, 5).eval()
    assert model.classifier.scale == 30.0
    with torch.no_grad():
        z = model(torch.randn(2, 1, 16, 16))
    assert z.abs().max() <= 30.0 + 1e-4 and z.abs().max() > 1.0
    old = build_model({"name": "resnet_cifar", "depth": 8, "width": 4, "head": "cosine"}, 5)
    assert old.classifier.scale == 1.0                   # a card saved before the key: as trained
    head = head_from_card(head_card(model.classifier), 4, 5)
    assert head.normalized and head.scale == 30.0
    assert model.classifier.like([1, 2]).scale == 30.0
    with pytest.raises(ConfigError, match="cosine head only"):
        Head(4, 3, scale=30.0)


def test_the_recipe_default_scale_is_30_and_reaches_the_model():
    from trainer.spec.config import validate
    from trainer.spec.resolve import resolve
    from trainer_helpers import fake_index

    cfg = validate({"data": {"shards": "/x", "batch_size": 32},
                    "stages": [{"name": "a", "loss": {"name": "ldam"}}, {"name": "b"}]})
    spec = resolve(cfg, fake_index([50, 20, 5]))
    assert spec.model["head"] == "cosine" and spec.model["cosine_scale"] == 30.0
    assert build_model(spec.model, spec.num_classes).classifier.scale == 30.0
