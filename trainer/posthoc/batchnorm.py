"""BatchNorm statistics that a post-hoc head re-estimated on its class-balanced batches.

classifier-balancing trains cRT and LWS with the backbone frozen but the model in `train()`
mode: BatchNorm normalises with batch statistics and its running statistics drift to those of
class-balanced batches; the re-trained classifier is then evaluated with them. Here the
classifier carries those statistics (`BatchNormed`), the model keeps its own, and scoring
(trainer.evaluate.scoring) swaps them in for that classifier's backbone pass.

Only the BatchNorm layers go to train mode (`batchnorm_train`): the rest of a frozen backbone
stays in eval mode. For ResNets that is the same as `train()`; Shake-Shake's blocks would draw
random branch mixes in train mode, so a whole-model `train()` would shake the frozen features,
while this keeps evaluation's fixed 0.5 mix and re-estimates only the statistics.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

BN = nn.modules.batchnorm._BatchNorm
STATS = ("running_mean", "running_var")


def bn_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the running statistics of every BatchNorm layer, by `<layer>.<buffer>`."""
    return {f"{name}.{b}": getattr(m, b).detach().clone() for name, m in net.named_modules()
            if isinstance(m, BN) and m.track_running_stats for b in STATS}


def load_bn_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    layers = dict(net.named_modules())
    with torch.no_grad():
        for key, value in state.items():
            name, buf = key.rsplit(".", 1)
            getattr(layers[name], buf).copy_(value)


def bn_only_train(net: nn.Module) -> None:
    """Every module in eval mode but the BatchNorm layers (batch statistics, running statistics
    updated)."""
    net.eval()
    for m in net.modules():
        if isinstance(m, BN):
            m.train()


def average_over_ranks(net: nn.Module, reduce_mean) -> None:
    """Running statistics averaged over ranks (each rank re-estimated them on its own batches)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, BN) and m.track_running_stats:
                for b in STATS:
                    getattr(m, b).copy_(reduce_mean(getattr(m, b).detach().clone()))


@contextmanager
def batchnorm_train(net: nn.Module) -> Iterator[None]:
    """`bn_only_train` for the block; each module's mode restored after."""
    modes = {m: m.training for m in net.modules()}
    bn_only_train(net)
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextmanager
def using_stats(net: nn.Module, state: dict[str, torch.Tensor] | None) -> Iterator[None]:
    """`net` with BatchNorm statistics `state` (None: its own), restored after."""
    if not state:
        yield
        return
    own = bn_state(net)
    load_bn_state(net, state)
    try:
        yield
    finally:
        load_bn_state(net, own)


class BatchNormed(nn.Module):
    """A classifier (features -> logits) that is scored on features computed with its own
    BatchNorm statistics (`stats`, buffers that travel with its state dict)."""

    def __init__(self, classifier: nn.Module, stats: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.classifier, self.names = classifier, list(stats)
        for i, value in enumerate(stats.values()):
            self.register_buffer(f"bn{i}", value.detach().clone())

    @property
    def stats(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, f"bn{i}") for i, k in enumerate(self.names)}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)


def stats_of(classifier: nn.Module | None) -> dict[str, torch.Tensor] | None:
    return classifier.stats if isinstance(classifier, BatchNormed) else None


def inner(classifier: nn.Module) -> nn.Module:
    """The classifier a `BatchNormed` wraps (itself otherwise)."""
    return classifier.classifier if isinstance(classifier, BatchNormed) else classifier


def card(classifier: nn.Module) -> dict:
    """What `rewrap` needs (classifiers.json): the statistics' names and sizes."""
    if not isinstance(classifier, BatchNormed):
        return {}
    return {"batchnorm": [[k, list(v.shape)] for k, v in classifier.stats.items()]}


def rewrap(card: dict, classifier: nn.Module) -> nn.Module:
    """An empty `BatchNormed` around `classifier` where the card records statistics."""
    if not card.get("batchnorm"):
        return classifier
    return BatchNormed(classifier, {k: torch.zeros(shape) for k, shape in card["batchnorm"]})
