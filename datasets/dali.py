"""DaliStream: the balanced (or any) sampling stream decoded and augmented by DALI.

Same iterable-of-batches interface as `datasets.stream.ShardStream`. The sampler
(`epoch_plan` + `rank_batches`) picks the sample ids of every batch; an `external_source`
callback reads their PNG bytes through `SampleReader` and draws the per-sample augmentation
parameters in numpy (see `datasets.dali_ops`); DALI decodes (`device='mixed'` on a GPU) and
augments; batches come out as torch tensors on this process's GPU, or on the CPU in DALI's
CPU mode (`device_id=None`). Nothing is written to disk: every epoch draws a fresh set.
"""
from __future__ import annotations

import io
import os
import re
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from nvidia.dali import Pipeline, fn, types
from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

from datasets.augment import AugmentSpec
from datasets.dali_ops import PARAM_TYPES, augment_graph, draw_params, noise_bank, used_params
from datasets.stream_spec import StreamSpec, open_split
from shards.access import SampleReader
from shards.errors import DataError

_PARAM_SALT = 0xDA11
_DTYPES = {torch.float32: types.FLOAT, torch.float16: types.FLOAT16, torch.bfloat16: types.FLOAT}


def resolve_device(device: str, where: str) -> str:
    """'auto' -> 'gpu' when CUDA is usable, else 'cpu'; 'gpu' without CUDA is an error."""
    if device not in ("auto", "cpu", "gpu"):
        raise DataError(f"{where}: device must be auto, cpu or gpu, got {device!r}")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise DataError(f"{where}: device='gpu' asked for, but CUDA is not available")
    return device


def local_gpu() -> int:
    """This process's GPU: LOCAL_RANK as set by accelerate/torchrun (modulo the visible GPUs,
    for launchers that give each process one), else torch's current device."""
    return int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())) % torch.cuda.device_count()


