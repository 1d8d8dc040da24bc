"""Which stream feeds the trainer, and how it is built: the one place the loader is chosen.

Every stream takes a `StreamSpec` (datasets/stream_spec.py) and yields the same batches; the
choice only decides where pixels are decoded and augmented:
- resident: each split decoded once into memory (RAM, or the GPU's memory on CUDA), batches
  gathered and augmented there (datasets/resident.py). `auto` picks it whenever the splits fit.
- torch: PNGs decoded per batch in DataLoader worker processes (datasets/stream.py).
- dali: DALI's pipeline (datasets/dali.py), on the GPU or in its CPU mode.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from datasets.resident import ResidentStream
from datasets.stream import ShardStream, make_loader
from datasets.sampling import epoch_plan, sub_dataset_digest
from datasets.stream_spec import StreamSpec
from trainer.errors import ConfigError
from trainer.spec.resolve import StageSpec


RESIDENT_SHARE = 0.5   # auto goes resident when the decoded splits take at most this share of free memory


def check_dali() -> None:
    try:
        import datasets.dali  # noqa: F401  (optional: DALI is a large, CUDA-12 wheel)
    except Exception as err:
        raise ConfigError(f"data.loader: dali, but nvidia-dali does not import ({err}); "
                          "use data.loader=resident, torch or auto") from err


def choose_loader(loader: str, resident_bytes: int, device: torch.device) -> str:
    """resident | torch | dali. `auto` is resident when the decoded train/val/test splits fit in
    half the free memory of the device that will hold them, else the torch reader. Every loader
    takes any channel count (gray, RGB, SAR+EO stacked); the channels are in resident_bytes."""
    if loader == "dali":
        check_dali()
    if loader != "auto":
        return loader
    return "resident" if resident_bytes <= RESIDENT_SHARE * free_memory(device) else "torch"


def free_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil  # a dependency of accelerate

    return psutil.virtual_memory().available


def per_rank_batch(global_batch: int, world: int, grad_accum: int, key: str = "data.batch_size") -> int:
    parts = world * grad_accum
    if global_batch % parts:
        raise ConfigError(f"{key}: {global_batch} is not divisible by processes × grad_accum = {parts}")
    return global_batch // parts


def stage_seeds(run_seed: int, stage: StageSpec) -> tuple[int, int]:
    """(seed, draw_seed) of a stage's train stream: each stage orders and augments its own way,
    but a fixed sub-dataset (per_class) is drawn from the run's seed alone, so the stages that
    name the same per_class and classes share one draw (Li, Tan & Pan: 3b on the same set as 3a)."""
    return run_seed * 1000 + stage.index, run_seed


def sub_dataset(labels: np.ndarray, stage: StageSpec, run_seed: int) -> dict | None:
    """What RUN/run.json records of a stage's fixed sub-dataset (redraw stage): its size and the
    digest of its sample ids; None where each epoch draws afresh."""
    if stage.sampling.resolved_redraw != "stage":
        return None
    seed, draw_seed = stage_seeds(run_seed, stage)
    plan = epoch_plan(labels, stage.sampling, epoch=0, total_epochs=max(1, stage.epochs), seed=seed,
                      draw_seed=draw_seed)
    return {"samples": len(plan), "distinct": int(np.unique(plan).size), "digest": sub_dataset_digest(plan)}


@dataclass(frozen=True)
class Streams:
    """Builds the train and evaluation streams of a run for this rank."""
    shards: str
    kind: str              # resident | torch | dali (choose_loader)
    input_size: int
    batch_size: int        # global
    eval_batch_size: int   # global
    num_workers: int
    dali_threads: int
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    equal_batches: bool = False   # training batches of one size (set with speed.compile)
    pixels: dict = field(default_factory=dict, compare=False)   # (split, size) -> resident uint8 tensor

    def open(self, split: str, spec: StreamSpec):
        if self.kind == "dali":
            from datasets.dali import DaliStream, resident_pixels

            key = (split, spec.input_size)   # fed from the split decoded once when it fits, else PNGs
            pixels = self.pixels.get(key)
            if pixels is None:
                pixels = resident_pixels(self.shards, split, spec, RESIDENT_SHARE * free_memory(self.device),
                                         workers=self.num_workers)
            stream = DaliStream(self.shards, split, spec, num_threads=self.dali_threads, pixels=pixels)
            if stream.pixels is not None:
                self.pixels[key] = stream.pixels
            return stream
        if self.kind == "resident":
            key = (split, spec.input_size)
            stream = ResidentStream(self.shards, split, spec, device=self.device, pixels=self.pixels.get(key),
                                    workers=self.num_workers)
            self.pixels[key] = stream.images   # one copy per split, shared by train and eval streams
            return stream
        return ShardStream(self.shards, split, spec)

    def train(self, stage: StageSpec, seed: int, draw_seed: int | None = None):
        """The stream of one stage: its sampling and augmentation, `stage.epochs` long; `seed`
        orders and augments, `draw_seed` picks a fixed sub-dataset (stage_seeds)."""
        batch = per_rank_batch(self.batch_size, self.world, stage.optim.grad_accum)
        return self.open("train", StreamSpec(batch, stage.sampling, stage.augment, self.input_size,
                                           seed, self.rank, self.world, max(1, stage.epochs),
                                           self.equal_batches, draw_seed))

    def eval(self, split: str):
        """Every sample of `split` once, unaugmented, spread over the ranks."""
        batch = max(1, -(-self.eval_batch_size // self.world))
        return self.open(split, StreamSpec.sequential(batch, self.input_size, rank=self.rank,
                                                      world=self.world))

    def iterate(self, stream):
        """Batches of the stream's current epoch (DALI iterates itself; torch uses make_loader).
        The DataLoader draws a base seed from the global torch RNG when it starts; forking the RNG
        keeps that draw out of the model's random stream, so resume mid-epoch stays exact."""
        if not isinstance(stream, torch.utils.data.IterableDataset):
            return iter(stream)
        with torch.random.fork_rng(devices=[]):
            return iter(make_loader(stream, self.num_workers))
