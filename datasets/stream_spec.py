"""What every stream is given, and the one place a split is opened and checked.

A stream (the CPU shard reader, the resident tensor stream, DALI) yields, for one rank, batches
of (images float [B,C,S,S] normalised with the train statistics, labels int64 [B], ids int64
[B]) in the order `epoch_plan` → `rank_batches` decides. They differ only in where pixels come
from and where augmentation runs; `StreamSpec` says everything else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datasets.augment import AugmentSpec
from datasets.sampling import SamplingSpec, check_spec, epoch_plan, rank_batches
from shards.errors import DataError
from shards.index import INDEX_NAME, ClassIndex, SplitIndex

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]   # images, labels, ids


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """Augmentation seed of one batch: independent of worker count and loader, so resume is exact."""
    state = np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


@dataclass(frozen=True)
class StreamSpec:
    """One rank's view of one stage (or evaluation pass) over a split."""
    batch_size: int                     # per rank
    sampling: SamplingSpec
    augment: AugmentSpec | None = None  # None: no augmentation (evaluation)
    input_size: int = 56
    seed: int = 0
    rank: int = 0
    world: int = 1
    total_epochs: int = 1
    equal_batches: bool = False         # pad the epoch so every batch has one size (torch.compile)
    draw_seed: int | None = None        # a fixed sub-dataset's draw (redraw stage); None: seed

    @classmethod
    def sequential(cls, batch_size: int, input_size: int, *, rank: int = 0, world: int = 1,
                   seed: int = 0) -> "StreamSpec":
        """Every sample once, in id order, unaugmented: the evaluation pass."""
        return cls(batch_size, SamplingSpec(kind="sequential"), None, input_size, seed, rank, world, 1)


@dataclass(frozen=True)
class Normalizer:
    """uint8 pixels -> model input, with the train split's statistics (the model only ever saw
    those): one mean/std, or one per channel (a tuple) for RGB and stacked modalities."""
    mean: float | tuple[float, ...]
    std: float | tuple[float, ...]

    @classmethod
    def of(cls, means: list[float], stds: list[float]) -> "Normalizer":
        stds = [s or 1.0 for s in stds]
        return cls(float(means[0]), float(stds[0])) if len(means) == 1 else cls(tuple(means), tuple(stds))

    _on_device: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    def _per_channel(self, x: torch.Tensor) -> tuple:
        """Scalars, or [C,1,1] tensors made once per device (a copy to the GPU every batch
        would wait for it)."""
        if isinstance(self.mean, float):
            return self.mean, self.std
        if x.device not in self._on_device:
            shape = (-1, 1, 1)   # channels are dim -3 of [C,S,S] and [B,C,S,S]
            self._on_device[x.device] = (torch.tensor(self.mean, device=x.device).view(shape),
                                         torch.tensor(self.std, device=x.device).view(shape))
        return self._on_device[x.device]

    def from_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """(x/255 − mean)/std in one pass."""
        mean, std = self._per_channel(x)
        return x.float().mul_(1.0 / (255.0 * std)).sub_(mean / std)

    def from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """x in [0, 1] (augmented) -> (x − mean)/std, in place."""
        mean, std = self._per_channel(x)
        return x.sub_(mean).div_(std)


@dataclass
class OpenSplit:
    """A split opened through the index, with what every stream needs from it."""
    index: ClassIndex
    split: SplitIndex
    normalizer: Normalizer

    @property
    def classes(self) -> list[str]:
        return list(self.index.classes)

    @property
    def class_counts(self) -> np.ndarray:
        return self.split.class_counts()

    @property
    def channels(self) -> int:
        """Channels of a chip: every modality's, stacked in the split's modality order."""
        return sum(self.split.stats(m).channels for m in self.split.modalities)

    @property
    def speckle_channels(self) -> tuple[int, int]:
        """[start, stop) of the SAR channels (speckle is a radar effect); (0, 0) without SAR."""
        start = 0
        for m in self.split.modalities:
            c = self.split.stats(m).channels
            if m == "sar":
                return start, start + c
            start += c
        return 0, 0

    def where(self) -> str:
        return f"{self.index.root / INDEX_NAME}: split {self.split.name!r}"

    def sample_where(self, i: int) -> str:
        return f"{self.split.shard_path(int(self.split.shard[i]))}: sample {self.split.keys[i]}"

    def batches(self, spec: StreamSpec, epoch: int) -> list[np.ndarray]:
        """This rank's sample ids per batch for one epoch (the same plan for every stream)."""
        plan = epoch_plan(self.split.labels, spec.sampling, epoch=epoch,
                          total_epochs=spec.total_epochs, seed=spec.seed, draw_seed=spec.draw_seed)
        try:
            return rank_batches(plan, spec.batch_size, spec.rank, spec.world, spec.equal_batches)
        except DataError as e:
            raise DataError(f"{self.where()}: {e}") from None


def open_split(root: Path | str, split: str, spec: StreamSpec) -> OpenSplit:
    """Open `split` of the shards at `root` and check that `spec` can be drawn from it
    (DataError naming the index otherwise, before any batch is read)."""
    index = ClassIndex.load(root)
    opened = OpenSplit(index, index.split(split), Normalizer(0.0, 1.0))
    if spec.batch_size < 1 or spec.input_size < 1:
        raise DataError(f"{opened.where()}: batch_size and input_size must be >= 1")
    try:
        check_spec(opened.class_counts, spec.sampling)
    except DataError as e:
        raise DataError(f"{opened.where()}: {e}") from None
    opened.normalizer = normalizer_of(index.splits.get("train", opened.split))
    opened.batches(spec, 0)  # plan epoch 0 now: a plan that cannot feed every rank fails here
    return opened


def normalizer_of(split: SplitIndex) -> Normalizer:
    """Per-channel statistics of a split (the train split's normalise every split)."""
    means, stds = [], []
    for m in split.modalities:
        st = split.stats(m)
        means += list(st.pixel_mean_c)
        stds += list(st.pixel_std_c)
    return Normalizer.of(means, stds)
