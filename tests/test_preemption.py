"""trainer.train.preemption: signal → local flag → all ranks stop at the same step."""
from __future__ import annotations

import os
import signal
import socket
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from trainer.train import preemption


@pytest.fixture
def handlers():
    """Restore pytest's own signal handlers and the module state after each test."""
    saved = {s: signal.getsignal(s) for s in preemption.DEFAULT_SIGNALS}
    preemption.reset()
    preemption._installed.clear()
    yield
    for s, h in saved.items():
        signal.signal(s, h)
    preemption.reset()
    preemption._installed.clear()


ONE = SimpleNamespace(num_processes=1, device=torch.device("cpu"))


def test_sigusr1_is_refused(handlers):
    with pytest.raises(ValueError, match="NCCL"):
        preemption.install((signal.SIGTERM, signal.SIGUSR1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_signal_sets_flag_instead_of_killing(handlers, sig):
    preemption.install()
    assert not preemption.stop_requested(ONE)
    os.kill(os.getpid(), sig)  # would end pytest without the handler
    assert preemption.signal_received() == sig
    assert preemption.stop_requested(ONE)
    assert preemption.stop_requested(ONE), "the decision is sticky"
    preemption.reset()
    assert not preemption.stop_requested(ONE)


def test_stop_requested_installs_when_the_trainer_did_not(handlers):
    assert not preemption.stop_requested(ONE)
    assert signal.getsignal(signal.SIGUSR2) is preemption._on_signal
    os.kill(os.getpid(), signal.SIGUSR2)
    assert preemption.stop_requested(ONE)


def test_first_signal_wins(handlers):
    preemption.install()
    os.kill(os.getpid(), signal.SIGUSR2)
    os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.signal_received() == signal.SIGUSR2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, device: str, signal_at: int, out: dict) -> None:
    """One rank of a fake training loop: rank 1 sends itself SIGTERM after step `signal_at`."""
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    acc = SimpleNamespace(num_processes=world, device=torch.device(device))
    preemption.install()
    stopped_at = None
    for step in range(50):
        if rank == 1 and step == signal_at:
            os.kill(os.getpid(), signal.SIGTERM)
        if preemption.stop_requested(acc):
            stopped_at = step
            break
    dist.barrier()  # the other rank must not be left waiting in a collective
    out[rank] = (stopped_at, preemption.signal_received())
    dist.destroy_process_group()


def _run_ranks(device: str, signal_at: int) -> dict:
    out = mp.Manager().dict()
    mp.spawn(_rank, args=(2, _free_port(), device, signal_at, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.slow
def test_one_rank_signalled_stops_both_at_the_same_step():
    out = _run_ranks("cpu", signal_at=7)
    assert out[0][0] == out[1][0] == 7, out
    assert out[0][1] is None, "rank 0 got no signal itself"
    assert out[1][1] == signal.SIGTERM


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the lagged, sync-free path)")
def test_cuda_agreement_is_lagged_but_identical():
    out = _run_ranks("cuda", signal_at=7)
    assert out[0][0] == out[1][0] == 7 + preemption.CUDA_LAG, out


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_in_epoch_0_checkpoints(tiny_shards, tmp_path):
    """Slurm signals every process of a step, DataLoader workers included."""
    import subprocess
    import sys
    import time

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "trainer", "--config", "trainer/recipes/joint_mini.yaml",
           f"data.shards={tiny_shards}", f"run.dir={run}", "data.input_size=16", "model.width=4",
           "stages.0.epochs=2", "data.batch_size=8", "data.num_workers=1", "run.progress_bar=false",
           "run.log_every=1"]
    env = dict(os.environ, SAR_PREEMPT_TEST_DELAY="0.3")
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    history = run / "history.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if history.is_file() and history.read_text().count('"kind": "train"') >= 2:
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGTERM)  # the trainer and its loader worker, as Slurm would
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "stopped on request in stage joint epoch 0" in err
