"""The train epoch: one pass over a stage's batches, an optimizer step per (accumulated) batch."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from trainer.errors import TrainingError
from trainer.spec.schedule import Schedule
from trainer.train.optim import set_lr
from trainer.train.progress import StageProgress


@dataclass
class Hooks:
    """Optional callbacks into the loop: the run's logging and preemption check, and what tests
    attach (tests/hooked_trainer.py). None of them is a recipe key."""
    log: Callable[[dict], None] | None = None            # a train record -> history, TensorBoard
    should_stop: Callable[[], bool] | None = None        # preemption, checked after each step
    on_batch: Callable[[int, int, np.ndarray], None] | None = None     # (stage, epoch, this rank's sample ids)
    on_step: Callable[[int], None] | None = None                       # after each step (global step)
    on_stage_end: Callable[[nn.Module, int], None] | None = None       # (model, stage index)


@dataclass(frozen=True)
class EpochResult:
    batch: int          # the next micro-batch (== batches per epoch when the epoch finished)
    stopped: bool       # stopped early on request (preemption)
    global_step: int


def train_epoch(accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                batches: Iterable, *, n_micro: int, epoch: int, schedule: Schedule, global_step: int,
                to_full: Callable[[torch.Tensor], torch.Tensor], label: tuple[int, str], start_batch: int = 0,
                log_every: int = 50, progress: StageProgress | None = None,
                hooks: Hooks | None = None) -> EpochResult:
    """Train on `batches` (this rank's micro-batches of the epoch, from `start_batch` on).
    `to_full` maps head logits to all classes; `label` is the stage's (index, name) for logs;
    `progress` shows the steps (tqdm or plain lines; None: nothing)."""
    window: list[torch.Tensor] = []     # per-step losses on device, checked every log_every steps
    window_steps: list[int] = []
    group: list = []
    batch, lr, stopped = start_batch, schedule.lr(0), False
    hooks = hooks or Hooks()
    progress = progress or StageProgress(label, 0, 0, enabled=False)
    progress.start_epoch(epoch, schedule.epochs, n_micro, start_batch)

    def flush() -> None:
        loss = _flush(hooks.log, window, window_steps, label, epoch, global_step, lr)
        progress.report(loss, lr)
        window.clear()
        window_steps.clear()

    for images, labels, ids in batches:
        batch += 1
        if hooks.on_batch is not None:
            hooks.on_batch(label[0], epoch, ids.cpu().numpy() if torch.is_tensor(ids) else np.asarray(ids))
        group.append((images, labels))
        if batch % schedule.grad_accum and batch != n_micro:
            continue
        step_in_stage = epoch * schedule.steps_per_epoch + (batch - 1) // schedule.grad_accum
        lr = schedule.lr(step_in_stage)
        set_lr(optimizer, lr)
        window.append(_step(accelerator, model, optimizer, loss_fn, to_full, group))
        window_steps.append(step_in_stage + 1)   # steps done in the stage, as the val rows count
        progress.advance(len(group), sum(len(labels) for _, labels in group))
        group = []
        global_step += 1
        if hooks.on_step is not None:
            hooks.on_step(global_step)
        last = batch == n_micro
        if len(window) >= log_every or last:
            flush()
        if not last and hooks.should_stop is not None and hooks.should_stop():
            stopped = True
            break
    progress.end_epoch()
    if window:
        flush()
    return EpochResult(batch, stopped, global_step)


def _step(accelerator, model: nn.Module, optimizer, loss_fn: nn.Module, to_full, group: list) -> torch.Tensor:
    """One optimizer step over a group of micro-batches (gradient accumulation by hand: the
    stream is not a prepared DataLoader, so Accelerate cannot see where an epoch ends)."""
    device = accelerator.device
    total = torch.zeros((), device=device)
    for j, (images, labels) in enumerate(group):
        images = images.to(device, non_blocking=True)
        targets = labels.to(device, non_blocking=True)
        sync = j == len(group) - 1
        with accelerator.no_sync(model) if not sync else nullcontext():
            with accelerator.autocast():
                loss = loss_fn(to_full(model(images).float()), targets)
            accelerator.backward(loss / len(group))
        total += loss.detach().float() / len(group)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total


def _flush(log, window: list, steps: list[int], label: tuple[int, str], epoch: int, global_step: int,
           lr: float) -> float:
    """One host sync per log window: find a non-finite loss, then log the mean (returned)."""
    values = torch.stack(window).cpu().numpy()
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise TrainingError(f"stage {label[0]} ({label[1]}): loss is {values[bad[0]]} at epoch {epoch}, "
                            f"step {steps[bad[0]] - 1} of the stage; lower the learning rate or check the data")
    if log is not None:
        log({"stage": label[0], "stage_name": label[1], "epoch": epoch, "step": steps[-1],
             "global_step": global_step, "kind": "train", "loss": float(values.mean()), "lr": lr})
    return float(values.mean())
