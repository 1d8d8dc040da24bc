"""The parsers of `python -m trainer bench [e2e | step | gpu | latency]`, without torch (so
`--help` answers at once); trainer/commands/bench.py runs the modes."""
from __future__ import annotations

import argparse

PRECISIONS = ["auto", "no", "bf16", "fp16"]


def step_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer bench step",
                                description="The trainer's training step against a bare loop on in-memory batches.")
    p.add_argument("--model", default="shake_shake", help="model name (default shake_shake)")
    p.add_argument("--depth", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=32, help="input px")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", default="auto", choices=PRECISIONS)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return p


def e2e_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer bench [e2e]", description=(
        "The trainer end to end (data, evaluation, checkpoints included) against a plain loop on "
        "preloaded tensors doing the same steps; alternating runs, ratio of wall times. "
        "Other modes: bench step | gpu | latency (each with --help)."))
    p.add_argument("--shards", default="data/mini/shards", help="shard folder (default data/mini/shards)")
    p.add_argument("--recipe", default="joint_mini", help="a one-stage recipe (default joint_mini)")
    p.add_argument("--repeats", type=int, default=2, help="trainer/plain pairs timed (after one warm-up run)")
    p.add_argument("--json", action="store_true")
    p.add_argument("overrides", nargs="*", help="recipe overrides, e.g. stages.0.steps=100")
    return p


def gpu_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer bench gpu",
                                description="Shake-Shake-26 2x32d at 56 px in bf16 on CUDA: images/s and MFU.")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, nargs="+", default=[128, 512])
    p.add_argument("--compile", choices=["on", "off", "both"], default="both")
    p.add_argument("--bare", choices=["on", "off"], default="on",
                   help="also time a bare PyTorch loop (off: the trainer only, one compile fewer)")
    p.add_argument("--json", action="store_true", help="one JSON object a line, per configuration")
    return p


def latency_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer bench latency",
                                description="Latency per chip at batch 1 and a large batch, with and without TTA.")
    p.add_argument("--model", default="shake_shake")
    p.add_argument("--depth", type=int, default=26)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", type=int, default=56, help="input px")
    p.add_argument("--large-batch", type=int, default=256)
    p.add_argument("--tta", type=int, default=2, help="TTA views (2: identity + the mirror, as tta=auto picks)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", action="store_true")
    return p


PARSERS = {"e2e": e2e_parser, "step": step_parser, "gpu": gpu_parser, "latency": latency_parser}


def parse(argv: list[str]) -> tuple[str, argparse.Namespace]:
    """(mode, its arguments); no mode given is e2e."""
    mode, rest = (argv[0], argv[1:]) if argv and argv[0] in PARSERS else ("e2e", argv)
    p = PARSERS[mode]()
    return mode, (p.parse_intermixed_args(rest) if mode == "e2e" else p.parse_args(rest))
