"""Preemption: a signal sets a local flag; all ranks agree to stop after the same optimizer step.

`install()` arms SIGTERM and SIGUSR2 (never SIGUSR1: NCCL uses it). The loop calls
`stop_requested(accelerator)` after every optimizer step; every rank must call it at the same
steps, because it is a collective: the local flags are all-reduced with MAX, so one rank that
got the signal stops them all at the same step. Requeueing is the batch script's job
(launch/slurm/train.sbatch): it knows whether the signal was Slurm's time-limit warning (requeue)
or a plain SIGTERM such as `scancel` (do not requeue, or the user could never cancel the job).

On CUDA the agreement costs no host-device sync: the all-reduced flag is copied to pinned host
memory behind a CUDA event and read `CUDA_LAG` calls later, when the GPU has long passed it; the
decision is the same on every rank (all read the same reduction), just a couple of steps late.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections import deque

import torch

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
CUDA_LAG = 2            # steps between issuing a reduction on the GPU and reading it
# Tests only: seconds to sleep in every check, so that a tiny run can be signalled mid-stage.
TEST_DELAY_ENV = "SAR_PREEMPT_TEST_DELAY"

_received: int | None = None   # first signal number received in this process
_installed: set[int] = set()
_agreed = False                # sticky once the ranks agreed to stop
_pending: deque = deque()      # CUDA: (pinned host flag, event) of reductions not read yet


def _on_signal(signum: int, frame) -> None:
    global _received
    if _received is None:
        _received = signum


def install(signals: tuple[int, ...] = DEFAULT_SIGNALS) -> None:
    """Set the flag on these signals instead of dying. Idempotent; main thread only (Python
    allows handlers nowhere else), elsewhere it does nothing."""
    if signal.SIGUSR1 in signals:
        raise ValueError("SIGUSR1 is used by NCCL; use SIGUSR2 or SIGTERM for preemption")
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in signals:
        signal.signal(sig, _on_signal)
        _installed.add(int(sig))


def signal_received() -> int | None:
    """The first preemption signal this process got (a signal number), or None."""
    return _received


def reset() -> None:
    """Forget received signals and pending agreements (tests; a new run in the same process)."""
    global _received, _agreed
    _received, _agreed = None, False
    _pending.clear()


def stop_requested(accelerator) -> bool:
    """True on every rank once any rank got a signal. A collective when there are several
    processes: call it on all ranks after the same optimizer steps."""
    global _agreed
    delay = float(os.environ.get(TEST_DELAY_ENV) or 0)
    if delay > 0:
        time.sleep(delay)
    if not _installed:
        install()  # a trainer that forgot install() still stops cleanly from the first step on
    if _agreed:
        return True
    local = _received is not None
    if getattr(accelerator, "num_processes", 1) <= 1:
        _agreed = local
        return local
    _agreed = _all_ranks_flag(local, accelerator.device)
    return _agreed


def _all_ranks_flag(local: bool, device) -> bool:
    import torch.distributed as dist

    device = torch.device(device)
    flag = torch.full((1,), int(local), dtype=torch.int32, device=device)  # a kernel, not a copy
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if device.type != "cuda":
        return bool(flag.item())  # gloo: the reduction already happened on the host
    host = torch.empty(1, dtype=torch.int32, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    _pending.append((host, done))
    if len(_pending) <= CUDA_LAG:
        return False
    host, done = _pending.popleft()
    done.synchronize()  # waits only for the reduction issued CUDA_LAG steps ago
    return bool(host.item())