def padded_bytes(samples: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [n, longest] zero-padded bytes + int32 [n, 1] lengths: two dense arrays cross
    into DALI far faster than n separate ones; the graph slices each back to its length."""
    lengths = np.array([len(b) for b in samples], dtype=np.int32)
    out = np.zeros((len(samples), int(lengths.max())), dtype=np.uint8)
    for row, data in zip(out, samples):
        row[:len(data)] = np.frombuffer(data, dtype=np.uint8)
    return out, lengths[:, None]


class DaliStream:
    """Iterable of (images [B,1,S,S], labels int64 [B], ids int64 [B]) batches for one rank."""

    def __init__(self, root, split: str, spec: StreamSpec, *, device: str = "auto",
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 num_threads: int = 2) -> None:
        self.data = open_split(root, split, spec)
        self.spec = spec
        self._split = self.data.split
        if dtype not in _DTYPES:
            raise DataError(f"{self.data.where()}: dtype must be float32, float16 or bfloat16, got {dtype}")
        self.classes: list[str] = self.data.classes
        self.class_counts: np.ndarray = self.data.class_counts
        self.augment = spec.augment or AugmentSpec()
        self.device = resolve_device(device, self.data.where())
        self.dtype, self.channels_last, self.num_threads = dtype, channels_last, num_threads
        self._reader = SampleReader(self._split)
        self._noise = noise_bank(self.augment.speckle, spec.seed, spec.input_size)
        self.set_epoch(0)

    # -- position in the stream --------------------------------------------------------
    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch (its sample plan) and the batch to start from (resume mid-epoch)."""
        batches = self.data.batches(self.spec, epoch)
        if not 0 <= start_batch <= len(batches):
            raise DataError(f"{self.data.where()}: start_batch {start_batch} outside 0..{len(batches)} "
                            f"in epoch {epoch}")
        self.epoch, self._batches = int(epoch), batches
        self.start_batch = self.position = int(start_batch)

    def __len__(self) -> int:
        """Batches per rank this epoch (same on every rank), including any skipped by start_batch."""
        return len(self._batches)

    def state_dict(self) -> dict:
        """Epoch and number of batches already delivered; load_state_dict continues after them."""
        return {"epoch": self.epoch, "batch": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(int(state["epoch"]), int(state["batch"]))

    # -- iteration ---------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        epoch, batches = self.epoch, self._batches   # fixed for this pass, whatever set_epoch does
        todo = list(range(self.start_batch, len(batches)))
        if not todo:
            return
        in_flight: deque[int] = deque()      # batch numbers handed to DALI, not yet delivered
        pipe = self._build(self._source(epoch, batches, todo, in_flight),
                           max(len(batches[n]) for n in todo))
        try:
            for _ in todo:
                try:
                    (images,) = pipe.run()
                except StopIteration:
                    break
                except RuntimeError as err:
                    raise self._decode_error([batches[n] for n in in_flight], err) from None
                number = in_flight.popleft()
                batch = batches[number]
                ids = torch.from_numpy(batch.astype(np.int64))
                labels = torch.from_numpy(self._split.labels[batch].astype(np.int64))
                out = self._to_torch(images, pipe)
                self.position = number + 1
                yield out, labels.to(out.device), ids.to(out.device)
        finally:
            del pipe

    def _source(self, epoch: int, batches: list[np.ndarray], todo: list[int], in_flight: deque):
        """external_source callback: bytes and parameters of the i-th batch still to do, the
        parameters drawn from a generator seeded by (seed, epoch, rank, batch number)."""
        names = used_params(self.augment)

        def feed(info):
            if info.iteration >= len(todo):
                raise StopIteration
            number = todo[info.iteration]
            ids = batches[number]
            data, lengths = padded_bytes([self._reader.read(int(i)) for i in ids])
            rng = np.random.default_rng([self.spec.seed, epoch, self.spec.rank, number, _PARAM_SALT])
            params = draw_params(self.augment, self._split.height[ids], self._split.width[ids],
                                 self.spec.input_size, rng, self._noise)
            in_flight.append(number)
            return (data, lengths, *params.columns(names))
        return feed

    def _build(self, source, largest: int) -> Pipeline:
        """source -> decode -> augment -> normalise; one pipeline per pass over an epoch."""
        gpu = self.device == "gpu"
        pipe = Pipeline(batch_size=max(self.spec.batch_size, largest), num_threads=self.num_threads,
                        device_id=local_gpu() if gpu else None, seed=self.spec.seed,
                        prefetch_queue_depth=2)
        names = used_params(self.augment)
        with pipe:
            padded, lengths, *columns = fn.external_source(
                source=source, num_outputs=2 + len(names), batch=True, batch_info=True,
                dtype=[types.UINT8, types.INT32] + [PARAM_TYPES[n] for n in names])
            params = dict(zip(names, columns))
            encoded = fn.slice(padded, types.Constant(np.zeros(1, np.int32)), lengths, axes=[0])
            image = fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=types.GRAY)
            x = augment_graph(image, params, self.augment, self.spec.input_size, "gpu" if gpu else "cpu")
            norm = self.data.normalizer
            out = fn.crop_mirror_normalize(x, mean=norm.mean * 255.0, std=norm.std * 255.0,
                                           dtype=_DTYPES[self.dtype], output_layout="CHW")
            pipe.set_outputs(out)
        pipe.build()
        return pipe

    def _to_torch(self, images, pipe: Pipeline) -> torch.Tensor:
        tensor = images.as_tensor()
        if self.device == "gpu":
            with torch.cuda.device(pipe.device_id):
                out = to_torch_tensor(tensor, copy=not pipe.exec_dynamic)
        else:
            out = to_torch_tensor(tensor, copy=not pipe.exec_dynamic)
        if out.dtype != self.dtype:
            out = out.to(self.dtype)
        if self.channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _decode_error(self, pending: list[np.ndarray], err: RuntimeError) -> Exception:
        """Map a DALI failure back to the shard and key of the sample that does not decode;
        `pending` holds the id arrays of the batches DALI had not delivered yet, oldest first."""
        from PIL import Image

        first_line = next((line for line in str(err).splitlines() if "decode" in line.lower()), "")
        for ids in pending:
            for i in ids:
                data = self._reader.read(int(i))
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        im.load()
                except Exception as exc:  # PIL raises several types for broken files
                    return self._sample_error(int(i), f"does not decode as an image ({exc})")
        match = re.search(r"sample #(\d+)", first_line)   # PIL took it: trust DALI's count
        if pending and match and int(match.group(1)) < len(pending[0]):
            return self._sample_error(int(pending[0][int(match.group(1))]),
                                      f"does not decode as an image ({first_line.strip()})")
        return err

    def _sample_error(self, i: int, what: str) -> DataError:
        shard = self._split.shard_path(int(self._split.shard[i]))
        return DataError(f"{shard}: sample {self._split.keys[i]} {what}")
