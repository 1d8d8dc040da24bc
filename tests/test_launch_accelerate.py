"""launch/accelerate/*.yaml: the configs load, and 2 CPU processes are 2 real ranks."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "launch" / "accelerate"
ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
HOOKED = str(REPO / "tests" / "hooked_trainer.py")   # the trainer with test hooks
RECIPE = "trainer/recipes/joint_mini.yaml"
EPOCHS = 2
TINY = ["data.input_size=16", "model.width=4", f"stages.0.epochs={EPOCHS}", "data.batch_size=8",
        "data.num_workers=0", "run.progress_bar=false"]


def launch(config: str, target: list[str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file launch/accelerate/CONFIG TARGET ARGS` from the repo root."""
    cmd = ACCELERATE + ["--config_file", str(CONFIGS / config)] + target + list(args)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
    return r


@pytest.mark.parametrize("name, kind, processes, machines", [
    ("cpu_2proc.yaml", "MULTI_GPU", 2, 1),   # MULTI_GPU on purpose: MULTI_CPU starts one process
    ("gpu_1.yaml", "NO", 1, 1),
    ("gpu_8.yaml", "MULTI_GPU", 8, 1),
    ("multinode.yaml", "MULTI_GPU", 16, 2),
])
def test_config_loads(name, kind, processes, machines):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    value = lambda x: getattr(x, "value", x)  # noqa: E731 (enum or plain string, by version)
    assert value(cfg.distributed_type) == kind
    assert (cfg.num_processes, cfg.num_machines) == (processes, machines)
    assert value(cfg.mixed_precision) == "no", "the recipe's optim.precision decides, not the launcher"
    if name == "multinode.yaml":
        assert cfg.rdzv_backend == "c10d"


@pytest.mark.slow
def test_two_cpu_processes_are_two_ranks(tiny_shards, tmp_path):
    """The documented command (with test hooks); each rank logs the sample ids it trains on."""
    run = tmp_path / "run"
    r = launch("cpu_2proc.yaml", [HOOKED, "--debug-ids"], "--config", RECIPE, f"data.shards={tiny_shards}",
               f"run.dir={run}", *TINY)
    assert "2 process(es)" in r.stdout and r.stdout.count("run ") >= 1  # the start banner, once
    assert (run / "metrics.json").is_file()
    files = sorted((run / "debug").glob("ids-rank*.jsonl"))
    assert [f.name for f in files] == ["ids-rank0.jsonl", "ids-rank1.jsonl"], "two ranks, not two rank-0s"
    banner = json.loads((run / "run.json").read_text())   # the run says how it ran
    assert banner["world_size"] == 2 and len(banner["devices"]) == 2

    from shards.index import ClassIndex

    n = len(ClassIndex.load(tiny_shards).split("train"))
    batches = [[np.asarray(json.loads(x)["ids"]) for x in f.read_text().splitlines()] for f in files]
    assert len(batches[0]) == len(batches[1]), "every rank runs the same number of steps"
    per_epoch = len(batches[0]) // EPOCHS
    for e in range(EPOCHS):
        seen = np.concatenate([b for rank in batches for b in rank[e * per_epoch:(e + 1) * per_epoch]])
        assert np.array_equal(np.sort(seen), np.arange(n)), f"epoch {e}: not every sample exactly once in total"
    first = [set(np.concatenate(rank[:per_epoch]).tolist()) for rank in batches]
    assert not first[0] & first[1], "the ranks drew overlapping samples"


PROBE = """
import sys, torch
import trainer.run as run_module
from trainer.__main__ import main

finish = run_module.finish

def dump_then_finish(run):  # every rank's final weights, before the main process writes metrics
    acc = run.accelerator
    state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    torch.save(state, run.setup.run_dir / f"weights-rank{acc.process_index}-of-{acc.num_processes}.pt")
    finish(run)

run_module.finish = dump_then_finish
sys.exit(main())
"""


@pytest.fixture(scope="module")
def rank_weights(tmp_path_factory) -> tuple[dict, dict, dict]:
    """Each rank's final state_dict after a 2-process run, and the model.pt the run saved."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_raw
    from shards.build import build_shards

    tmp = tmp_path_factory.mktemp("rank-weights")
    shards = tmp / "shards"
    build_shards(write_raw(tmp / "raw"), shards, val_fraction=0.2, seed=0, shard_size=8, workers=1, quiet=True)
    probe, run = tmp / "probe.py", tmp / "run"
    probe.write_text(PROBE)
    launch("cpu_2proc.yaml", [str(probe)], "--config", RECIPE, f"data.shards={shards}", f"run.dir={run}", *TINY)
    load = lambda p: torch.load(p, weights_only=True)  # noqa: E731
    return (load(run / "weights-rank0-of-2.pt"), load(run / "weights-rank1-of-2.pt"),
            load(run / "stages" / "0-joint" / "model.pt"))


def _compare(a: dict, b: dict, saved: dict, buffers: bool) -> None:
    assert a.keys() == b.keys() == saved.keys()
    for k in a:
        if buffers == ("running_" in k or "num_batches_tracked" in k):
            assert torch.equal(a[k], b[k]), f"{k} differs between the ranks"
            assert torch.equal(a[k], saved[k]), f"{k}: the saved model is not what rank 0 holds"


@pytest.mark.slow
def test_ranks_end_with_identical_parameters(rank_weights):
    _compare(*rank_weights, buffers=False)


@pytest.mark.slow
def test_ranks_end_with_identical_batchnorm_statistics(rank_weights):
    _compare(*rank_weights, buffers=True)


@pytest.mark.slow
def test_gpu_1_config_runs_one_process(tiny_shards, tmp_path):
    """gpu_1.yaml on a machine without CUDA: one process, on the CPU."""
    run = tmp_path / "run"
    launch("gpu_1.yaml", [HOOKED, "--debug-ids"], "--config", RECIPE, f"data.shards={tiny_shards}",
           f"run.dir={run}", *TINY, "stages.0.epochs=1")
    assert (run / "metrics.json").is_file()
    assert [f.name for f in (run / "debug").glob("ids-rank*.jsonl")] == ["ids-rank0.jsonl"]
