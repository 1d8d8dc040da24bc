"""Resident data: a split decoded once into one uint8 tensor [N,C,S,S], kept in RAM or on the GPU.

Chips are 54–60 px; at 56 px the whole NTIRE training set is 293,772 × 56² ≈ 0.92 GB, so it
fits in host memory and on any current GPU. Decoding once removes the per-epoch PNG decode and
the loader worker processes; batches are gathered by index from the same `epoch_plan` /
`rank_batches` plan as every other stream and augmented, batched, on the tensor's device with
the per-batch seed, so exactly-once epochs and exact resume are unchanged.

The decoded split is cached beside the shards (OUT/cache/<split>-<S>px.npy + .json), keyed by
the index's shard checksums and checked (crc32 of the pixels) when opened: a stale or corrupt
cache is rebuilt, never trusted. A read-only shard folder just means no cache.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from datasets.augment import augment_batch
from datasets.decode import ChipDecoder
from datasets.stream_spec import Batch, OpenSplit, StreamSpec, batch_seed, open_split
from shards.atomic import atomic_path, write_json

FORMAT = "sar-resident/1"
CACHE_DIR = "cache"
PARALLEL_ABOVE = 20_000   # chips; below this one process decodes faster than a pool starts


def cache_key(data: OpenSplit, size: int) -> dict:
    """What the cached pixels depend on: the split's shards (by checksum), their samples, the size."""
    split = data.split
    return {"format": FORMAT, "split": split.name, "size": size, "count": len(split),
            "modalities": list(split.modalities),
            "shards": [s.sha256 for s in split.shards],
            "samples_crc32": zlib.crc32(np.ascontiguousarray(split.crc32).tobytes())}


def cache_paths(data: OpenSplit, size: int) -> tuple[Path, Path]:
    base = data.index.root / CACHE_DIR / f"{data.split.name}-{size}px"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def load_pixels(data: OpenSplit, size: int, *, workers: int = 0, cache: bool = True) -> np.ndarray:
    """uint8 [N,C,size,size] of every sample of the split, in sample-id order."""
    key = cache_key(data, size)
    pixels = _read_cache(data, size, key) if cache else None
    if pixels is None:
        pixels = decode_all(data, size, workers)
        if cache:
            _write_cache(data, size, key, pixels)
    return pixels


def decode_all(data: OpenSplit, size: int, workers: int = 0) -> np.ndarray:
    """Decode a whole split, in `workers` processes for large splits (0: all cores)."""
    n = len(data.split)
    chunks = np.array_split(np.arange(n), max(1, -(-n // 4096)))
    workers = workers or mp.cpu_count()
    decoder = ChipDecoder(data, size)
    if n < PARALLEL_ABOVE or workers <= 1:
        return np.concatenate([decoder(c).numpy() for c in chunks]) if n else np.zeros((0, data.channels, size, size), np.uint8)
    with mp.get_context("spawn").Pool(workers, _init_worker, (decoder,)) as pool:
        return np.concatenate(pool.map(_decode_chunk, chunks))


_DECODER: ChipDecoder | None = None


def _init_worker(decoder: ChipDecoder) -> None:
    global _DECODER
    _DECODER = decoder


def _decode_chunk(ids: np.ndarray) -> np.ndarray:
    return _DECODER(ids).numpy()


def _read_cache(data: OpenSplit, size: int, key: dict) -> np.ndarray | None:
    npy, meta = cache_paths(data, size)
    try:
        stored = json.loads(meta.read_text())
        if stored.get("key") != key:
            return None
        pixels = np.load(npy, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if pixels.dtype != np.uint8 or pixels.shape != (len(data.split), data.channels, size, size) \
            or zlib.crc32(pixels) != stored.get("crc32"):
        print(f"{npy}: cached pixels do not match their record; decoding again", file=sys.stderr)
        return None
    return pixels


def _write_cache(data: OpenSplit, size: int, key: dict, pixels: np.ndarray) -> None:
    npy, meta = cache_paths(data, size)
    try:
        with atomic_path(npy) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, pixels, allow_pickle=False)
        write_json(meta, {"key": key, "crc32": zlib.crc32(pixels)}, indent=1)
    except OSError as e:  # a read-only shard folder: keep the pixels in memory only
        print(f"{npy.parent}: cannot cache decoded pixels ({e.strerror}); continuing without", file=sys.stderr)


class ResidentStream:
    """Iterable of (images float32 [B,C,S,S], labels int64 [B], ids int64 [B]) for one rank, all
    on `device`, from a split held in memory. The same batches as ShardStream for the same spec."""

    def __init__(self, root: Path | str, split: str, spec: StreamSpec, *, device: str | torch.device = "cpu",
                 pixels: torch.Tensor | None = None, workers: int = 0, cache: bool = True) -> None:
        self.data = open_split(root, split, spec)
        self.spec, self.device = spec, torch.device(device)
        self.classes: list[str] = self.data.classes
        self.class_counts: np.ndarray = self.data.class_counts
        if pixels is None:
            pixels = torch.from_numpy(load_pixels(self.data, spec.input_size, workers=workers, cache=cache))
        self.images = pixels.to(self.device)
        self.labels = torch.from_numpy(self.data.split.labels.astype(np.int64)).to(self.device)
        self.epoch, self.start_batch = 0, 0
        self._plan: tuple[int, torch.Tensor, list[int]] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _batches(self) -> tuple[torch.Tensor, list[int]]:
        """The epoch's ids as one device tensor and the batch boundaries: one copy per epoch."""
        if self._plan is None or self._plan[0] != self.epoch:
            batches = self.data.batches(self.spec, self.epoch)
            ids = torch.from_numpy(np.concatenate(batches).astype(np.int64)).to(self.device)
            self._plan = (self.epoch, ids, np.cumsum([0] + [len(b) for b in batches]).tolist())
        return self._plan[1], self._plan[2]

    def __len__(self) -> int:
        return len(self._batches()[1]) - 1

    def __iter__(self) -> Iterator[Batch]:
        ids, bounds = self._batches()
        for b in range(self.start_batch, len(bounds) - 1):
            yield self.load_batch(b, ids[bounds[b]:bounds[b + 1]])

    def load_batch(self, b: int, ids: torch.Tensor) -> Batch:
        x, norm, spec = self.images[ids], self.data.normalizer, self.spec
        if spec.augment is not None:
            gen = torch.Generator(self.device).manual_seed(batch_seed(spec.seed, self.epoch, spec.rank, b))
            x = norm.from_unit(augment_batch(x, spec.augment, gen, self.data.speckle_channels))
        else:
            x = norm.from_uint8(x)
        return x, self.labels[ids], ids
