"""Shake-Shake regularised 3-branch ResNet (Gastaldi 2017), S-S-I variant.

Shake-Shake-26 2x32d: a 3×3 stem to 16 channels, 3 stages × 4 blocks of widths 32/64/128,
each block two branches ReLU-Conv-BN-ReLU-Conv-BN mixed as α·b1 + (1-α)·b2. "S-S-I":
the forward coefficient α and the backward coefficient β are drawn independently, per
image, in training; at evaluation α = 0.5. Depth = 6n+2 (n blocks per stage).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.backbone import Backbone


class ShakeMix(torch.autograd.Function):
    """α·a + (1-α)·b forward; the gradient is split β / (1-β) instead."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor):
        ctx.save_for_backward(beta)
        return b + alpha * (a - b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (beta,) = ctx.saved_tensors
        grad_a = grad * beta
        return grad_a, grad - grad_a, None, None


def shake_mix(a: torch.Tensor, b: torch.Tensor, training: bool) -> torch.Tensor:
    if not training:
        return 0.5 * (a + b)
    # One coefficient per image (the "I" in S-S-I), broadcast over C, H, W.
    shape = (a.shape[0], 1, 1, 1)
    alpha = torch.rand(shape, device=a.device, dtype=a.dtype)
    beta = torch.rand(shape, device=a.device, dtype=a.dtype)
    return ShakeMix.apply(a, b, alpha, beta)


def _branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
    )


class Shortcut(nn.Module):
    """Projection when the width changes: two 1×1 convs on the input and on the input shifted
    by one pixel, both sub-sampled by a 1×1 average pool with the block's stride, concatenated."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(cin, cout - cout // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(x)
        a = F.avg_pool2d(x, 1, self.stride)
        # Shift by one pixel so that the second path samples the other half of the grid.
        b = F.avg_pool2d(F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1)), 1, self.stride)
        return self.bn(torch.cat([self.conv1(a), self.conv2(b)], dim=1))


class ShakeBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.branch1 = _branch(cin, cout, stride)
        self.branch2 = _branch(cin, cout, stride)
        self.shortcut = Shortcut(cin, cout, stride) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + shake_mix(self.branch1(x), self.branch2(x), self.training)


class ShakeShake(Backbone):
    def __init__(self, num_classes: int, depth: int = 26, width: int = 32, in_channels: int = 1) -> None:
        super().__init__()
        per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        blocks, cin = [], 16
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(ShakeBlock(cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.finish(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.blocks(self.stem(x)))
        return x.mean((2, 3))   # global average pool: unlike adaptive_avg_pool2d, a deterministic backward on CUDA
