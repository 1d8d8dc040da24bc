"""cRT, classifier re-training: a freshly initialised linear head over all classes, trained
class-balanced on the frozen representation (classifier-balancing's default: 10 epochs), with
the backbone's BatchNorm statistics re-estimated on those batches and the best validation epoch
kept, as the reference does (posthoc.crt.bn, .select)."""
from __future__ import annotations

import torch
from torch import nn

from trainer.models.heads import FullLogits, Head
from trainer.posthoc.head_training import HeadTrainingSpec, TrainedHead
from trainer.posthoc.registry import HeadClassifier


class CRT(TrainedHead, HeadClassifier):
    name = "crt"
    summary = "a fresh linear head re-trained class-balanced on the frozen features"
    default_epochs = 10

    @classmethod
    def fit(cls, ctx, settings: HeadTrainingSpec) -> tuple[nn.Module, dict]:
        torch.manual_seed(ctx.seed)
        head = Head(ctx.feature_dim, ctx.num_classes).to(ctx.device)
        head = ctx.train_head(head, settings)
        return ctx.finish(FullLogits(head.eval().cpu(), ctx.num_classes)), dict(ctx.trained)
