"""CPU reader: batches of decoded, augmented, normalised chips straight from the shards.

Each batch is planned globally (`OpenSplit.batches`: `epoch_plan` → `rank_batches`), read by
random access through the per-class index and decoded (`ChipDecoder`), and augmented with the
batched torch implementation of the shared AugmentSpec, in DataLoader workers.
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

from datasets.augment import augment_batch
from datasets.decode import ChipDecoder
from datasets.stream_spec import Batch, StreamSpec, batch_seed, open_split


class ShardStream(IterableDataset):
    """Iterable of (images float32 [B,C,S,S], labels int64 [B], ids int64 [B]) for one rank."""

    def __init__(self, root: Path | str, split: str, spec: StreamSpec):
        self.data = open_split(root, split, spec)
        self.spec = spec
        self.split = self.data.split
        self.classes: list[str] = self.data.classes
        self.class_counts: np.ndarray = self.data.class_counts
        self.decoder = ChipDecoder(self.data, spec.input_size)
        self.epoch, self.start_batch = 0, 0
        self._batches: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch; start_batch > 0 resumes mid-epoch (skips that many batches)."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def batches(self) -> list[np.ndarray]:
        """This rank's sample ids per batch for the current epoch (cached per epoch)."""
        if self._batches is None or self._batches[0] != self.epoch:
            self._batches = (self.epoch, self.data.batches(self.spec, self.epoch))
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
        images = self.decoder(ids)
        norm, spec = self.data.normalizer, self.spec
        if spec.augment is not None:
            gen = torch.Generator().manual_seed(batch_seed(spec.seed, self.epoch, spec.rank, b))
            x = norm.from_unit(augment_batch(images, spec.augment, gen, self.data.speckle_channels))
        else:
            x = norm.from_uint8(images)
        labels = torch.from_numpy(self.split.labels[ids].astype(np.int64))
        return x, labels, torch.from_numpy(np.asarray(ids, dtype=np.int64))


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
