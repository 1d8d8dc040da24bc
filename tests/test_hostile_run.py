"""Hostile input to `python -m trainer` as a table (the shards' table is test_hostile.py): a
finished tiny run is copied and damaged one way per case; each case states the exit code, the
one `error:` line and which files of the run may change, and the test checks nothing else did."""
from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from case_table import record
from test_hostile import changes, refuse_writes, snapshot
from trainer.__main__ import main
from trainer_helpers import PYTHON, REPO, TINY, build_tiny, recipe_overrides, write_test_images

RECIPE = "joint_mini"
STAGE = Path("stages/0-joint")
LAST = Path("checkpoints/last")
# what any command that gets as far as the accelerator may touch in a run folder
TRACKERS = r"^run/tb(/|$)"
# what a resume that stops at the checkpoint has already rewritten (as a rerun would again)
RESUMED = TRACKERS + r"|^run/history\.jsonl$|^run/config\.yaml$|^run/run\.json$"


@dataclass
class Case:
    name: str
    prepare: Callable[[Path], list[str]]   # damages tmp/run (and may add files), returns argv
    code: int
    message: str
    may_change: str = r"$^"
    patch: Callable[[pytest.MonkeyPatch, Path], None] | None = None
    isolated: bool = False     # run in a child process (the command may crash the interpreter)
    xfail: str = ""            # known to fail today: why


def unfinished(run: Path) -> None:
    """A finished run made to look interrupted: `resume` then loads its last checkpoint."""
    (run / "metrics.json").unlink()


def tensors(path: Path, fn: Callable[[dict], dict]) -> None:
    state = torch.load(path, weights_only=True)
    torch.save(fn(state), path)


def other_rng(path: Path) -> None:
    """Random states of the right form but of another moment: the restore cannot match them."""
    from accelerate.utils import load

    states = load(path)
    states["torch_manual_seed"] = torch.zeros_like(states["torch_manual_seed"])
    torch.save(states, path)


def nan_weights(state: dict) -> dict:
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = state[key].clone().fill_(float("nan"))
    return state


def evil_pickle(path: Path) -> None:
    torch.save({"state": argparse.Namespace(cmd="rm -rf ~")}, path)


def predict(tmp: Path) -> list[str]:
    return ["predict", "--run", str(tmp / "run"), "--images", str(tmp / "images"),
            "--out", str(tmp / "results.csv")]


def with_run(damage: Callable[[Path], None], argv: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    def prepare(tmp: Path) -> list[str]:
        damage(tmp / "run")
        return argv(tmp)
    return prepare


def resume(tmp: Path) -> list[str]:
    return ["resume", str(tmp / "run")]


def corrupt_idat_image(tmp: Path) -> None:
    p = sorted((tmp / "images").glob("SAR_*.png"))[0]
    data = bytearray(p.read_bytes())
    i = data.index(b"IDAT") + 8
    data[i:i + 16] = b"\xff" * 16
    p.write_bytes(bytes(data))


def disk_full_on_checkpoint(monkeypatch: pytest.MonkeyPatch, tmp: Path) -> None:
    from accelerate import Accelerator

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(Accelerator, "save_state", full)


def train_again(tmp: Path) -> list[str]:
    unfinished(tmp / "run")
    shutil.rmtree(tmp / "run" / "checkpoints")   # no checkpoint: trains from the start
    return ["resume", str(tmp / "run")]


CASES = [
    Case("predict: NaN weights", with_run(lambda r: tensors(r / STAGE / "model.pt", nan_weights), predict), 2,
         r"run/stages/0-joint/model\.pt: weights hold NaN or infinite values"),
    Case("evaluate: NaN weights", with_run(lambda r: tensors(r / STAGE / "model.pt", nan_weights),
                                           lambda t: ["evaluate", "--run", str(t / "run")]), 2,
         r"model\.pt: weights hold NaN", may_change=TRACKERS),
    Case("export: NaN weights", with_run(lambda r: tensors(r / STAGE / "model.pt", nan_weights),
                                         lambda t: ["export", "--run", str(t / "run")]), 2,
         r"model\.pt: weights hold NaN"),
    Case("predict: model.pt a refused pickle", with_run(lambda r: evil_pickle(r / STAGE / "model.pt"), predict), 2,
         r"model\.pt: cannot be loaded as weights \(a pickle weights_only loading refuses: it references "
         r"argparse\.Namespace\)"),
    Case("predict: model.pt not a tensor file", with_run(lambda r: (r / STAGE / "model.pt").write_text("x"),
                                                         predict), 2, r"model\.pt: cannot be loaded as weights"),
    Case("predict: corrupt IDAT chip", lambda t: corrupt_idat_image(t) or predict(t), 2,
         r"images/SAR_\d+\.png: ", isolated=True),   # in a child process: a decoder crash must not end pytest
    Case("resume: optimizer.bin a refused pickle",
         with_run(lambda r: unfinished(r) or evil_pickle(r / LAST / "optimizer.bin"), resume), 2,
         r"run/checkpoints/last/optimizer\.bin: checkpoint file refused \(a pickle weights_only loading "
         r"refuses: it references argparse\.Namespace\)", may_change=RESUMED),
    Case("resume: model.safetensors damaged",
         with_run(lambda r: unfinished(r) or (r / LAST / "model.safetensors").write_bytes(b"\0" * 64), resume), 2,
         r"run/checkpoints/last/model\.safetensors: checkpoint file refused", may_change=RESUMED),
    Case("resume: RNG states missing",
         with_run(lambda r: unfinished(r) or (r / LAST / "random_states_0.pkl").unlink(), resume), 2,
         r"random_states_0\.pkl: random states cannot be loaded .*cannot be resumed exactly", may_change=RESUMED),
    Case("resume: RNG states not a tensor file",
         with_run(lambda r: unfinished(r) or (r / LAST / "random_states_0.pkl").write_text("x"), resume), 2,
         r"random_states_0\.pkl: random states cannot be loaded", may_change=RESUMED),
    Case("resume: RNG states unusable",
         with_run(lambda r: unfinished(r) or other_rng(r / LAST / "random_states_0.pkl"), resume), 2, r"random_states_0\.pkl: random states (incomplete|were not restored)",
         may_change=RESUMED),
    Case("train: disk full at the checkpoint", train_again, 2,
         r"run/checkpoints/\.tmp-last: cannot write the checkpoint: no space left",
         may_change=RESUMED + r"|^run/checkpoints(/|$)", patch=disk_full_on_checkpoint),
    Case("train: read-only run folder", lambda t: resume(t), 2,
         r"run/\.lock: cannot create the lock file: read-only", patch=refuse_writes("run", errno.EROFS)),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("hostile_run")
    shards = build_tiny(base)
    assert main(["--config", RECIPE, f"data.shards={shards}", f"run.dir={base / 'run'}", *TINY,
                 *recipe_overrides(RECIPE)]) == 0
    write_test_images(base / "images", per_class=1)
    return base


def copy_run(finished: Path, tmp: Path) -> Path:
    """The finished run under tmp/run (its recorded run.dir follows it) and its test chips."""
    run = shutil.copytree(finished / "run", tmp / "run")
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(finished / "run"), str(run)))
    shutil.copytree(finished / "images", tmp / "images")
    return run


