"""Late fusion for paired SAR + EO chips: one backbone per modality, features concatenated.

The stream stacks the modalities as channels ([sar, eo_r, eo_g, eo_b]); early fusion is simply
one backbone with that many input channels. Late fusion splits the channels again, runs each
modality through its own backbone (the same architecture, its own weights) and classifies the
concatenated features, so every modality keeps its own filters and normalisation.
"""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.heads import Head


class LateFusion(nn.Module):
    def __init__(self, backbones: list[nn.Module], channels: list[int], num_classes: int) -> None:
        super().__init__()
        for b in backbones:
            b.classifier = nn.Identity()   # the fused head classifies; theirs would be unused weights
        self.backbones = nn.ModuleList(backbones)
        self.channels = list(channels)
        self.feature_dim = sum(b.feature_dim for b in backbones)
        self.classifier = Head(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.channels, dim=1)
        return torch.cat([b.features(p) for b, p in zip(self.backbones, parts)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def last_block(self) -> nn.Module:
        return nn.ModuleList([b.last_block() for b in self.backbones])
