"""How many CPU threads torch may use: what the job was given, not every core of the node.

On a shared machine torch's default (one thread per core) competes with the other jobs and a
run slows several-fold. OMP_NUM_THREADS (per process) wins; else SLURM_CPUS_PER_TASK, shared
by the processes one task launches (LOCAL_WORLD_SIZE); else torch's own default.
"""
from __future__ import annotations

import os


def thread_budget(env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """(threads per process or None for torch's default, where the number came from)."""
    env = os.environ if env is None else env
    for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        value = _positive(env.get(name))
        if value is None:
            continue
        if name == "SLURM_CPUS_PER_TASK":
            value = max(1, value // (_positive(env.get("LOCAL_WORLD_SIZE")) or 1))
        return value, name
    return None, "torch default"


def apply_threads(env: dict[str, str] | None = None) -> str:
    """Set torch's intra-op threads from the job's budget; returns the banner's words."""
    import torch

    n, source = thread_budget(env)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return f"{torch.get_num_threads()} per process ({source})"


def _positive(text: str | None) -> int | None:
    try:
        value = int(str(text).split(",")[0].strip())   # OMP_NUM_THREADS may list nested levels: "4,2"
    except ValueError:
        return None
    return value if value > 0 else None
