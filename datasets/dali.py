"""DaliStream: the balanced (or any) sampling stream augmented by DALI.

Same iterable-of-batches interface as `datasets.stream.ShardStream`. The sampler
(`epoch_plan` + `rank_batches`) picks the sample ids of every batch; `external_source`
callbacks hand DALI the batch's pixels and the per-sample augmentation parameters, drawn in
numpy (see `datasets.dali_ops`); DALI augments; batches come out as torch tensors on this
process's GPU, or on the CPU in DALI's CPU mode (`device_id=None`).

Chips have C channels, every modality of the split stacked in its order (gray SAR: 1, RGB
EO: 3, SAR+EO: 4 = sar then eo_rgb), as in `datasets.decode`. Two sources of pixels:
- resident (`pixels=`, the split decoded once, `datasets.resident.load_pixels`): the source
  gathers the batch from that uint8 [N,C,S,S] tensor as HWC (on the GPU in GPU mode, handed
  over as GPU memory); no decode. Labels and ids are gathered on the same device.
- PNG (default): the source reads each member's PNG bytes through `SampleReader`; DALI decodes
  them (gray or RGB; on the CPU: `device='mixed'` decodes only JPEG on the GPU), places the
  primary on the S×S canvas, resizes the partners to S×S (linear, antialiased: torch's
  bilinear antialiased resize to within a grey level or so, not bit for bit) and stacks them.
  Labels and ids are copied from pinned memory without blocking.
One pipeline serves the whole stream: its sources read the pass that `__iter__` starts (from
set_epoch's epoch and start batch), a pass ends with StopIteration and `pipe.reset()`.
"""
from __future__ import annotations

import io
import os
import re
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from nvidia.dali import Pipeline, fn, types
from nvidia.dali.plugin.pytorch.torch_utils import to_torch_tensor

from datasets.augment import AugmentSpec
from datasets.dali_ops import PARAM_TYPES, augment_graph, draw_params, effective, noise_bank, used_params
from datasets.resident import load_pixels
from datasets.stream_spec import Batch, OpenSplit, StreamSpec, open_split
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


def resident_pixels(root: Path | str, split: str, spec: StreamSpec, budget: float, *,
                    workers: int = 0) -> torch.Tensor | None:
    """The split decoded once (uint8 [N,C,S,S], cached beside the shards) when it takes at most
    `budget` bytes, else None (the PNG path)."""
    data = open_split(root, split, spec)
    if len(data.split) * data.channels * spec.input_size ** 2 > budget:
        return None
    return torch.from_numpy(load_pixels(data, spec.input_size, workers=workers))


@dataclass
class _Pass:
    """One pass over (the rest of) an epoch: what the sources hand DALI, iteration by iteration."""
    epoch: int
    batches: list[np.ndarray]              # the epoch's batches (sample ids)
    todo: list[int]                        # batch numbers of this pass, in order
    ids: torch.Tensor | None = None        # resident: the epoch's ids on the pixels' device
    bounds: list[int] | None = None        # resident: batch b is ids[bounds[b]:bounds[b + 1]]
    in_flight: deque = field(default_factory=deque)   # batch numbers fed, not yet delivered
    open: bool = True                      # False: abandoned; the sources end it at once


