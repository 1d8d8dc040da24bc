"""Two real CPU ranks (gloo) through `accelerate launch`: weights stay identical across ranks,
an instance-balanced epoch covers the training set exactly once in total, both ranks run the
same number of steps, and evaluation gathers every validation sample once."""
from __future__ import annotations

import json
import os
import subprocess
from collections import defaultdict

import pytest
import torch

from trainer_helpers import PYTHON, REPO, TINY, build_tiny

pytestmark = pytest.mark.slow


def test_two_cpu_ranks(tmp_path):
    shards = build_tiny(tmp_path, with_test=False)
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "29531", str(REPO / "tests" / "hooked_trainer.py"), "--debug-ids",
           "--config", "three_stage_mini", f"data.shards={shards}", f"run.dir={run}", *TINY,
           "stages.0.epochs=2", "stages.1.epochs=1", "stages.2.epochs=1", "stages.3.epochs=1",
           "stages.1.sampler.classes=[1,2,3]", "stages.2.sampler.per_class=8", "stages.3.sampler.per_class=8",
           "stages.3.classifiers=[crt]", "posthoc.crt.steps=4"]   # cRT: bn train, select best (defaults)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    # Weights identical across ranks after every stage (DDP kept them in sync).
    for stage in range(4):
        w0 = torch.load(run / "debug" / f"model-stage{stage}-rank0.pt", weights_only=True)
        w1 = torch.load(run / "debug" / f"model-stage{stage}-rank1.pt", weights_only=True)
        params = [k for k in w0 if "running" not in k and "num_batches" not in k]
        assert all(torch.equal(w0[k], w1[k]) for k in params), stage

    # Sample ids per (stage, epoch) per rank.
    seen: dict[tuple, dict[int, list]] = defaultdict(lambda: {0: [], 1: []})
    steps: dict[tuple, dict[int, int]] = defaultdict(lambda: {0: 0, 1: 0})
    for rank in (0, 1):
        for line in (run / "debug" / f"ids-rank{rank}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            seen[(rec["stage"], rec["epoch"])][rank] += rec["ids"]
            steps[(rec["stage"], rec["epoch"])][rank] += 1
    index = json.loads((shards / "index.json").read_text())
    n_train = index["splits"]["train"]["num_samples"]
    labels = index["splits"]["train"]["samples"]["label"]
    for epoch in (0, 1):  # stage 0, instance-balanced: every sample once over both ranks
        a, b = seen[(0, epoch)][0], seen[(0, epoch)][1]
        assert a and b and not set(a) & set(b)
        assert sorted(a + b) == list(range(n_train))
    rest = seen[(1, 0)][0] + seen[(1, 0)][1]  # stage 1: classes 1-3 only, once each
    assert sorted(rest) == [i for i in range(n_train) if labels[i] != 0]
    assert seen[(0, 0)][0] != seen[(0, 1)][0]  # reshuffled per epoch
    for key, per_rank in steps.items():  # same number of steps on both ranks (else DDP hangs)
        assert per_rank[0] == per_rank[1], key

    m = json.loads((run / "metrics.json").read_text())
    n_val = index["splits"]["val"]["num_samples"]
    assert m["final"]["val"]["num_samples"] == n_val  # gathered over ranks, no duplicates
    assert sum(map(sum, m["final"]["val"]["confusion"])) == n_val
    # 3a and 3b drew one sub-dataset: the same multiset of ids over both ranks
    assert sorted(seen[(2, 0)][0] + seen[(2, 0)][1]) == sorted(seen[(3, 0)][0] + seen[(3, 0)][1])
    # cRT re-estimated BatchNorm on two ranks (statistics averaged) and kept its best epoch
    crt = m["final"]["val"]["classifiers"]["crt"]
    assert crt["bn"] == "train" and 0 <= crt["epoch"] < crt["epochs"]
