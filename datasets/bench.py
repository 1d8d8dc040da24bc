"""`python -m datasets bench`: loader throughput, side by side in one run.

--loader reader (default): decoded images/s of the resident stream (the split decoded once into
one uint8 tensor, batches gathered from it), the shard reader (ShardStream, PNG decode per
batch) and torchvision ImageFolder + PIL + DataLoader on the SAME chips (the split's keys),
same batch size, workers and output (float32 [B,1,S,S], normalised), instance sampling, no
augmentation.
--loader torch|dali: the balanced stage-3 stream (per-class sampling, strong augmentation):
resident (augmented on its device), torch (ShardStream + DataLoader workers) and, where
datasets.dali imports, DALI fed PNG bytes and DALI fed the resident tensor.
The resident tensor lives on the GPU when CUDA is usable (as the trainer keeps it), else in RAM;
decoding it (or reading the cache beside the shards) is timed apart, once. The clock starts at
each loader's first batch (warm-up excluded) and stops after --seconds / --rounds; loaders take
turns, so a change in machine load hits them all alike. Ratios are printed side by side.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from PIL import Image

from datasets.augment import AugmentSpec
from datasets.resident import ResidentStream, load_pixels
from datasets.sampling import SamplingSpec
from datasets.stream import ShardStream, make_loader
from datasets.stream_spec import StreamSpec, open_split
from shards.errors import DataError, exit_on_error
from shards.index import ClassIndex
from shards.names import is_chip

# Stage-3 style augmentation: everything on, so the bench measures the expensive path.
STRONG = AugmentSpec(rotate="free", hflip=True, vflip=True, crop_scale=(0.6, 1.0), translate=4,
                     speckle=0.3, brightness=0.2, contrast=0.2)
SAMPLES_PER_SECOND_CAP = 50_000   # sizes the single long epoch of the DataLoader paths


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m datasets bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--shards", required=True, type=Path, help="shard folder (OUT of shards build)")
    p.add_argument("--raw", type=Path, help="raw class folders of the same chips (reader mode)")
    p.add_argument("--split", default="train")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seconds", type=float, default=10.0, help="timed seconds per loader")
    p.add_argument("--rounds", type=int, default=2, help="alternate the loaders this many times")
    p.add_argument("--input-size", type=int, default=56)
    p.add_argument("--loader", choices=("reader", "torch", "dali"), default="reader",
                   help="reader: resident vs shard reader vs ImageFolder; torch|dali: the augmented "
                        "stage-3 stream, resident vs torch vs DALI (PNG) vs DALI (resident)")
    p.add_argument("--dali-threads", type=int, default=min(4, os.cpu_count() or 1),
                   help="DALI's CPU threads (data.dali_threads in a recipe)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads of this process (the resident stream's; 0: torch's default). On "
                        "a loaded machine 1 can be much faster: idle OpenMP threads spin for cores")
    return p.parse_args(argv)


def throughput(batches: Iterable[Any], seconds: float) -> tuple[float, int]:
    """Images/s after the first batch (warm-up: worker start, first reads, pipeline build), and
    images timed. CUDA work is waited for at both ends, so queued kernels are not counted as done."""
    it = iter(batches)
    wait(next(it))
    start, images = time.perf_counter(), 0
    for batch in it:
        images += len(batch[0])
        if time.perf_counter() - start >= seconds:
            wait(batch)
            break
    elapsed = time.perf_counter() - start
    return (images / elapsed if elapsed > 0 else 0.0), images


def wait(batch: Any) -> None:
    if isinstance(batch[0], torch.Tensor) and batch[0].is_cuda:
        torch.cuda.synchronize(batch[0].device)


def epochs(stream: Any) -> Iterable[Any]:
    """Batches of epoch 0, 1, 2, … of a stream without workers: no epoch ever runs out."""
    for epoch in itertools.count():
        stream.set_epoch(epoch)
        yield from stream


def epoch_size(n: int, seconds: float) -> int:
    return max(n, math.ceil(seconds * SAMPLES_PER_SECOND_CAP))


def alternate(loaders: dict[str, Callable[[], Iterable]], seconds: float, rounds: int) -> dict[str, tuple[float, int]]:
    """Time each loader `rounds` times, taking turns, so a change in machine load (shared
    cores) hits all of them alike; returns images/s over all rounds and images timed."""
    images = {name: 0 for name in loaders}
    spent = {name: 0.0 for name in loaders}
    for _ in range(rounds):
        for name, make in loaders.items():
            rate, n = throughput(make(), seconds / rounds)
            images[name] += n
            spent[name] += n / rate if rate > 0 else 0.0
    return {name: (images[name] / spent[name] if spent[name] > 0 else 0.0, images[name])
            for name in loaders}


def report(rates: dict[str, tuple[float, int]], labels: dict[str, str], ratios: list[tuple[str, str]]) -> None:
    """One line per loader (images/s), then the ratios asked for among those that ran."""
    width = max(len(labels[name]) for name in rates) + 1
    for name, (rate, n) in rates.items():
        print(f"{labels[name] + ':':<{width}} {rate:10.0f} images/s ({n} images)")
    for a, b in ratios:
        if a in rates and b in rates:
            print(f"ratio {a} / {b}: {rates[a][0] / max(rates[b][0], 1e-9):.2f}x")


def resident_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resident_pixels(args: argparse.Namespace, spec: StreamSpec) -> torch.Tensor:
    """The split decoded once (or read from its checked cache), timed apart: a one-off cost."""
    start = time.perf_counter()
    data = open_split(args.shards, args.split, spec)
    pixels = torch.from_numpy(load_pixels(data, args.input_size, workers=args.workers)).to(resident_device())
    print(f"resident: {len(pixels)} chips at {args.input_size} px decoded or read from the cache in "
          f"{time.perf_counter() - start:.2f} s, held on {pixels.device}")
    return pixels


def open_gray(path: str) -> Image.Image:
    """ImageFolder's loader: 8-bit grayscale as stored (the default loader converts to RGB)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("L")


