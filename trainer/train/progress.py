"""What a stage shows while it trains: a tqdm bar on a terminal, plain lines in a log file.

A batch job's log has no terminal, and tqdm switches itself off there, so the loop's log
window (every `run.log_every` steps) also prints one plain line to stdout: stage, step/total,
loss, lr, images/s and the stage's ETA. Only the main process shows anything.
"""
from __future__ import annotations

import math
import sys
import time
from typing import TextIO

from tqdm.auto import tqdm


def format_seconds(s: float) -> str:
    """3725 -> '1h02m05s', 65 -> '1m05s', 4.2 -> '4.2s'."""
    if not math.isfinite(s):
        return "?"
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


class StageProgress:
    """One stage's progress. `bar`: the recipe's run.progress_bar (tqdm where stderr is a
    terminal); plain lines go to `out` whenever it is not a terminal (a log file, a pipe)."""

    def __init__(self, label: tuple[int, str], total_steps: int, done_steps: int, *, world: int = 1,
                 enabled: bool = True, bar: bool = True, out: TextIO | None = None) -> None:
        self.label, self.total, self.world, self.enabled = label, total_steps, world, enabled
        self.out = out or sys.stdout
        self.use_bar = enabled and bar and sys.stderr.isatty()
        self.lines = enabled and not _isatty(self.out)
        self.first_step, self.step = done_steps, done_steps
        self.started = self.window_start = time.perf_counter()
        self.images = 0      # this rank's images since the last line
        self.bar = None

    def start_epoch(self, epoch: int, epochs: int, n_micro: int, start_batch: int) -> None:
        self.epoch, self.epochs = epoch, epochs
        self.window_start, self.images = time.perf_counter(), 0   # images/s of training only
        if self.use_bar:
            self.bar = tqdm(total=n_micro, initial=start_batch, desc=f"{self.label[1]} ep{epoch}", leave=False,
                            dynamic_ncols=True)

    def advance(self, micro_batches: int, images: int) -> None:
        """One optimizer step over `micro_batches` holding `images` (this rank)."""
        self.step += 1
        self.images += images
        if self.bar is not None:
            self.bar.update(micro_batches)

    def end_epoch(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def report(self, loss: float, lr: float) -> None:
        """The plain line of one log window (the loop calls it after checking the loss)."""
        if not self.lines:
            return
        now = time.perf_counter()
        rate = self.images * self.world / max(now - self.window_start, 1e-9)
        done = self.step - self.first_step
        eta = (self.total - self.step) * (now - self.started) / done if done else float("nan")
        print(f"stage {self.label[0]} {self.label[1]} step {self.step}/{self.total} epoch {self.epoch + 1}/"
              f"{self.epochs} loss {loss:.4f} lr {lr:.4g} {rate:.0f} img/s ETA {format_seconds(eta)}",
              file=self.out, flush=True)
        self.window_start, self.images = now, 0

    def validation(self, epoch: int, val: dict) -> None:
        """One line per validation (after each epoch), on a terminal too."""
        if self.enabled:
            print(f"stage {self.label[0]} {self.label[1]} epoch {epoch + 1}/{self.epochs} val top1 "
                  f"{val['top1']:.4f} bal_acc {val['balanced_acc']:.4f} "
                  f"({format_seconds(time.perf_counter() - self.started)} into the stage)",
                  file=self.out, flush=True)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
