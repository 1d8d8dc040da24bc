"""launch/slurm on a real single-node Slurm cluster (launch/slurm/local_cluster.sh).

Slow: every training job starts three Python processes. Skipped only where Slurm cannot be
installed or started (not root, no apt-get); where it can (CI runs as root), it must work.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "launch" / "slurm" / "local_cluster.sh"
TRAIN = "launch/slurm/train.sbatch"
RECIPE = "trainer/recipes/joint_mini.yaml"
# Tiny and 2-process: 49 training chips, 6 steps per epoch, 3 epochs, one stage.
TINY = ["data.input_size=16", "model.width=4", "stages.0.epochs=3", "data.batch_size=8",
        "data.num_workers=0", "run.progress_bar=false", "run.log_every=1"]
STEP_DELAY = "0.3"  # s per step (trainer.train.preemption test hook): long enough to signal mid-stage


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def slurm_env() -> dict:
    """Environment for Slurm clients; starts the local cluster (stopped again if we started it)."""
    state = os.environ.get("SAR_SLURM_DIR", "/tmp/sar-slurm")
    env = dict(os.environ, SAR_SLURM_DIR=state, SLURM_CONF=f"{state}/slurm.conf")
    env.pop("SAR_PREEMPT_TEST_DELAY", None)
    installed = all(shutil.which(c) for c in ("slurmctld", "slurmd", "sbatch", "munged"))
    if os.geteuid() != 0:
        pytest.skip("Slurm tests need root (slurmd starts jobs; packages come from apt-get)")
    if not installed and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and there is no apt-get to install it")
    running = subprocess.run(["bash", str(CLUSTER), "status"], env=env, capture_output=True).returncode == 0
    if not running:
        r = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            pytest.fail(f"local Slurm cluster did not start:\n{r.stdout}\n{r.stderr}")
    yield env
    if not running:
        subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_raw
    from shards.build import build_shards

    root = tmp_path_factory.mktemp("slurm-data")
    out = root / "shards"
    build_shards(write_raw(root / "raw"), out, val_fraction=0.2, seed=0, shard_size=8, workers=1, quiet=True)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm-runs")


# ---------------------------------------------------------------- helpers
def sbatch(env: dict, out: Path, *args: str, wait: bool = True, extra_env: dict | None = None,
           cpus: int = 2) -> subprocess.Popen:
    """`sbatch --parsable [--wait] -c CPUS -o OUT ARGS`; the job id is the first stdout line."""
    cmd = ["sbatch", "--parsable", f"--cpus-per-task={cpus}", f"--output={out}"] + (["--wait"] if wait else []) + list(args)
    # One thread per process whatever the layout, so that 2 machines × 1 and 1 × 2 compute alike.
    env = dict(env, OMP_NUM_THREADS="1", **(extra_env or {}))
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def job_id(proc: subprocess.Popen) -> str:
    return proc.stdout.readline().strip().split(";")[0]


def finish(proc: subprocess.Popen, timeout: float = 300) -> int:
    """The job's exit code (sbatch --wait); sbatch's own complaints go to our stderr."""
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    sys.stderr.write(proc.stderr.read())
    return rc


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def train_lines(run: Path, epoch: int) -> int:
    try:
        lines = (run / "history.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for x in lines if '"kind": "train"' in x and json.loads(x)["epoch"] == epoch)


def job_state(env: dict, jid: str) -> str:
    r = subprocess.run(["scontrol", "-o", "show", "job", jid], env=env, capture_output=True, text=True)
    for field in r.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "GONE"


def weights(run: Path) -> dict:
    return torch.load(run / "stages" / "0-joint" / "model.pt", weights_only=True)


def assert_same_result(run: Path, ref: Path) -> None:
    got, want = json.loads((run / "metrics.json").read_text()), json.loads((ref / "metrics.json").read_text())
    assert got == want, "final metrics differ from the uninterrupted run"
    a, b = weights(run), weights(ref)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ from the uninterrupted run: {k}"


# ---------------------------------------------------------------- the cluster itself
def test_cluster_runs_a_job(slurm_env, work):
    out = work / "hello.out"
    p = sbatch(slurm_env, out, "--wrap", "echo hello from $SLURM_JOB_ID on $SLURM_JOB_NODELIST", cpus=1)
    jid = job_id(p)
    assert finish(p, 60) == 0
    assert out.read_text().strip() == f"hello from {jid} on localhost"
    status = subprocess.run(["bash", str(CLUSTER), "status"], env=slurm_env, capture_output=True, text=True)
    assert status.returncode == 0 and "debug" in status.stdout
    shell = subprocess.run(["bash", str(CLUSTER), "env"], env=slurm_env, capture_output=True, text=True).stdout
    assert shell.strip() == f"export SLURM_CONF={slurm_env['SLURM_CONF']}"


def test_build_shards_job_uses_the_allocated_cores(slurm_env, work):
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import write_raw
    from shards.index import ClassIndex

    raw, out = write_raw(work / "raw"), work / "built"
    p = sbatch(slurm_env, work / "build.out", "launch/slurm/build_shards.sbatch", str(raw), str(out),
               "--val-fraction", "0.2", "--shard-size", "8", "--quiet")
    assert finish(p, 120) == 0, (work / "build.out").read_text()
    assert "with 2 workers" in (work / "build.out").read_text()
    index = ClassIndex.load(out)
    assert len(index.split("train")) + len(index.split("val")) == 61


def test_signal_reaches_waiting_script_and_requeue_skips_the_hold(slurm_env, work):
    """The batch-shell trap fires at once while `wait`ing; requeue_self restarts in seconds, not ~2 min."""
    script = work / "requeue_probe.sh"
    mark = work / "probe"
    script.write_text(f"""#!/bin/bash
