"""`python -m trainer --config RECIPE … --dry-run`: everything a run checks before its first
step (the run folder, the shards, the resolved recipe, every stage's batch over the processes),
then the start banner with each stage's length; no accelerator starts and nothing is written."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

from trainer.preflight import check_existing_run, open_shards
from trainer.spec.resolve import resolve
from trainer.streams import choose_loader, per_rank_batch
from trainer.summary import format_banner, recipe_summary
from trainer.threads import apply_threads


def dry_run(cfg: dict) -> int:
    threads = apply_threads()
    world = int(os.environ.get("WORLD_SIZE", "1"))   # set by accelerate launch / torchrun
    check_existing_run(cfg, Path(cfg["run"]["dir"]))
    index = open_shards(cfg)
    recipe = resolve(cfg, index)
    for stage in recipe.stages:
        per_rank_batch(cfg["data"]["batch_size"], world, stage.optim.grad_accum)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pixels = sum(len(s) for s in index.splits.values()) * recipe.input_size ** 2 * recipe.model["in_channels"]
    info = {
        "run_dir": cfg["run"]["dir"], "world_size": world, "devices": [f"{device.type} (not started: dry run)"],
        "hosts": [platform.node()], "master": [""], "threads": threads, "precision": cfg["optim"]["precision"],
        "loader": choose_loader(cfg["data"]["loader"], pixels, device),
        "split_sizes": {s: len(index.splits[s]) for s in index.splits},
        **recipe_summary(recipe, cfg, index.split("train").labels)}
    if int(os.environ.get("RANK", "0")) != 0:   # every process checked; one prints
        return 0
    print(format_banner(info))
    print(f"dry run: recipe and shards check out; {sum(s['steps'] for s in info['stages'])} steps in "
          f"{len(info['stages'])} stage(s); nothing was trained or written")
    return 0
