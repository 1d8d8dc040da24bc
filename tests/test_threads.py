"""The trainer uses the CPU threads the job was given (OMP_NUM_THREADS, SLURM_CPUS_PER_TASK)."""
from __future__ import annotations

import torch

from trainer.threads import apply_threads, thread_budget


def test_omp_num_threads_wins_over_slurm():
    assert thread_budget({"OMP_NUM_THREADS": "3", "SLURM_CPUS_PER_TASK": "8"}) == (3, "OMP_NUM_THREADS")
    assert thread_budget({"OMP_NUM_THREADS": "2,1"}) == (2, "OMP_NUM_THREADS")


def test_slurm_cpus_are_shared_by_the_task_processes():
    assert thread_budget({"SLURM_CPUS_PER_TASK": "8"}) == (8, "SLURM_CPUS_PER_TASK")
    assert thread_budget({"SLURM_CPUS_PER_TASK": "8", "LOCAL_WORLD_SIZE": "2"}) == (4, "SLURM_CPUS_PER_TASK")
    assert thread_budget({"SLURM_CPUS_PER_TASK": "1", "LOCAL_WORLD_SIZE": "4"}) == (1, "SLURM_CPUS_PER_TASK")


def test_nothing_set_or_nonsense_keeps_torch_default():
    assert thread_budget({}) == (None, "torch default")
    assert thread_budget({"OMP_NUM_THREADS": "zero", "SLURM_CPUS_PER_TASK": "0"}) == (None, "torch default")


def test_apply_sets_torch_threads_and_says_so():
    before = torch.get_num_threads()
    try:
        words = apply_threads({"SLURM_CPUS_PER_TASK": "1"})
        assert torch.get_num_threads() == 1
        assert words == "1 per process (SLURM_CPUS_PER_TASK)"
    finally:
        torch.set_num_threads(before)