def run_cli(case: Case, argv: list[str], capsys) -> tuple[int, str]:
    if case.isolated:
        r = subprocess.run([PYTHON, "-m", "trainer", *argv], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
        return r.returncode, r.stderr
    code = main(argv)
    return code, capsys.readouterr().err


PARAMS = [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=c.xfail, strict=True)] if c.xfail else [])
          for c in CASES]


@pytest.mark.parametrize("case", PARAMS)
def test_hostile_run(case: Case, finished: Path, tmp_path: Path, monkeypatch, capsys):
    copy_run(finished, tmp_path)
    argv = case.prepare(tmp_path)
    before = snapshot(tmp_path)
    if case.patch:
        case.patch(monkeypatch, tmp_path)
    code, err = run_cli(case, argv, capsys)
    monkeypatch.undo()
    lines = [x for x in err.splitlines() if x.startswith("error")]
    diff = changes(before, snapshot(tmp_path))
    record(case.name, code, " / ".join(lines), diff)
    assert code == case.code, err
    assert len(lines) == 1, err
    assert re.search(case.message, lines[0]), lines[0]
    changed = {p for p in diff if not re.search(case.may_change, p)}
    assert not changed, f"changed: {sorted(changed)}"
    assert not (tmp_path / "run" / ".lock").exists()


def test_second_trainer_on_a_live_run_folder(finished: Path, tmp_path: Path):
    """A live holder of RUN/.lock (what a running trainer holds): `resume` and `train` exit 2
    naming it, and change nothing; once the holder is SIGKILLed, resume takes the lock over."""
    run = copy_run(finished, tmp_path)
    (run / "metrics.json").unlink()
    holder = subprocess.Popen([PYTHON, "-c", "import sys, time\nfrom shards.lock import hold\n"
                               f"with hold({str(run)!r}, 'python -m trainer'):\n"
                               "    print('held', flush=True); time.sleep(120)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = snapshot(run)
        r = subprocess.run([PYTHON, "-m", "trainer", "resume", str(run)], cwd=REPO, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        last = r.stderr.strip().splitlines()[-1]
        assert re.fullmatch(rf"error: {re.escape(str(run))}: in use by python -m trainer \(pid {holder.pid} "
                            r"on \S+, since \d{4}-\d\d-\d\dT[\d:]+Z\); wait for it to end or use another "
                            r"folder \(lock file .*\.lock\)", last), last
        assert not changes(before, snapshot(run))  # the second trainer wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (run / ".lock").exists()          # what a killed trainer leaves
    r = subprocess.run([PYTHON, "-m", "trainer", "resume", str(run)], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"taking over the lock left by python -m trainer (pid {holder.pid} " in r.stderr
    assert (run / "metrics.json").is_file() and not (run / ".lock").exists()


@pytest.mark.slow
def test_two_trainers_on_one_run_dir(finished: Path, tmp_path: Path):
    """Trainer A runs; the same command again (trainer B) exits 2 naming A, and A goes on."""
    run = tmp_path / "run"
    cmd = [PYTHON, "-m", "trainer", "--config", RECIPE, f"data.shards={finished / 'shards'}", f"run.dir={run}",
           *TINY, *recipe_overrides(RECIPE), "stages.0.epochs=200"]
    a = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        end = time.time() + 120
        while not ((run / ".lock").is_file() and f'"pid": {a.pid},' in (run / ".lock").read_text()):
            assert a.poll() is None and time.time() < end, a.stderr.read() if a.poll() is not None else "slow"
            time.sleep(0.05)
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert re.search(rf"error: {re.escape(str(run))}: in use by python -m trainer \(pid {a.pid} on ",
                         r.stderr.strip().splitlines()[-1]), r.stderr
        assert a.poll() is None           # the first trainer was not disturbed
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()


def test_lock_file_has_no_say_over_a_finished_process(finished: Path, tmp_path: Path):
    """A stale lock file of this very host (pid long gone): the run goes on."""
    run = copy_run(finished, tmp_path)
    (run / ".lock").write_text('{"pid": 999999999, "host": "elsewhere", "command": "x", "since": "then"}\n')
    assert main(["resume", str(run)]) == 0
    assert not (run / ".lock").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
