"""NCM, nearest class mean: class means of the training features (classifier-balancing's
centred, L2-normalised, squared-Euclidean form by default)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trainer.errors import ConfigError
from trainer.posthoc.registry import PosthocClassifier


class NCM(nn.Module):
    """Nearest class mean over `num_classes` classes; forward gives logits [N, num_classes],
    -inf for classes without training samples. Metrics:

      l2_centred (default, classifier-balancing's KNNClassifier with feat_type cl2n, dist l2):
          features minus the training-feature mean, L2-normalised; class means of those;
          score -||x - c_j||² (its l2_similarity: squared, so argmax = nearest mean).
      cosine:    cosine similarity of raw features to the class means of raw features.
      euclidean: -||x - c_j||² on raw features (the reference's feat_type un).

    Everything fit() learns lives in buffers (the metric too, so loading a state dict into
    any fresh NCM(feature_dim, num_classes) reproduces the saved classifier)."""

    METRICS = ("l2_centred", "cosine", "euclidean")

    def __init__(self, feature_dim: int, num_classes: int, metric: str = "l2_centred") -> None:
        super().__init__()
        if metric not in self.METRICS:
            raise ConfigError(f"ncm metric: unknown {metric!r}; valid: {', '.join(self.METRICS)}")
        self.register_buffer("metric_id", torch.tensor(self.METRICS.index(metric)))
        self._metric = metric   # also as Python: torch.export (ONNX) cannot read a buffer's value
        self.register_load_state_dict_post_hook(_adopt_metric)   # the metric is state: a loaded one wins
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("means", torch.zeros(num_classes, feature_dim))
        self.register_buffer("present", torch.zeros(num_classes, dtype=torch.bool))

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def classes(self) -> list[int]:
        return list(range(self.means.shape[0]))

    def _embed(self, features: torch.Tensor) -> torch.Tensor:
        feats = features.to(self.means.device, torch.float32)
        if self.metric == "l2_centred":
            return F.normalize(feats - self.feature_mean, dim=1)
        return feats

    @torch.no_grad()
    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> "NCM":
        num_classes, dim = self.means.shape
        if features.ndim != 2 or features.shape[1] != dim or len(features) != len(labels) or len(labels) == 0:
            raise ConfigError(f"NCM.fit: need features [N, {dim}] with N = len(labels) > 0, "
                              f"got {tuple(features.shape)} and {len(labels)} labels")
        labels = labels.to(self.means.device, torch.long)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ConfigError(f"NCM.fit: labels must lie in 0..{num_classes - 1}")
        feats = features.to(self.means.device, torch.float32)
        # The mean over all training samples (instance-weighted), as the reference's featmean.
        if self.metric == "l2_centred":
            self.feature_mean.copy_(feats.mean(0))
        else:
            self.feature_mean.zero_()
        x = self._embed(feats).double()  # double sums: a class of many samples loses no precision
        sums = torch.zeros(num_classes, dim, dtype=torch.float64, device=x.device).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=num_classes)
        self.present.copy_(counts > 0)
        self.means.copy_(sums / counts.clamp_min(1)[:, None])
        return self

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not torch.compiler.is_exporting() and not self.present.any():
            raise ConfigError("NCM: call fit() before scoring features")
        x = self._embed(features)
        if self.metric == "cosine":
            scores = F.normalize(x, dim=1).mm(F.normalize(self.means, dim=1).T)
        else:
            # ||x||² + ||c||² - 2 x·c as the reference computes it; memory O(N·C), not O(N·C·D)
            sq = (x * x).sum(1, keepdim=True) + (self.means * self.means).sum(1) - 2 * x.mm(self.means.T)
            scores = -sq.clamp_min(0.0)
        return scores.masked_fill(~self.present, float("-inf"))


def _adopt_metric(module: NCM, incompatible_keys) -> None:
    module._metric = module.METRICS[int(module.metric_id)]


@dataclass(frozen=True)
class NCMOptions:
    metric: str = field(default="l2_centred", metadata={"choices": ("l2_centred", "cosine")})


class NearestClassMean(PosthocClassifier):
    name = "ncm"
    summary = "nearest class mean of the training features"
    Options = NCMOptions

    @classmethod
    def fit(cls, ctx, settings: NCMOptions) -> tuple[nn.Module, dict]:
        train = ctx.features("train")
        ncm = NCM(ctx.feature_dim, ctx.num_classes, settings.metric)
        return ncm.fit(torch.from_numpy(train.features), torch.from_numpy(train.labels)), {}

    @classmethod
    def card(cls, clf: nn.Module) -> dict:
        return {"metric": clf.metric}

    @classmethod
    def empty(cls, card: dict, feature_dim: int, num_classes: int) -> nn.Module:
        return NCM(feature_dim, num_classes, card["metric"])
