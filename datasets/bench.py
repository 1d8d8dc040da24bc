"""`python -m datasets bench`: loader throughput, side by side in one run.

--loader reader (default): decoded images/s of the shard reader (ShardStream, instance
sampling, no augmentation) against torchvision ImageFolder + PIL + DataLoader on the SAME chips
(the split's keys), same batch size, workers and output (float32 [B,1,S,S], normalised).
--loader torch|dali: the balanced stage-3 stream (per-class sampling, strong augmentation) on
the torch path and, where datasets.dali imports, the DALI path.
Both sides draw one long epoch, so worker start-up is paid once; the clock starts at the
first batch (warm-up excluded) and stops after --seconds.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import torch
from PIL import Image

from datasets.augment import AugmentSpec
from datasets.sampling import SamplingSpec
from datasets.stream import ShardStream, make_loader
from datasets.stream_spec import StreamSpec
from shards.errors import DataError
from shards.index import ClassIndex

# Stage-3 style augmentation: everything on, so the bench measures the expensive path.
STRONG = AugmentSpec(rotate="free", hflip=True, vflip=True, crop_scale=(0.6, 1.0), translate=4,
                     speckle=0.3, brightness=0.2, contrast=0.2)
SAMPLES_PER_SECOND_CAP = 50_000   # sizes the single long epoch: more than any CPU path reaches


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
    p.add_argument("--loader", choices=("reader", "torch", "dali"), default="reader")
    return p.parse_args(argv)


def throughput(batches: Iterable[Any], seconds: float) -> tuple[float, int]:
    """Images/s after the first batch (warm-up: worker start, first reads), and images timed."""
    it = iter(batches)
    next(it)
    start, images = time.perf_counter(), 0
    for batch in it:
        images += len(batch[0])
        if time.perf_counter() - start >= seconds:
            break
    elapsed = time.perf_counter() - start
    return (images / elapsed if elapsed > 0 else 0.0), images


def epoch_size(n: int, seconds: float) -> int:
    return max(n, math.ceil(seconds * SAMPLES_PER_SECOND_CAP))


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
        return name.startswith("SAR_") and name.endswith(".png") and name[:-4] in self.keys


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
    stream = ShardStream(args.shards, args.split, StreamSpec(
        args.batch_size, SamplingSpec(kind="instance", epoch_size=size), None, args.input_size))
    raw, keys = raw_class_root(args.raw), set(split.keys)
    _, found = imagefolder_loader(raw, keys, args, stream.data.normalizer.mean, stream.data.normalizer.std, size)
    if found != len(split):
        raise DataError(f"{args.raw}: ImageFolder found {found} of the {len(split)} "
                        f"{args.split} chips of {args.shards}; is it the raw folder they were built from?")
    print(f"chips: {len(split)} ({args.split}), batch {args.batch_size}, workers {args.workers}, "
          f"{args.rounds} x {args.seconds / args.rounds:g} s each, cpus {os.cpu_count()}")
    rates = alternate({"shard": lambda: make_loader(stream, args.workers),
                       "folder": lambda: imagefolder_loader(raw, keys, args, stream.data.normalizer.mean, stream.data.normalizer.std, size)[0]},
                      args.seconds, args.rounds)
    (shard_rate, n1), (folder_rate, n2) = rates["shard"], rates["folder"]
    print(f"shard reader (ShardStream, decode_png): {shard_rate:10.0f} images/s ({n1} images)")
    print(f"ImageFolder + PIL + DataLoader:        {folder_rate:10.0f} images/s ({n2} images)")
    print(f"ratio shard reader / ImageFolder: {shard_rate / max(folder_rate, 1e-9):.2f}x")


def alternate(loaders: dict[str, Any], seconds: float, rounds: int) -> dict[str, tuple[float, int]]:
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


def bench_augmented(args: argparse.Namespace) -> None:
    index = ClassIndex.load(args.shards)
    split = index.split(args.split)
    per_class = math.ceil(epoch_size(len(split), args.seconds) / index.num_classes)
    spec = StreamSpec(args.batch_size, SamplingSpec(kind="class", per_class=per_class), STRONG, args.input_size)
    print(f"stage-3 stream: per_class={per_class}, strong augmentation, batch {args.batch_size}, "
          f"workers {args.workers}, {args.rounds} x {args.seconds / args.rounds:g} s each, "
          f"cpus {os.cpu_count()}")
    loaders: dict[str, Any] = {
        "torch": lambda: make_loader(ShardStream(args.shards, args.split, spec), args.workers)}
    dali = dali_factory(args, spec)
    if dali is not None:
        loaders["dali"] = dali
    rates = alternate(loaders, args.seconds, args.rounds)
    print(f"torch (ShardStream + DataLoader): {rates['torch'][0]:10.0f} images/s ({rates['torch'][1]} images)")
    if "dali" in rates:
        device = "gpu" if torch.cuda.is_available() else "cpu"
        print(f"dali ({device}, DaliStream):          {rates['dali'][0]:10.0f} images/s ({rates['dali'][1]} images)")
        print(f"ratio dali / torch: {rates['dali'][0] / max(rates['torch'][0], 1e-9):.2f}x")


def dali_factory(args: argparse.Namespace, spec: StreamSpec) -> Any:
    """A maker of DaliStreams, or None (after saying why) where DALI cannot run here."""
    try:
        from datasets.dali import DaliStream

        device = "gpu" if torch.cuda.is_available() else "cpu"
        make = lambda: DaliStream(args.shards, args.split, spec, device=device)  # noqa: E731
        make()  # fail here, once, rather than mid-benchmark
        return make
    except DataError:
        raise
    except Exception as e:  # DALI missing or broken: say so, keep the torch number
        print(f"dali: unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.batch_size < 1 or args.workers < 0 or args.seconds <= 0 or args.rounds < 1:
            raise DataError("--batch-size and --rounds must be >= 1, --workers >= 0, --seconds > 0")
        bench_reader(args) if args.loader == "reader" else bench_augmented(args)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