#SBATCH --requeue --open-mode=append
source {REPO}/launch/slurm/requeue.sh
if [ "${{SLURM_RESTART_COUNT:-0}}" -ge 1 ]; then date +%s.%N > {mark}.restarted; exit 0; fi
trap 'date +%s.%N > {mark}.signalled; requeue_self' USR2
date +%s.%N > {mark}.started
sleep 300 & wait
""")
    p = sbatch(slurm_env, work / "requeue_probe.out", str(script), cpus=1)
    jid = job_id(p)
    wait_for(lambda: Path(f"{mark}.started").exists(), 60, "the probe job to start")
    subprocess.run(["scancel", "--signal=USR2", "--batch", jid], env=slurm_env, check=True)
    wait_for(lambda: Path(f"{mark}.signalled").exists(), 10, "the trap to fire")
    assert finish(p, 90) == 0, (work / "requeue_probe.out").read_text()
    signalled = float(Path(f"{mark}.signalled").read_text())
    restarted = float(Path(f"{mark}.restarted").read_text())
    assert restarted - signalled < 30, f"requeued job waited {restarted - signalled:.0f} s (the hold is 120 s)"


# ---------------------------------------------------------------- training jobs
@pytest.fixture(scope="module")
def reference(slurm_env, shards, work) -> Path:
    """An uninterrupted run: 2 processes as 2 'machines' on one node (c10d rendezvous)."""
    run = work / "reference"
    p = sbatch(slurm_env, work / "reference.out", "--ntasks-per-node=2", TRAIN, RECIPE, f"data.shards={shards}",
               f"run.dir={run}", *TINY, extra_env={"SAR_MACHINES": "2", "SAR_NPROC": "1"}, cpus=1)
    rc = finish(p)
    log = (work / "reference.out").read_text()
    assert rc == 0, log
    assert "world 2 (2 machine(s) x 1 processes)" in log
    return run


def test_train_job_writes_metrics(reference, work):
    m = json.loads((reference / "metrics.json").read_text())
    assert [s["name"] for s in m["stages"]] == ["joint"]
    assert len(m["final"]["val"]["per_class_acc"]) == len(m["classes"]) == 4
    assert "finished" in (work / "reference.out").read_text()


def test_preempted_job_requeues_resumes_and_matches(slurm_env, shards, work, reference):
    """USR2 to the batch shell (what --signal=B:USR2@300 sends) in the middle of the stage.
    No run.dir: the run folder is runs/<recipe>-<jobid>, the same after the requeue.
    1 machine × 2 processes with loader workers, against the reference's 2 × 1 without: the
    same result either way."""
    out = work / "preempted.out"
    # One loader worker per rank: SIGUSR2 reaches the workers too, and must not kill them.
    p = sbatch(slurm_env, out, TRAIN, RECIPE, f"data.shards={shards}", *TINY, "data.num_workers=1",
               extra_env={"SAR_PREEMPT_TEST_DELAY": STEP_DELAY})
    jid = job_id(p)
    run = REPO / "runs" / f"joint_mini-{jid}"
    try:
        wait_for(lambda: train_lines(run, 1) >= 2, 240, "epoch 1 of the stage to be under way")
        subprocess.run(["scancel", "--signal=USR2", "--batch", jid], env=slurm_env, check=True)
        assert finish(p) == 0, out.read_text()
        log = out.read_text()
        assert "world 2 (1 machine(s) x 2 processes)" in log
        assert "stopped on request in stage joint epoch 1" in log
        assert f"train.sbatch[{jid}/0]: requeueing" in log
        assert f"train.sbatch[{jid}/1]: resuming {run.relative_to(REPO)}" in log, log
        assert_same_result(run, reference)
    finally:
        shutil.rmtree(run, ignore_errors=True)


def test_scancel_checkpoints_and_is_not_requeued(slurm_env, shards, work):
    """SIGTERM (scancel, or Slurm's own preemption): checkpoint mid-epoch, but scancel stays final.
    One process: the job runs `python -m trainer` without a launcher."""
    run, out = work / "cancelled", work / "cancelled.out"
    p = sbatch(slurm_env, out, TRAIN, RECIPE, f"data.shards={shards}", f"run.dir={run}", *TINY,
               extra_env={"SAR_PREEMPT_TEST_DELAY": STEP_DELAY, "SAR_NPROC": "1"}, cpus=1)
    jid = job_id(p)
    wait_for(lambda: train_lines(run, 1) >= 2, 240, "epoch 1 of the stage to be under way")
    subprocess.run(["scancel", jid], env=slurm_env, check=True)
    finish(p)
    log = out.read_text()
    assert "world 1 (1 machine(s) x 1 processes)" in log
    assert "got SIGTERM" in log and "stopped on request in stage joint epoch 1" in log, log
    assert "requeueing" not in log and f"[{jid}/1]" not in log
    progress = json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    assert progress["epoch"] == 1 and progress["batch"] >= 2, "a mid-epoch checkpoint"
    assert not (run / "metrics.json").exists()


def test_killed_job_resumes_when_resubmitted(slurm_env, shards, work, reference):
    """SIGKILL: no chance to checkpoint; the resubmitted job starts from the last epoch's checkpoint.
    Shards are staged to a node-local folder (SHARDS_STAGE_DIR) by both jobs."""
    run, stage = work / "killed", work / "node-local"
    args = [TRAIN, RECIPE, f"data.shards={shards}", f"run.dir={run}", *TINY]
    env = {"SAR_PREEMPT_TEST_DELAY": STEP_DELAY, "SHARDS_STAGE_DIR": str(stage)}
    p = sbatch(slurm_env, work / "killed-1.out", *args, extra_env=env)
    jid = job_id(p)
    wait_for(lambda: train_lines(run, 1) >= 2, 240, "epoch 1 of the stage to be under way")
    # `scancel --signal=KILL` is a plain cancel (SIGTERM first); kill -9 the step's processes
    # instead, as a crashed node would leave them.
    pids = subprocess.run(["scontrol", "listpids", jid], env=slurm_env, capture_output=True, text=True).stdout
    step = [int(x.split()[0]) for x in pids.splitlines()[1:] if x.split()[2] not in ("batch", "extern")]
    assert step, pids
    for pid in step:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert finish(p) != 0
    assert not (run / "metrics.json").exists()
    progress = json.loads((run / "checkpoints" / "last" / "progress.json").read_text())
    assert (progress["epoch"], progress["batch"]) == (1, 0), "the checkpoint of the end of epoch 0"

    p = sbatch(slurm_env, work / "killed-2.out", *args, extra_env={"SHARDS_STAGE_DIR": str(stage)})
    assert finish(p) == 0, (work / "killed-2.out").read_text()
    assert "resuming" in (work / "killed-2.out").read_text()
    assert (stage / shards.name / "index.json").is_file()
    assert f"shards: {stage / shards.name}" in (run / "config.yaml").read_text()
    assert_same_result(run, reference)


# ---------------------------------------------------------------- bad input: refused before training
def _refused(slurm_env, work, name: str, *args: str) -> str:
    out = work / f"{name}.out"
    p = sbatch(slurm_env, out, TRAIN, *args)
    assert finish(p, 120) != 0
    text = out.read_text()
    assert "world" not in text, "the job got as far as launching the trainer"
    return text


def test_missing_recipe_is_refused(slurm_env, shards, work):
    text = _refused(slurm_env, work, "missing", "no/such/recipe.yaml", f"data.shards={shards}",
                    f"run.dir={work / 'never'}")
    assert "error: no/such/recipe.yaml: no such recipe file" in text
    assert not (work / "never").exists()


def test_run_folder_of_another_recipe_is_refused(slurm_env, shards, work, reference):
    before = (reference / "metrics.json").read_bytes()
    text = _refused(slurm_env, work, "other", RECIPE, f"data.shards={shards}", f"run.dir={reference}",
                    *TINY, "stages.0.epochs=5")
    assert "different recipe" in text and str(reference) in text
    assert (reference / "metrics.json").read_bytes() == before


def test_batch_not_divisible_by_world_is_refused(slurm_env, shards, work):
    text = _refused(slurm_env, work, "batch", RECIPE, f"data.shards={shards}", f"run.dir={work / 'never2'}",
                    *TINY, "data.batch_size=7")
    assert "error: data.batch_size: 7 is not divisible by processes" in text
    assert not (work / "never2").exists()