class KeepKeys:
    """is_valid_file for ImageFolder: SAR_*.png of the split only (EO_*.png and others skipped)."""

    def __init__(self, keys: set[str]):
        self.keys = keys

    def __call__(self, path: str) -> bool:
        name = os.path.basename(path)
        return is_chip(name, "sar") and name[:-4] in self.keys


def imagefolder_loader(raw: Path, keys: set[str], args: argparse.Namespace,
                       mean: float, std: float, samples: int) -> tuple[torch.utils.data.DataLoader, int]:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    transform = v2.Compose([v2.PILToTensor(), v2.CenterCrop(args.input_size),
                            v2.ToDtype(torch.float32, scale=True), v2.Normalize([mean], [std])])
    try:
        ds = ImageFolder(str(raw), transform=transform, loader=open_gray, is_valid_file=KeepKeys(keys))
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{raw}: ImageFolder cannot read it ({e})") from None
    sampler = torch.utils.data.RandomSampler(ds, num_samples=samples,
                                             generator=torch.Generator().manual_seed(0))
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, sampler=sampler,
                                         num_workers=args.workers, persistent_workers=False)
    return loader, len(ds)


def raw_class_root(raw: Path) -> Path:
    """Accept the class-folder root or a synth output folder holding train_images/."""
    if not raw.is_dir():
        raise DataError(f"{raw}: not a folder")
    return raw / "train_images" if (raw / "train_images").is_dir() else raw


