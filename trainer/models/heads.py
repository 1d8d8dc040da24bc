"""The classifier head: a linear (or cosine) layer over an ordered list of class ids.

Stages change which classes the head predicts (three-stage recipe: all → classes 1–9 → all).
`subset` and `expand` change the head in place (and return it, so both
`head.subset(c)` and `model.classifier = model.classifier.subset(c)` work); rows of classes
that stay are kept bit-identical. The class list is a buffer, so a state dict carries it and
loading a state dict with another class list reshapes the head to match.

normalized=True is LDAM-DRW's NormedLinear (Cao et al. 2019): logits are s·cos(x, w_i), cosines
normalize(x)·normalize(w_i) in [-1, 1] times the head's `scale` s, with no bias. The head, not
the loss, carries s, so that every loss (CE, CB, focal, balanced softmax, LDAM), TTA and the
softmax-based OOD score see the same scaled logits: unscaled cosines cap a 10-class softmax at
e/(e + 9/e) ≈ 0.45 and CE at about 0.8. kaidic/LDAM-DRW scales in the loss
(s·(cos − m_y)); LDAM here takes the head's scale into account (trainer.losses), so its logits
are the same. It has no bias parameter at all, so its state dict lacks "bias": loading one head
kind into the other fails loudly instead of silently changing the logits.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError


def _fresh_rows(rows: int, in_features: int, like: torch.Tensor,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias rows initialised like nn.Linear does."""
    weight = torch.empty(rows, in_features, device=like.device, dtype=like.dtype)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    bound = 1.0 / math.sqrt(in_features) if in_features > 0 else 0.0
    bias = torch.empty(rows, device=like.device, dtype=like.dtype).uniform_(-bound, bound, generator=generator)
    return weight, bias


class Head(nn.Module):
    """Classifier whose output column i scores class `classes[i]`: linear w_i·x + b_i, or with
    normalized=True `scale` times the cosine of x and w_i (no bias). `scale` is a setting (in the
    model card), not a parameter: 1 for a linear head."""

    def __init__(self, in_features: int, classes: int | Iterable[int], normalized: bool = False,
                 scale: float = 1.0) -> None:
        super().__init__()
        ids = list(range(classes)) if isinstance(classes, int) else [int(c) for c in classes]
        _check_classes(ids)
        if not normalized and scale != 1.0:
            raise ConfigError(f"head: scale {scale} applies to a cosine head only")
        if not scale > 0:
            raise ConfigError(f"head: scale must be > 0, got {scale}")
        self.in_features = in_features
        self.normalized = bool(normalized)
        self.scale = float(scale)
        self.register_buffer("class_ids", torch.tensor(ids, dtype=torch.long))
        weight, bias = self._fresh(len(ids), torch.empty(0))
        self.weight = nn.Parameter(weight)
        # A cosine head has no bias (None, not a frozen zero): a parameter that never gets a
        # gradient would trip DDP's unused-parameter check once a stage unfreezes the head.
        self.register_parameter("bias", None if self.normalized else nn.Parameter(bias))

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.class_ids.tolist()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalized:
            cos = F.linear(F.normalize(x, dim=1), F.normalize(self.weight, dim=1))
            return cos * self.scale if self.scale != 1.0 else cos
        return F.linear(x, self.weight, self.bias)

    def like(self, classes: Iterable[int] | None = None) -> "Head":
        """A fresh head of the same kind (linear or cosine, same scale), on the same device."""
        out = Head(self.in_features, self.classes if classes is None else classes, self.normalized, self.scale)
        return out.to(self.weight.device)

    def extra_repr(self) -> str:
        scale = f", scale={self.scale}" if self.normalized else ""
        return f"in_features={self.in_features}, classes={self.classes}, normalized={self.normalized}{scale}"

    def _fresh(self, rows: int, like: torch.Tensor,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = _fresh_rows(rows, self.in_features, like, generator)
        if self.normalized:
            # Unit rows, as NormedLinear starts: the row norm sets the effective step size of a
            # cosine head (d cos / d w ∝ 1/||w||), so start where the reference does.
            weight = F.normalize(weight, dim=1)
        return weight, bias

    def _set(self, ids: list[int], weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        # New Parameter objects: the optimizer must be rebuilt after a head change (it is, per stage).
        self.class_ids = torch.tensor(ids, dtype=torch.long, device=self.class_ids.device)
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=self.weight.requires_grad)
        if self.bias is not None:
            self.bias = nn.Parameter(bias.detach().clone(), requires_grad=self.bias.requires_grad)

    def subset(self, classes: Iterable[int]) -> "Head":
        """Keep only the rows of `classes` (in the order given); each must be in the head."""
        ids = [int(c) for c in classes]
        _check_classes(ids)
        have = self.classes
        missing = [c for c in ids if c not in have]
        if missing:
            raise ConfigError(f"head subset: classes {missing} are not in the head (it has {have})")
        rows = torch.tensor([have.index(c) for c in ids], device=self.weight.device)
        self._set(ids, self.weight[rows], None if self.bias is None else self.bias[rows])
        return self

    def expand(self, num_classes: int, generator: torch.Generator | None = None) -> "Head":
        """Grow to classes 0..num_classes-1: learned rows kept, new rows freshly initialised
        (from `generator` if given, so that every rank draws the same rows)."""
        have = self.classes
        if have and max(have) >= num_classes:
            raise ConfigError(f"head expand: head has class {max(have)}, cannot expand to {num_classes} classes")
        weight, bias = self._fresh(num_classes, self.weight.detach(), generator)
        rows = torch.tensor(have, dtype=torch.long, device=weight.device)
        weight[rows] = self.weight.detach()
        if self.bias is not None:
            bias[rows] = self.bias.detach()
        self._set(list(range(num_classes)), weight, bias)
        return self

    def to_full_logits(self, logits: torch.Tensor, num_classes: int) -> torch.Tensor:
        """[B, len(classes)] → [B, num_classes]; classes not in the head get -inf."""
        full = logits.new_full((logits.shape[0], num_classes), float("-inf"))
        return full.index_copy(1, self.class_ids, logits)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # A checkpoint saved after subset/expand has another class list: adopt it, so that
        # weights of a stage can be loaded into a freshly built model. The feature size must match.
        ids = state_dict.get(prefix + "class_ids")
        weight = state_dict.get(prefix + "weight")
        if ids is not None and weight is not None and ids.tolist() != self.class_ids.tolist():
            if weight.shape[1:] == self.weight.shape[1:] and weight.shape[0] == len(ids):
                self._set([int(c) for c in ids.tolist()], self.weight.new_empty(weight.shape),
                          self.weight.new_empty(len(ids)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


def _check_classes(ids: list[int]) -> None:
    if not ids:
        raise ConfigError("head: the class list is empty")
    if len(set(ids)) != len(ids) or min(ids) < 0:
        raise ConfigError(f"head: class ids must be distinct and non-negative, got {ids}")

class FullLogits(nn.Module):
    """A `Head` (over a subset of classes, maybe) as a classifier over all `num_classes`."""

    def __init__(self, head: Head, num_classes: int) -> None:
        super().__init__()
        self.head, self.num_classes = head, num_classes

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head.to_full_logits(self.head(features).float(), self.num_classes)
