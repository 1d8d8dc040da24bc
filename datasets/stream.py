"""CPU reader: batches of decoded, augmented, normalised chips straight from the shards.

Each batch is planned globally (`epoch_plan` → `rank_batches`), read by random access through
the per-class index (`SampleReader`), decoded with torchvision's PNG decoder and augmented
with the batched torch implementation of the shared AugmentSpec.
"""
from __future__ import annotations

import atexit
import multiprocessing
import signal

from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
import torchvision.io  # noqa: F401  (registers torch.ops.image)

from datasets.augment import AugmentSpec, augment_batch, window
from datasets.sampling import SamplingSpec, check_spec, epoch_plan, rank_batches
from shards.access import SampleReader
from shards.errors import DataError
from shards.index import INDEX_NAME, ClassIndex

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _decode_png(data: torch.Tensor) -> torch.Tensor:
    """torchvision's PNG decoder (ImageReadMode.UNCHANGED). Called as the registered op: the
    Python wrapper adds a usage log and a deprecation warning (torchvision 0.29) on every call,
    ~10% of the reader's time on 56 px chips."""
    return torch.ops.image.decode_png(data, 0, False)


def batch_seed(seed: int, epoch: int, rank: int, batch: int) -> int:
    """Augmentation seed of one batch: independent of worker count, so resume is exact."""
    state = np.random.SeedSequence([seed, epoch, rank, batch]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


class ShardStream(IterableDataset):
    """Iterable of (images float32 [B,1,S,S], labels int64 [B], ids int64 [B]) for one rank."""

    def __init__(self, root: Path | str, split: str, *, batch_size: int, sampling: SamplingSpec,
                 augment: AugmentSpec | None, input_size: int = 56, seed: int = 0,
                 rank: int = 0, world: int = 1, total_epochs: int = 1):
        index = ClassIndex.load(root)
        self.split = index.split(split)
        where = f"{Path(root) / INDEX_NAME}: split {split!r}"
        if batch_size < 1 or input_size < 1:
            raise DataError(f"{where}: batch_size and input_size must be >= 1")
        try:
            check_spec(self.split.class_counts(), sampling)
        except DataError as e:
            raise DataError(f"{where}: {e}") from None
        # Normalise every split with the train statistics (the model only ever saw those).
        stats = index.splits.get("train", self.split)
        self.mean, self.std = float(stats.pixel_mean), float(stats.pixel_std) or 1.0
        self.classes: list[str] = list(index.classes)
        self.class_counts: np.ndarray = self.split.class_counts()
        self.reader = SampleReader(self.split)
        self.batch_size, self.sampling, self.augment = batch_size, sampling, augment
        self.input_size, self.seed, self.total_epochs = input_size, seed, total_epochs
        self.rank, self.world = rank, world
        self.epoch, self.start_batch = 0, 0
        self._batches: tuple[int, list[np.ndarray]] | None = None
        self._windows: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.batches()  # plan epoch 0 now, so a plan that cannot feed every rank fails here

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; start_batch > 0 resumes mid-epoch (skips that many batches)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def batches(self) -> list[np.ndarray]:
        """This rank's sample ids per batch for the current epoch (cached per epoch)."""
        if self._batches is None or self._batches[0] != self.epoch:
            plan = epoch_plan(self.split.labels, self.sampling, epoch=self.epoch,
                              total_epochs=self.total_epochs, seed=self.seed)
            try:
                batches = rank_batches(plan, self.batch_size, self.rank, self.world)
            except DataError as e:
                raise DataError(f"{self.split.root / INDEX_NAME}: split {self.split.name!r}: {e}") from None
            self._batches = (self.epoch, batches)
        return self._batches[1]

    def __len__(self) -> int:
        """Batches per rank this epoch (same on every rank), including any skipped by start_batch."""
        return len(self.batches())

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        batches = self.batches()
        # Whole batches round-robin over workers: DataLoader collects them in the same order.
        for b in range(self.start_batch + worker, len(batches), workers):
            yield self.load_batch(b, batches[b])

    def load_batch(self, b: int, ids: np.ndarray) -> Batch:
        """Read, decode, augment and normalise batch number b (of this epoch and rank)."""
        images = self.decode(ids)
        if self.augment is not None:
            gen = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, self.rank, b))
            x = augment_batch(images, self.augment, gen)
            x.sub_(self.mean).div_(self.std)
        else:  # (u8/255 − mean)/std in one pass
            x = images.float().mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std)
        labels = torch.from_numpy(self.split.labels[ids].astype(np.int64))
        return x, labels, torch.from_numpy(np.asarray(ids, dtype=np.int64))

    def decode(self, ids: np.ndarray) -> torch.Tensor:
        """uint8 [B,1,S,S]: PNG bytes → decode → centre crop / pad (the to_input of the spec).

        The hot path of the reader: per sample one read, one libpng decode and two numpy
        takes straight into the batch buffer (torch indexing costs several times more here).
        """
        size = self.input_size
        out = np.empty((len(ids), 1, size, size), dtype=np.uint8)
        for k, i in enumerate(ids.tolist()):
            data = self.reader.read(i)
            try:
                img = _decode_png(torch.frombuffer(bytearray(data), dtype=torch.uint8)).numpy()
            except RuntimeError as e:
                raise DataError(f"{self.sample_where(i)}: cannot decode PNG ({e})") from None
            if img.ndim != 3 or img.shape[0] != 1 or img.dtype != np.uint8:
                raise DataError(f"{self.sample_where(i)}: decoded to {img.dtype} {tuple(img.shape)}, "
                                "expected 8-bit grayscale")
            rows, cols = self._window(img.shape[1], img.shape[2])
            np.take(img[0].take(rows, axis=0), cols, axis=1, out=out[k, 0])
        return torch.from_numpy(out)

    def _window(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        key = (h, w)
        if key not in self._windows:
            self._windows[key] = (window(h, self.input_size), window(w, self.input_size))
        return self._windows[key]

    def sample_where(self, i: int) -> str:
        return f"{self.split.shard_path(int(self.split.shard[i]))}: sample {self.split.keys[i]}"


def make_loader(stream: ShardStream, num_workers: int) -> DataLoader:
    """batch_size=None; workers take whole batches round-robin, so order is independent of
    num_workers. Workers are re-created each epoch, so set_epoch before iterating reaches them."""
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=_ignore_stop_signals)


def _kill_daemonic_children() -> None:
    """At interpreter exit, multiprocessing stops daemonic children with SIGTERM and then joins
    them. Loader workers ignore SIGTERM (below), so a worker still alive then (an iterator kept
    by an exception's traceback) would hang the exit forever: kill them for good instead."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


# Registered after multiprocessing's own exit hook, so it runs first (atexit is LIFO).
atexit.register(_kill_daemonic_children)


def _ignore_stop_signals(_worker_id: int) -> None:
    """Preemption signals are for the trainer process: a loader worker that dies of SIGTERM
    (sent to the whole process group by Slurm) would crash the trainer before it checkpoints."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
