"""LWS, learnable weight scaling: the stage's linear head kept fixed, with a learnable scale f_i
per class (logits_i = f_i · (w_i·x + b_i)), trained class-balanced (default: 5 epochs)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError
from trainer.models.heads import FullLogits, Head
from trainer.posthoc.head_training import HeadTrainingSpec, TrainedHead
from trainer.posthoc.registry import HeadClassifier


class LWS(nn.Module):
    """A fixed linear classifier with a learnable per-class scale (initially 1)."""

    def __init__(self, head: Head) -> None:
        super().__init__()
        if getattr(head, "normalized", False):
            # f_i·cos(x, w_i) cannot be folded back into a Head (to_head), so refuse early.
            raise ConfigError("LWS: needs a linear head; this head is cosine (model head: cosine)")
        self.in_features = head.in_features
        self.register_buffer("class_ids", head.class_ids.detach().clone())
        self.register_buffer("weight", head.weight.detach().clone())
        self.register_buffer("bias", head.bias.detach().clone())
        self.scales = nn.Parameter(torch.ones(len(head.classes), device=head.weight.device))

    @property
    def classes(self) -> list[int]:
        return [int(c) for c in self.class_ids.tolist()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) * self.scales

    def to_head(self) -> Head:
        """A plain Head computing the same logits (scales folded into weight and bias)."""
        out = Head(self.in_features, self.classes).to(self.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.weight * self.scales[:, None])
            out.bias.copy_(self.bias * self.scales)
        return out


class LearnableWeightScaling(TrainedHead, HeadClassifier):
    name = "lws"
    summary = "the stage's head with a learnable scale per class, trained class-balanced"
    default_epochs = 5
    linear_head_only = True

    @classmethod
    def fit(cls, ctx, settings: HeadTrainingSpec) -> tuple[nn.Module, dict]:
        scaled = ctx.train_head(LWS(ctx.linear_head()).to(ctx.device), settings)
        return ctx.finish(FullLogits(scaled.to_head().eval().cpu(), ctx.num_classes)), dict(ctx.trained)
