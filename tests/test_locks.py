"""One writer per folder (shards/lock.py): two builds into one OUT, a build killed by SIGKILL,
and the lock itself (holder record, stale locks, file systems without flock)."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import write_raw
from shards import lock
from shards.lock import Busy, hold, read_holder
from shards.verify import verify
from trainer_helpers import PYTHON, REPO

BIG = (900, 450, 150)   # ~5 s of building on a busy 2-core machine: long enough to overlap


def build_cmd(raw: Path, out: Path, seed: int) -> list[str]:
    return ["build", str(raw), str(out), "--seed", str(seed), "--shard-size", "50", "--workers", "1",
            "--quiet"]


def wait_until(cond, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        if proc.poll() is not None:
            pytest.fail(f"ended too early: {proc.communicate()}")
        time.sleep(0.02)
    pytest.fail("condition never reached")


def holder_pid(out: Path) -> int | None:
    rec = read_holder(out / ".lock")
    return rec.get("pid") if rec else None


@pytest.fixture(scope="module")
def big_raw(tmp_path_factory) -> Path:
    return write_raw(tmp_path_factory.mktemp("locks") / "raw", counts=BIG)


@pytest.mark.slow
def test_two_builds_into_one_out(big_raw, tmp_path):
    """Build A (seed 0) holds OUT; build B (seed 1, already started and imported) tries while A
    writes: B exits 2 naming A, A finishes and its index verifies."""
    out = tmp_path / "out"
    go = tmp_path / "go"
    b = subprocess.Popen([PYTHON, "-c", "import sys, time, pathlib\nfrom shards.__main__ import main\n"
                          "import shards.build\n"
                          f"while not pathlib.Path({str(go)!r}).exists(): time.sleep(0.01)\n"
                          f"sys.exit(main({build_cmd(big_raw, out, 1)!r}))"],
                         cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    a = subprocess.Popen([PYTHON, "-m", "shards", *build_cmd(big_raw, out, 0)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: holder_pid(out) == a.pid and (out / ".build").is_dir(), a)
    go.touch()
    b_out, b_err = b.communicate(timeout=300)
    a_out, a_err = a.communicate(timeout=300)
    assert b.returncode == 2, b_err
    assert re.fullmatch(rf"error: {re.escape(str(out))}: in use by shards build \(pid {a.pid} on \S+, since "
                        r"\S+Z\); wait for it to end or use another folder \(lock file .*\.lock\)\n", b_err), b_err
    assert a.returncode == 0, a_err
    report = verify(out)
    assert report.samples == sum(BIG) and report.sealed
    assert not (out / ".lock").exists() and not (out / ".build").exists()


@pytest.mark.slow
def test_sigkill_mid_build_then_rerun(big_raw, tmp_path):
    out = tmp_path / "out"
    a = subprocess.Popen([PYTHON, "-m", "shards", *build_cmd(big_raw, out, 0)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: holder_pid(out) == a.pid and len(list((out / ".build").glob("*/*.json"))) >= 2, a)
    a.send_signal(signal.SIGKILL)
    a.wait()
    assert holder_pid(out) == a.pid           # the lock file stays, the flock went with the process
    assert not (out / "index.json").exists()
    r = subprocess.run([PYTHON, "-m", "shards", *build_cmd(big_raw, out, 0)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"note: {out / '.lock'}: taking over the lock left by shards build (pid {a.pid} " in r.stderr
    assert verify(out).samples == sum(BIG)
    assert not (out / ".lock").exists()


def test_holder_record_and_release(tmp_path):
    folder = tmp_path / "f"
    with hold(folder, "unit test") as rec:
        assert read_holder(folder / ".lock") == rec
        assert rec["pid"] == os.getpid() and rec["command"] == "unit test"
        with pytest.raises(Busy, match=rf"{folder}: in use by unit test \(pid {os.getpid()} "):
            with hold(folder, "second"):
                pass
    assert not (folder / ".lock").exists()
    with hold(folder, "again"):       # free again after a clean release
        pass


def test_busy_while_the_holder_has_not_written_its_record(tmp_path):
    path = tmp_path / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        with pytest.raises(Busy, match="a process that has not recorded itself yet"):
            with hold(tmp_path, "x"):
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("pid, busy", [(os.getpid(), True), (2 ** 22 + 12345, False)])
def test_without_flock_the_record_decides(tmp_path, monkeypatch, pid, busy):
    """A file system without flock (ENOLCK): a live pid on this host holds, a dead one does not."""
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    (tmp_path / ".lock").write_text(json.dumps({"pid": pid, "host": lock.socket.gethostname(),
                                                "command": "other", "since": "t"}))
    if busy:
        with pytest.raises(Busy, match=f"pid {pid} "):
            with hold(tmp_path, "x"):
                pass
    else:
        notes = []
        with hold(tmp_path, "x", on_stale=notes.append):
            pass
        assert notes and f"pid {pid} " in notes[0]


def test_lock_file_replaced_between_open_and_lock(tmp_path, monkeypatch):
    """The holder removed its file as we opened it: lock the new file, not the orphan."""
    real = lock._same_file
    calls = []
    monkeypatch.setattr(lock, "_same_file", lambda fd, path: calls.append(1) or (len(calls) > 1 and real(fd, path)))
    with hold(tmp_path, "x"):
        assert read_holder(tmp_path / ".lock")["command"] == "x"
    assert len(calls) >= 2