class _Feeder:
    """The external_source callbacks. They hold no reference to the stream (no cycle through
    the pipeline) and read `current`, the pass DaliStream.__iter__ started."""

    def __init__(self, data: OpenSplit, spec: StreamSpec, augment: AugmentSpec,
                 pixels: np.ndarray | torch.Tensor | None) -> None:
        self.split, self.spec, self.augment = data.split, spec, augment
        self.reader = SampleReader(data.split)
        self.pixels = pixels
        self.members = list(data.split.modalities) if pixels is None else []   # PNG: read each
        self.stacked = len(self.members) > 1     # the primary's canvas is its own column then
        start, stop = data.speckle_channels
        self.sar_channels = stop - start
        self.noise = noise_bank(augment.speckle, spec.seed, spec.input_size)
        self.names = used_params(augment, self.stacked)
        self.stream: torch.cuda.Stream | None = None   # GPU pixels: gathered, and copied by DALI, on it
        self.current: _Pass | None = None

    def _next(self, info) -> tuple[_Pass, int]:
        p = self.current
        if p is None or not p.open or info.iteration >= len(p.todo):
            raise StopIteration
        return p, p.todo[info.iteration]

    def images(self, info) -> tuple:
        """PNG path: (padded bytes, lengths) of each member, in modality order; resident:
        (uint8 [B,S,S,C] on the pixels' device,)."""
        p, number = self._next(info)
        p.in_flight.append(number)
        ids = p.batches[number]
        if self.pixels is None:
            return tuple(a for m in self.members for a in padded_bytes([self.reader.read(int(i), m)
                                                                        for i in ids]))
        size, one = self.spec.input_size, self.pixels.shape[1] == 1   # CHW of one channel is HWC
        if isinstance(self.pixels, np.ndarray):       # CPU: a numpy take straight into one array
            batch = np.take(self.pixels, ids, axis=0)
            return (batch.reshape(len(ids), size, size, 1) if one else
                    np.ascontiguousarray(batch.transpose(0, 2, 3, 1)),)
        with torch.cuda.stream(self.stream):           # DALI copies on this stream too: ordered
            ids = p.ids[p.bounds[number]:p.bounds[number + 1]]
            batch = self.pixels.index_select(0, ids)
            return (batch.view(len(ids), size, size, 1) if one else batch.permute(0, 2, 3, 1).contiguous(),)

    def params(self, info) -> tuple[np.ndarray, ...]:
        """The batch's augmentation parameters, from a generator seeded by (seed, epoch, rank,
        batch number): the same whichever pass, source or device."""
        p, number = self._next(info)
        ids = p.batches[number]
        rng = np.random.default_rng([self.spec.seed, p.epoch, self.spec.rank, number, _PARAM_SALT])
        if self.pixels is None:
            height, width = self.split.height[ids], self.split.width[ids]
        else:                                          # resident chips are already S×S
            height = width = np.full(len(ids), self.spec.input_size)
        return draw_params(self.augment, height, width, self.spec.input_size, rng, self.noise,
                           sar_channels=self.sar_channels, separate_canvas=self.stacked).columns(self.names)


