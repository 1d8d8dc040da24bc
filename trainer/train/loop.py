"""The train epoch: one pass over the stage's stream, an optimizer step per (accumulated) batch."""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from trainer.errors import TrainingError
from trainer.spec.resolve import OptimSpec
from trainer.train.optim import Schedule, lr_at, set_lr, set_train_mode


@dataclass
class EpochContext:
    """What one training epoch needs; built once per stage by the run."""
    accelerator: object
    model: nn.Module            # prepared (DDP-wrapped where distributed)
    optimizer: object           # prepared
    loss_fn: nn.Module
    stream: object
    iterate: Callable[[object], object]   # stream -> iterator of batches (trainer.streams)
    schedule: Schedule
    opt: OptimSpec
    part: str                   # all | classifier | last_block
    to_full: Callable[[torch.Tensor], torch.Tensor]  # head logits -> all classes (-inf outside the head)
    stage_index: int
    stage_name: str
    log_every: int = 50
    on_log: Callable[[dict], None] | None = None      # train record -> history/tensorboard
    should_stop: Callable[[], bool] | None = None     # preemption check after each step
    on_ids: Callable[[int, np.ndarray], None] | None = None  # debug: (epoch, sample ids) this rank trains on
    fail_at_step: int | None = None                    # tests: crash at this global step
    progress_bar: bool = True
    global_step: int = 0        # across stages, for TensorBoard
    losses: list = field(default_factory=list)


def train_epoch(ctx: EpochContext, epoch: int, start_batch: int = 0) -> tuple[int, bool]:
    """Train one epoch from batch `start_batch`. Returns (next batch, stopped early)."""
    acc, model, sched = ctx.accelerator, ctx.model, ctx.schedule
    set_train_mode(acc.unwrap_model(model), ctx.part)
    ctx.stream.set_epoch(epoch, start_batch)
    n_micro = len(ctx.stream)
    device = acc.device
    window: list[torch.Tensor] = []     # per-step losses on device, checked every log_every steps
    window_steps: list[int] = []
    group: list = []
    batch = start_batch
    # disable=None: tqdm switches itself off when stderr is not a terminal (batch jobs' logs).
    show = ctx.progress_bar and acc.is_local_main_process
    bar = tqdm(total=n_micro, initial=start_batch, disable=None if show else True,
               desc=f"{ctx.stage_name} ep{epoch}", leave=False, dynamic_ncols=True)
    for images, labels, ids in ctx.iterate(ctx.stream):
        batch += 1
        if ctx.on_ids is not None:
            ctx.on_ids(epoch, ids.cpu().numpy() if torch.is_tensor(ids) else np.asarray(ids))
        group.append((images, labels))
        end_of_group = batch % sched.grad_accum == 0 or batch == n_micro
        if not end_of_group:
            continue
        step_in_stage = epoch * sched.steps_per_epoch + (batch - 1) // sched.grad_accum
        lr = lr_at(step_in_stage, sched.total_steps, sched.warmup_steps, ctx.opt)
        set_lr(ctx.optimizer, lr)
        loss = _step(ctx, group, device)
        bar.update(len(group))
        group = []
        ctx.global_step += 1
        window.append(loss)
        window_steps.append(step_in_stage)
        if ctx.fail_at_step is not None and ctx.global_step == ctx.fail_at_step:
            raise RuntimeError(f"injected failure at global step {ctx.global_step} (run.fail_at_step)")
        last = batch == n_micro
        if len(window) >= ctx.log_every or last:
            _flush(ctx, window, window_steps, epoch, lr)
            window, window_steps = [], []
        if not last and ctx.should_stop is not None and ctx.should_stop():
            if window:
                _flush(ctx, window, window_steps, epoch, lr)
            bar.close()
            return batch, True
    bar.close()
    if window:
        _flush(ctx, window, window_steps, epoch, lr)
    return batch, False


def _step(ctx: EpochContext, group: list, device) -> torch.Tensor:
    """One optimizer step over a group of micro-batches (gradient accumulation by hand: the
    stream is not a prepared DataLoader, so Accelerate cannot see where an epoch ends)."""
    acc, model = ctx.accelerator, ctx.model
    total = torch.zeros((), device=device)
    for j, (images, labels) in enumerate(group):
        images = images.to(device, non_blocking=True)
        targets = labels.to(device, non_blocking=True)
        sync = j == len(group) - 1
        ctx_mgr = acc.no_sync(model) if not sync else nullcontext()
        with ctx_mgr:
            with acc.autocast():
                logits = ctx.to_full(model(images).float())
                loss = ctx.loss_fn(logits, targets)
            acc.backward(loss / len(group))
        total += loss.detach().float() / len(group)
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return total


def _flush(ctx: EpochContext, window: list, steps: list[int], epoch: int, lr: float) -> None:
    """One host sync per log window: find a non-finite loss, then log the mean."""
    values = torch.stack(window).cpu().numpy()
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise TrainingError(f"stage {ctx.stage_index} ({ctx.stage_name}): loss is {values[bad[0]]} "
                            f"at epoch {epoch}, step {steps[bad[0]]} of the stage; lower the learning "
                            f"rate or check the data")
    if ctx.on_log is not None:
        ctx.on_log({"stage": ctx.stage_index, "stage_name": ctx.stage_name, "epoch": epoch,
                    "step": steps[-1], "global_step": ctx.global_step, "kind": "train",
                    "loss": float(values.mean()), "lr": lr})
