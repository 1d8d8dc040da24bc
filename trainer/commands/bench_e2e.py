"""`python -m trainer bench e2e`: the trainer end to end against a plain PyTorch loop.

Both do the same work from the same shards: load the chips, train the same model from the same
initial weights on the same batches (the plan of `epoch_plan` / `rank_batches`) with the same
augmentation (mirror + shift) and schedule (SGD, nesterov, warmup + cosine), evaluate the
validation split after every epoch and the test split at the end, with the same TTA views.
The plain loop is what one writes by hand with the chips preloaded into one tensor; the trainer
adds everything else (Accelerate, checkpoints every epoch, history, TensorBoard, metrics.json).
Runs alternate, trainer first, so a change in machine load hits both; the ratio of wall times
is printed per pair and as the median.
"""
from __future__ import annotations

import math
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F

from datasets.resident import load_pixels
from datasets.sampling import SamplingSpec, epoch_plan, rank_batches
from datasets.stream_spec import StreamSpec, open_split
from trainer.spec.config import load_config
from trainer.models import build_model
from trainer.preflight import open_shards
from trainer.run import train
from trainer.evaluate.scoring import tta_logits
from trainer.spec.resolve import RecipeSpec, resolve


def bench_config(recipe: str, shards: str, overrides: list[str]) -> dict:
    cfg = load_config(recipe, [f"data.shards={shards}", "run.progress_bar=false", "run.log_every=1000",
                               *overrides])
    if len(cfg["stages"]) != 1 or cfg["stages"][0]["classifiers"]:
        raise ValueError("bench e2e compares one plain training stage; use joint_mini (or a recipe like it)")
    return cfg


def time_trainer(cfg: dict) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-run-") as run:
        start = time.perf_counter()
        train({**cfg, "run": {**cfg["run"], "dir": run}})
        return time.perf_counter() - start


def time_plain(cfg: dict, recipe: RecipeSpec) -> float:
    start = time.perf_counter()
    plain_run(cfg, recipe)
    return time.perf_counter() - start


def plain_run(cfg: dict, recipe: RecipeSpec) -> dict[str, float]:
    """The hand-written loop; returns the final val and test top-1 (a sanity check)."""
    stage, size, shards = recipe.stages[0], recipe.input_size, cfg["data"]["shards"]
    splits = {s: _load(shards, s, size) for s in ("train", "val", "test") if s in open_shards(cfg).splits}
    x_train, y_train, mean, std = splits["train"]
    torch.manual_seed(cfg["seed"])
    model = build_model(recipe.model, recipe.num_classes)
    o = stage.optim
    opt = torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, nesterov=o.nesterov,
                          weight_decay=o.weight_decay, foreach=True)
    total, warmup, step = stage.total_steps, round(o.warmup_epochs * stage.steps_per_epoch), 0
    flip = -1 if stage.augment.hflip else -2          # the one mirror the recipe uses
    for epoch in range(stage.epochs):
        model.train()
        plan = epoch_plan(y_train.numpy(), SamplingSpec(), epoch=epoch, total_epochs=stage.epochs,
                          seed=cfg["seed"] * 1000)
        for ids in rank_batches(plan, cfg["data"]["batch_size"], 0, 1):
            x = _augment(x_train[ids], flip, stage.augment.translate)
            lr = o.lr * (step + 1) / warmup if step < warmup else \
                0.5 * o.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model((x - mean) / std), y_train[ids])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        val = _accuracy(model, *splits["val"], recipe.tta_views)
    return {"val": val, "test": _accuracy(model, *splits["test"], recipe.tta_views) if "test" in splits else math.nan}


def _load(shards: str, split: str, size: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    data = open_split(shards, split, StreamSpec.sequential(4096, size))
    pixels = torch.from_numpy(load_pixels(data, size)).float().div_(255)
    return pixels, torch.from_numpy(data.split.labels.astype(np.int64)), data.normalizer.mean, data.normalizer.std


def _augment(x: torch.Tensor, flip_dim: int, shift: int) -> torch.Tensor:
    """A random mirror and a random shift of up to `shift` px (pad with the edge, crop)."""
    n, _, s, _ = x.shape
    mirror = torch.rand(n) < 0.5
    x = torch.where(mirror[:, None, None, None], x.flip(flip_dim), x)
    if shift:
        padded = F.pad(x, (shift,) * 4, mode="replicate")
        dy, dx = torch.randint(0, 2 * shift + 1, (2, n)).tolist()
        x = torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(n)])
    return x


@torch.no_grad()
def _accuracy(model, x: torch.Tensor, y: torch.Tensor, mean: float, std: float, views) -> float:
    model.eval()
    preds = [tta_logits(model, (x[i:i + 256] - mean) / std, views).argmax(1) for i in range(0, len(x), 256)]
    return float((torch.cat(preds) == y).float().mean())


def compare_e2e(recipe: str, shards: str, overrides: list[str], repeats: int) -> dict:
    cfg = bench_config(recipe, shards, overrides)
    spec = resolve(cfg, open_shards(cfg))
    time_trainer(cfg)   # warm up: decode cache, first-call costs, page cache
    times: dict[str, list[float]] = {"trainer": [], "plain": []}
    for _ in range(repeats):
        times["trainer"].append(time_trainer(cfg))
        times["plain"].append(time_plain(cfg, spec))
    pairs = [t / p for t, p in zip(times["trainer"], times["plain"])]
    st = spec.stages[0]
    return {"recipe": recipe, "shards": shards, "overrides": overrides, "model": spec.model,
            "input_size": spec.input_size, "steps": st.total_steps, "epochs": st.epochs,
            "threads": torch.get_num_threads(), "times_s": times, "pair_ratios": pairs,
            "median_ratio": statistics.median(pairs)}


def format_e2e(r: dict) -> str:
    m = r["model"]
    lines = [f"end to end: {r['recipe']} on {r['shards']} {' '.join(r['overrides'])}",
             f"  {m['name']}-{m['depth']} w{m['width']}, {r['input_size']} px, {r['steps']} steps "
             f"({r['epochs']} epochs), {r['threads']} threads"]
    for i, (t, p) in enumerate(zip(r["times_s"]["trainer"], r["times_s"]["plain"])):
        lines.append(f"  pair {i}: trainer {t:7.1f} s   plain loop {p:7.1f} s   ratio {t / p:.3f}")
    lines.append(f"  median ratio trainer/plain: {r['median_ratio']:.3f}")
    return "\n".join(lines)