def bench_reader(args: argparse.Namespace) -> None:
    if args.raw is None:
        raise DataError("--raw is required for --loader reader (ImageFolder side)")
    split = ClassIndex.load(args.shards).split(args.split)
    size = epoch_size(len(split), args.seconds)
    spec = StreamSpec(args.batch_size, SamplingSpec(kind="instance", epoch_size=size), None, args.input_size)
    stream = ShardStream(args.shards, args.split, spec)
    norm, raw, keys = stream.data.normalizer, raw_class_root(args.raw), set(split.keys)
    _, found = imagefolder_loader(raw, keys, args, norm.mean, norm.std, size)
    if found != len(split):
        raise DataError(f"{args.raw}: ImageFolder found {found} of the {len(split)} "
                        f"{args.split} chips of {args.shards}; is it the raw folder they were built from?")
    print(f"chips: {len(split)} ({args.split}), batch {args.batch_size}, workers {args.workers}, "
          f"{args.rounds} x {args.seconds / args.rounds:g} s each, cpus {os.cpu_count()}, "
          f"torch threads {torch.get_num_threads()}")
    pixels = resident_pixels(args, spec)
    rates = alternate({
        "resident": lambda: epochs(ResidentStream(args.shards, args.split, spec, device=pixels.device, pixels=pixels)),
        "shard reader": lambda: make_loader(stream, args.workers),
        "ImageFolder": lambda: imagefolder_loader(raw, keys, args, norm.mean, norm.std, size)[0]},
        args.seconds, args.rounds)
    report(rates, {"resident": f"resident (ResidentStream, gathered on {pixels.device.type})",
                   "shard reader": "shard reader (ShardStream, decode_png)",
                   "ImageFolder": "ImageFolder + PIL + DataLoader"},
           [("shard reader", "ImageFolder"), ("resident", "shard reader"), ("resident", "ImageFolder")])


def bench_augmented(args: argparse.Namespace) -> None:
    index = ClassIndex.load(args.shards)
    split = index.split(args.split)
    per_class = math.ceil(epoch_size(len(split), args.seconds) / index.num_classes)
    spec = StreamSpec(args.batch_size, SamplingSpec(kind="class", per_class=per_class), STRONG, args.input_size)
    print(f"stage-3 stream: per_class={per_class}, strong augmentation, batch {args.batch_size}, "
          f"workers {args.workers}, dali threads {args.dali_threads}, "
          f"{args.rounds} x {args.seconds / args.rounds:g} s each, cpus {os.cpu_count()}, "
          f"torch threads {torch.get_num_threads()}")
    pixels = resident_pixels(args, spec)
    loaders: dict[str, Callable[[], Iterable]] = {
        "resident": lambda: epochs(ResidentStream(args.shards, args.split, spec, device=pixels.device, pixels=pixels)),
        "torch": lambda: make_loader(ShardStream(args.shards, args.split, spec), args.workers)}
    loaders.update(dali_factories(args, spec, pixels))
    rates = alternate(loaders, args.seconds, args.rounds)
    device = "gpu" if torch.cuda.is_available() else "cpu"
    report(rates, {"resident": f"resident (ResidentStream, augment_batch on {pixels.device.type})",
                   "torch": "torch (ShardStream + DataLoader)",
                   "dali": f"dali ({device}, DaliStream)",
                   "dali resident": f"dali resident ({device}, DaliStream fed the resident tensor)"},
           [("dali", "torch"), ("resident", "torch"), ("dali resident", "torch"),
            ("dali resident", "dali"), ("dali resident", "resident")])


def dali_factories(args: argparse.Namespace, spec: StreamSpec, pixels: torch.Tensor) -> dict[str, Callable]:
    """Makers of DaliStreams fed PNG bytes and fed the resident tensor, or none (after saying
    why) where DALI cannot run here."""
    try:
        from datasets.dali import DaliStream

        device = "gpu" if torch.cuda.is_available() else "cpu"
        makers = {"dali": lambda: DaliStream(args.shards, args.split, spec, device=device,
                                             num_threads=args.dali_threads),
                  "dali resident": lambda: DaliStream(args.shards, args.split, spec, device=device,
                                                      num_threads=args.dali_threads, pixels=pixels)}
        for make in makers.values():
            make()  # fail here, once, rather than mid-benchmark
        return {name: (lambda make=make: epochs(make())) for name, make in makers.items()}
    except DataError:
        raise
    except Exception as e:  # DALI missing or broken: say so, keep the other numbers
        print(f"dali: unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return {}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    return exit_on_error(lambda: _bench(args))


def _bench(args: argparse.Namespace) -> int:
    if min(args.batch_size, args.rounds, args.dali_threads) < 1 or min(args.workers, args.threads) < 0 \
            or args.seconds <= 0:
        raise DataError("--batch-size, --rounds and --dali-threads must be >= 1, --workers and "
                        "--threads >= 0, --seconds > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_reader(args) if args.loader == "reader" else bench_augmented(args)
    return 0
