"""torchvision's ResNet-18 adapted to one-channel ~56 px chips.

The ImageNet stem (7×7 stride 2 + max-pool) would shrink a 56 px chip to 14 px before the
first block; a 3×3 stride-1 stem without max-pool keeps the resolution, as CIFAR ports do.
Blocks are torchvision's BasicBlock; weights are never pretrained. depth ∈ {10, 18, 34},
width = channels of the first stage (64 in torchvision).
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from trainer.models.backbone import Backbone

LAYERS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, stride, down)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNet(Backbone):
    def __init__(self, num_classes: int, depth: int = 18, width: int = 64, in_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, blocks in enumerate(LAYERS[depth]):
            cout = width * 2**i
            stages.append(_stage(cin, cout, blocks, 1 if i == 0 else 2))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.finish(cin, num_classes)   # torchvision's initialisation

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean((2, 3))   # global average pool; deterministic backward on CUDA

    def last_block(self) -> nn.Module:
        return self.stages[-1][-1]
