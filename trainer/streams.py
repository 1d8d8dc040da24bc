"""Which stream feeds the trainer, and how it is built: the one place the loader is chosen.

Every stream takes a `StreamSpec` (datasets/stream_spec.py) and yields the same batches; the
choice only decides where pixels are decoded and augmented.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from datasets.stream_spec import StreamSpec
from trainer.errors import ConfigError
from trainer.spec import StageSpec


def use_dali(loader: str) -> bool:
    """`dali` always uses DALI (its CPU mode without CUDA, which is what CI exercises);
    `auto` uses it only where it pays, with CUDA and DALI both present; `torch` never."""
    if loader == "torch":
        return False
    try:
        import datasets.dali  # noqa: F401
    except Exception as err:  # DALI missing or broken: the torch reader is always there
        if loader == "dali":
            raise ConfigError(f"data.loader: dali, but nvidia-dali does not import ({err}); "
                              "use data.loader=torch or auto") from err
        return False
    return loader == "dali" or torch.cuda.is_available()


def per_rank_batch(global_batch: int, world: int, grad_accum: int, key: str = "data.batch_size") -> int:
    parts = world * grad_accum
    if global_batch % parts:
        raise ConfigError(f"{key}: {global_batch} is not divisible by processes × grad_accum = {parts}")
    return global_batch // parts


@dataclass(frozen=True)
class Streams:
    """Builds the train and evaluation streams of a run for this rank."""
    shards: str
    loader: str            # auto | torch | dali (as the recipe says)
    input_size: int
    batch_size: int        # global
    eval_batch_size: int   # global
    num_workers: int
    dali_threads: int
    rank: int = 0
    world: int = 1

    @property
    def kind(self) -> str:
        return "dali" if use_dali(self.loader) else "torch"

    def open(self, split: str, spec: StreamSpec):
        if self.kind == "dali":
            from datasets.dali import DaliStream

            return DaliStream(self.shards, split, spec, num_threads=self.dali_threads)
        from datasets.stream import ShardStream

        return ShardStream(self.shards, split, spec)

    def train(self, stage: StageSpec, seed: int, *, batch_size: int | None = None,
              split: str = "train"):
        """The stream of one stage: its sampling and augmentation, `stage.epochs` long."""
        batch = per_rank_batch(batch_size or self.batch_size, self.world, stage.optim.grad_accum)
        return self.open(split, StreamSpec(batch, stage.sampling, stage.augment, self.input_size,
                                           seed, self.rank, self.world, max(1, stage.epochs)))

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
        from datasets.stream import make_loader

        with torch.random.fork_rng(devices=[]):
            return iter(make_loader(stream, self.num_workers))
