"""What every model here is: a backbone (`features`: chips -> pooled features [B, D]) and a
`Head` (`classifier`) over the classes. Stages freeze, replace or re-train the head alone."""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.heads import Head


class Backbone(nn.Module):
    """Subclasses build `stem` and `blocks` (the last block is what `train: last_block` trains),
    define `features`, and end their __init__ with `finish`."""

    feature_dim: int
    classifier: Head
    blocks: nn.Sequential

    def finish(self, feature_dim: int, num_classes: int) -> None:
        """The head over `num_classes`, then He initialisation of every convolution (BatchNorm: 1, 0)."""
        self.feature_dim = feature_dim
        self.classifier = Head(feature_dim, num_classes)
        init_weights(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def last_block(self) -> nn.Module:
        return self.blocks[-1]


def init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
