"""Metrics on known predictions, group definitions, JSON-readiness and TTA."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from trainer.errors import ConfigError
from trainer.evaluate.metrics import evaluate, group_classes
from trainer.evaluate.scoring import tta_logits, tta_views

LABELS = [0, 0, 0, 1, 1, 2]
PREDS = [0, 0, 1, 1, 0, 2]


def test_known_predictions():
    out = evaluate(PREDS, LABELS, num_classes=4)
    assert out["top1"] == pytest.approx(4 / 6)
    assert out["per_class_acc"] == pytest.approx([2 / 3, 0.5, 1.0, None])
    assert out["balanced_acc"] == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert out["confusion"] == [[2, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert out["num_samples"] == 6
    assert "groups" not in out


def test_logits_give_the_same_as_their_argmax():
    logits = torch.full((6, 4), -1.0)
    logits[torch.arange(6), torch.tensor(PREDS)] = 1.0
    logits[:, 3] = float("-inf")  # a class absent from a subset head
    assert evaluate(logits, torch.tensor(LABELS), num_classes=4) == evaluate(PREDS, LABELS, num_classes=4)


def test_groups_many_medium_few_and_head_middle_tail():
    counts = [500, 150, 100, 50, 20, 19, 5, 1, 300, 60]
    g = group_classes(counts)
    assert g["many"] == [0, 1, 8]            # > 100
    assert g["medium"] == [2, 3, 4, 9]       # 20..100
    assert g["few"] == [5, 6, 7]             # < 20
    assert g["head"] == [0, 1, 8]            # top 30% by count
    assert g["tail"] == [5, 6, 7]            # bottom 30%
    assert g["middle"] == [2, 3, 4, 9]
    g = group_classes(counts, {"head_fraction": 0.1, "tail_fraction": 0.5, "many_above": 400})
    assert g["head"] == [0] and g["tail"] == [3, 4, 5, 6, 7] and g["many"] == [0]


def test_group_accuracy_is_mean_per_class_accuracy_and_empty_group_is_null():
    counts = [1000, 500, 300, 200]                 # all "many", like every NTIRE class
    labels = [0, 0, 1, 1, 2, 2, 3, 3]
    preds = [0, 0, 1, 0, 0, 0, 3, 0]                # per class: 1, 0.5, 0, 0.5
    out = evaluate(preds, labels, num_classes=4, train_counts=counts)
    assert out["groups"]["many"] == pytest.approx(0.5)
    assert out["groups"]["medium"] is None and out["groups"]["few"] is None
    assert out["group_classes"]["head"] == [0] and out["group_classes"]["tail"] == [3]
    assert out["groups"]["head"] == 1.0 and out["groups"]["tail"] == 0.5
    assert out["groups"]["middle"] == pytest.approx(0.25)


def test_result_is_plain_json_without_nan():
    logits = np.random.default_rng(0).normal(size=(20, 5))
    labels = np.array([0, 1, 2] * 6 + [0, 1])      # classes 3, 4 absent
    out = evaluate(logits, labels, num_classes=5, train_counts=np.array([50, 30, 10, 5, 1]))
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text) == out
    assert out["per_class_acc"][3] is None and out["per_class_acc"][4] is None
    assert out["groups"]["tail"] is None               # tail classes 3, 4 have no labels
    assert isinstance(out["top1"], float) and isinstance(out["confusion"][0][0], int)


@pytest.mark.parametrize("kwargs, match", [
    ({"logits_or_preds": [0, 1], "labels": [0]}, "2 predictions for 1 labels"),
    ({"logits_or_preds": [0, 5], "labels": [0, 1]}, "predictions must lie in 0..3"),
    ({"logits_or_preds": [0, 1], "labels": [0, -1]}, "labels must lie"),
    ({"logits_or_preds": np.zeros((2, 2, 2)), "labels": [0, 1]}, "shape"),
    ({"logits_or_preds": [0], "labels": [0], "train_counts": [1, 2, 3, 4], "groups": {"heads": 0.3}}, "valid"),
    ({"logits_or_preds": [0], "labels": [0], "train_counts": [1, 2, 3, 4],
      "groups": {"head_fraction": 0.8, "tail_fraction": 0.3}}, "sum"),
])
def test_bad_input_is_one_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        evaluate(num_classes=4, **kwargs)


# --- TTA ---------------------------------------------------------------------------------

def test_tta_views():
    x = torch.arange(4.0).view(1, 1, 2, 2)          # [[0, 1], [2, 3]]
    assert len(tta_views(x, 1)) == 1 and torch.equal(tta_views(x, 1)[0], x)
    ident, h, v = tta_views(x, 3)
    assert torch.equal(h, torch.tensor([[[[1.0, 0.0], [3.0, 2.0]]]]))
    assert torch.equal(v, torch.tensor([[[[2.0, 3.0], [0.0, 1.0]]]]))
    y = torch.arange(9.0).view(1, 1, 3, 3)
    views = tta_views(y, 8)
    assert len({tuple(t.flatten().tolist()) for t in views}) == 8       # all distinct
    for k in (1, 2, 3):                                                 # rotations included
        assert any(torch.equal(t, torch.rot90(y, k, (-2, -1))) for t in views)
    for n in (0, 9):
        with pytest.raises(ConfigError, match="1..8"):
            tta_views(y, n)


class CornerModel(nn.Module):
    """Logits [top-left pixel, 0]: a flip changes which pixel it sees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x[:, 0, 0, 0], torch.zeros(x.shape[0])], dim=1)


def test_tta_logits_is_log_of_mean_probability():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])  # corners seen: 0 (id), 1 (hflip), 2 (vflip)
    got = tta_logits(CornerModel(), x, 3)
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731  softmax([z, 0])[0]
    p0 = (sig(0) + sig(1) + sig(2)) / 3
    torch.testing.assert_close(got, torch.tensor([[math.log(p0), math.log(1 - p0)]]))
    torch.testing.assert_close(tta_logits(CornerModel(), x, 1), torch.log_softmax(CornerModel()(x), 1))
