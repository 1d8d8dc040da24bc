"""One training process tree per run folder: the main process holds `RUN/.lock`
(`shards/lock.py`) from before the first write into the folder until the run returns.

A second trainer (or `resume`) on a live run folder stops with one line naming the holder
(pid, host, since when); a lock left by a killed run is taken over. Under several processes
only the main one locks, and tells the others whether it got the lock, so that all stop
together instead of waiting for each other.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from shards.errors import DataError
from shards.lock import hold
from trainer.errors import TrainingError


@contextmanager
def run_lock(accelerator, run_dir: Path, command: str = "python -m trainer") -> Iterator[None]:
    with ExitStack() as stack:
        error = None
        if accelerator.is_main_process:
            try:
                stack.enter_context(hold(run_dir, command))
            except DataError as e:
                error = e
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            shared = [None if error is None else str(error)]
            broadcast_object_list(shared)
            if shared[0] is not None and error is None:
                error = TrainingError(shared[0])
        if error is not None:
            raise error
        yield