class DaliStream:
    """Iterable of (images [B,C,S,S], labels int64 [B], ids int64 [B]) batches for one rank."""

    def __init__(self, root, split: str, spec: StreamSpec, *, device: str = "auto",
                 dtype: torch.dtype = torch.float32, channels_last: bool = False,
                 num_threads: int = 2, pixels: torch.Tensor | None = None) -> None:
        self.data = open_split(root, split, spec)
        self.spec = spec
        self._split = self.data.split
        if dtype not in _DTYPES:
            raise DataError(f"{self.data.where()}: dtype must be float32, float16 or bfloat16, got {dtype}")
        if num_threads < 1:
            raise DataError(f"{self.data.where()}: num_threads must be >= 1, got {num_threads}")
        self.classes: list[str] = self.data.classes
        self.class_counts: np.ndarray = self.data.class_counts
        self.augment = effective(spec.augment or AugmentSpec(), self.data.speckle_channels)
        self.channels = self._check_channels()
        self.device = resolve_device(device, self.data.where())
        self.torch_device = torch.device("cuda", local_gpu()) if self.device == "gpu" else torch.device("cpu")
        self.dtype, self.channels_last, self.num_threads = dtype, channels_last, num_threads
        self.pixels = self._place(pixels)
        self._labels = None if self.pixels is None else \
            torch.from_numpy(self._split.labels.astype(np.int64)).to(self.torch_device)
        self._feeder = _Feeder(self.data, spec, self.augment,
                               self.pixels.numpy() if self.pixels is not None and self.device == "cpu" else self.pixels)
        if self.pixels is not None and self.device == "gpu":   # a side stream: the gather and
            self._feeder.stream = torch.cuda.Stream(self.torch_device)   # copy do not wait for training
        self._pipe: Pipeline | None = None
        self._pipe_batch = 0
        self.builds = 0                                  # pipelines built: one per stream
        self._epoch_ids: tuple[int, torch.Tensor, list[int]] | None = None
        self.set_epoch(0)

    def _check_channels(self) -> int:
        """The chips' channel count; DALI decodes each member as gray (1) or RGB (3)."""
        odd = {m: c for m in self._split.modalities if (c := self._split.stats(m).channels) not in (1, 3)}
        if odd:
            raise DataError(f"{self.data.where()}: DALI decodes gray or RGB members only, channels: {odd}")
        return self.data.channels

    def _place(self, pixels: torch.Tensor | np.ndarray | None) -> torch.Tensor | None:
        """The resident pixels on the device DALI reads them from, checked against the split."""
        if pixels is None:
            return None
        pixels = torch.as_tensor(pixels)
        want = (len(self._split), self.channels, self.spec.input_size, self.spec.input_size)
        if pixels.dtype != torch.uint8 or tuple(pixels.shape) != want:
            raise DataError(f"{self.data.where()}: resident pixels must be uint8 "
                            f"{want}, got {pixels.dtype} {tuple(pixels.shape)}")
        return pixels.to(self.torch_device).contiguous()

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
    def __iter__(self) -> Iterator[Batch]:
        """Start a pass over the current epoch from start_batch. The batches are fixed here,
        whatever set_epoch does later; a pass left unfinished is closed by the next one."""
        self._close_pass()
        todo = list(range(self.start_batch, len(self._batches)))
        if not todo:
            return iter(())
        pipe = self._pipeline(max(len(self._batches[n]) for n in todo))
        p = _Pass(self.epoch, self._batches, todo)
        if self.pixels is not None:
            p.ids, p.bounds = self._device_ids()
        self._feeder.current = p
        return self._deliver(pipe, p)

    def _deliver(self, pipe: Pipeline, p: _Pass) -> Iterator[Batch]:
        while self._feeder.current is p:       # an iterator of an older pass just stops
            try:
                (images,) = pipe.run()
            except StopIteration:              # the sources ran out: the end of this pass
                pipe.reset()
                self._feeder.current = None
                return
            except RuntimeError as err:        # DALI failed (a PNG that does not decode)
                self._discard()
                raise self._decode_error([p.batches[n] for n in p.in_flight], err) from None
            except BaseException:              # a source raised (DataError of a bad shard)
                self._discard()
                raise
            number = p.in_flight.popleft()
            out = self._to_torch(images, pipe)
            labels, ids = self._labels_ids(p, number)
            self.position = number + 1
            yield out, labels, ids

    def _close_pass(self) -> None:
        """End a pass left unfinished: its sources stop, the batches DALI had already prefetched
        (at most the queue depth) are dropped, and the pipeline is reset for the next pass."""
        p, self._feeder.current = self._feeder.current, None
        if p is None or self._pipe is None:
            return
        p.open = False
        try:
            while True:
                self._pipe.run()
        except StopIteration:
            self._pipe.reset()
        except Exception:   # a prefetched batch that fails belongs to the abandoned pass
            self._discard()

    def _discard(self) -> None:
        """After a failure the pipeline's state is unknown: the next pass builds a new one."""
        self._feeder.current, self._pipe, self._pipe_batch = None, None, 0

    def _device_ids(self) -> tuple[torch.Tensor, list[int]]:
        """The epoch's ids as one tensor on the pixels' device: one copy per epoch."""
        if self._epoch_ids is None or self._epoch_ids[0] != self.epoch:
            ids = torch.from_numpy(np.concatenate(self._batches).astype(np.int64)).to(self.torch_device)
            bounds = np.cumsum([0] + [len(b) for b in self._batches]).tolist()
            self._epoch_ids = (self.epoch, ids, bounds)
            if self._feeder.stream is not None:   # ids and pixels were copied on the current stream
                self._feeder.stream.wait_stream(torch.cuda.current_stream(self.torch_device))
                ids.record_stream(self._feeder.stream)   # read there: freed only after those reads
        return self._epoch_ids[1], self._epoch_ids[2]

    def _labels_ids(self, p: _Pass, number: int) -> tuple[torch.Tensor, torch.Tensor]:
        if p.ids is not None:                  # resident: already on the device
            ids = p.ids[p.bounds[number]:p.bounds[number + 1]]
            return self._labels[ids], ids
        batch = p.batches[number]
        both = torch.from_numpy(np.stack([self._split.labels[batch], batch]).astype(np.int64))
        if self.device == "gpu":               # one pinned buffer, copied without a host sync
            both = both.pin_memory().to(self.torch_device, non_blocking=True)
        return both[0], both[1]

    # -- the pipeline ------------------------------------------------------------------
    def _pipeline(self, largest: int) -> Pipeline:
        """The stream's pipeline, built on first use; again only after a failure or for an epoch
        whose batches are larger than any before (a plan too short for whole batches)."""
        if self._pipe is None or self._pipe_batch < largest:
            self._pipe_batch = max(self.spec.batch_size, largest)
            self._pipe = self._build(self._pipe_batch)
        return self._pipe

    def _build(self, batch_size: int) -> Pipeline:
        """source -> (decode) -> augment -> normalise."""
        gpu, feeder = self.device == "gpu", self._feeder
        pipe = Pipeline(batch_size=batch_size, num_threads=self.num_threads,
                        device_id=self.torch_device.index if gpu else None, seed=self.spec.seed,
                        prefetch_queue_depth=2)
        with pipe:
            columns = fn.external_source(source=feeder.params, num_outputs=len(feeder.names), batch=True,
                                         batch_info=True, dtype=[PARAM_TYPES[n] for n in feeder.names])
            params = dict(zip(feeder.names, columns))
            if self.pixels is None:
                image = self._png_graph(params, gpu)
            else:
                (image,) = fn.external_source(source=feeder.images, num_outputs=1, batch=True,
                                              batch_info=True, dtype=[types.UINT8], layout=["HWC"],
                                              device="gpu" if gpu else "cpu", cuda_stream=feeder.stream)
            x = augment_graph(image, params, self.augment, self.spec.input_size, "gpu" if gpu else "cpu",
                              channels=self.channels, sar=self.data.speckle_channels)
            norm = self.data.normalizer
            mean, std = ((norm.mean * 255.0, norm.std * 255.0) if self.channels == 1 else
                         ([m * 255.0 for m in norm.mean], [v * 255.0 for v in norm.std]))
            out = fn.crop_mirror_normalize(x, mean=mean, std=std, dtype=_DTYPES[self.dtype],
                                           output_layout="CHW")
            pipe.set_outputs(out)
        pipe.build()
        self.builds += 1
        return pipe

    def _png_graph(self, params: dict, gpu: bool):
        """Every member's bytes decoded (gray or RGB); one modality: the decoded image, placed
        by the graph's `place` warp. Several: the primary placed on the S×S canvas by its own
        `canvas` warp, the partners resized to S×S, stacked along the channels."""
        members = self._feeder.members
        outs = fn.external_source(source=self._feeder.images, num_outputs=2 * len(members), batch=True,
                                  batch_info=True, dtype=[types.UINT8, types.INT32] * len(members))
        decoded = []
        for k, m in enumerate(members):
            encoded = fn.slice(outs[2 * k], types.Constant(np.zeros(1, np.int32)), outs[2 * k + 1], axes=[0])
            kind = types.GRAY if self._split.stats(m).channels == 1 else types.RGB
            decoded.append(fn.decoders.image(encoded, device="mixed" if gpu else "cpu", output_type=kind))
        if len(decoded) == 1:
            return decoded[0]
        size = self.spec.input_size
        canvas = fn.warp_affine(decoded[0], matrix=params["canvas"], size=[size, size],
                                interp_type=types.INTERP_NN)
        partners = [fn.resize(d, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True)
                    for d in decoded[1:]]
        return fn.cat(canvas, *partners, axis=2)

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
                for m in self._split.modalities:
                    data = self._feeder.reader.read(int(i), m)
                    try:
                        with Image.open(io.BytesIO(data)) as im:
                            im.load()
                    except Exception as exc:  # PIL raises several types for broken files
                        what = "" if m == self._split.modalities[0] else f"{m} member "
                        return self._sample_error(int(i), f"{what}does not decode as an image ({exc})")
        match = re.search(r"sample #(\d+)", first_line)   # PIL took it: trust DALI's count
        if pending and match and int(match.group(1)) < len(pending[0]):
            return self._sample_error(int(pending[0][int(match.group(1))]),
                                      f"does not decode as an image ({first_line.strip()})")
        return err

    def _sample_error(self, i: int, what: str) -> DataError:
        shard = self._split.shard_path(int(self._split.shard[i]))
        return DataError(f"{shard}: sample {self._split.keys[i]} {what}")
