"""Two nodes: the rendezvous reachability probe (fast), the banner's hosts, and the whole two-node
Slurm check in network namespaces (launch/slurm/two_node_check.sh; slow, where the machine allows)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PROBE = REPO / "launch" / "slurm" / "reach_head.py"
CHECK = REPO / "launch" / "slurm" / "two_node_check.sh"


def probe(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROBE), *args], capture_output=True, text=True, timeout=timeout)


def closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- reach_head.py
def test_probe_fails_in_one_line_on_a_closed_port():
    port = closed_port()
    started = time.monotonic()
    r = probe("127.0.0.1", str(port), "--timeout", "1.5")
    assert r.returncode == 2
    assert 1.4 < time.monotonic() - started < 10, "gives up after the timeout, not at once nor later"
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in r.stderr
    assert f"cannot reach the rendezvous head 127.0.0.1:{port} within 1.5 s (Connection refused)" in lines[0]


def test_probe_waits_for_a_head_that_comes_up_late():
    """The head's launcher opens the port a little after the other nodes start probing."""
    port = closed_port()
    p = subprocess.Popen([sys.executable, str(PROBE), "localhost", str(port), "--timeout", "20"],
                         stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        assert p.wait(timeout=20) == 0
    err = p.stderr.read()
    assert f"-> localhost (127.0.0.1):{port} reachable after" in err and "error" not in err


def test_probe_on_the_head_only_resolves():
    r = probe("localhost", str(closed_port()), "--is-host", "1", "--timeout", "0.1")
    assert r.returncode == 0 and "is the rendezvous head localhost (127.0.0.1)" in r.stderr


def test_probe_names_a_head_that_does_not_resolve():
    r = probe("no-such-node.invalid", "29500")
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {socket.gethostname()} cannot resolve the rendezvous head 'no-such-node.invalid'")
    assert len(r.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- banner
def test_banner_prints_each_ranks_host_and_head():
    from trainer.summary import _where, format_banner

    info = {"run_dir": "r", "world_size": 2, "devices": ["rank 0: cpu", "rank 1: cpu"], "precision": "no",
            "loader": "resident", "model": {"name": "m", "depth": 8, "width": 4, "head": "linear"},
            "input_size": 16, "global_batch": 8, "split_sizes": {"train": 1}, "range_axis": "horizontal",
            "tta_views": ["identity"], "stages": [], "notes": [],
            "hosts": ["node1", "node2"], "master": ["node1:29500", "node1:29500"]}
    lines = format_banner(info).splitlines()
    assert lines[1] == "  hosts: rank 0 node1 (head node1:29500), rank 1 node2 (head node1:29500)"
    one = _where()   # one process, no launcher: this host, no head
    assert one == {"hosts": [socket.gethostname()], "master": [""]}


# ---------------------------------------------------------------- the two-node check
def _cannot_run_here() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, slurmd)"
    missing = [c for c in ("unshare", "nsenter", "ip", "munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(c)]
    if missing:
        return f"not installed: {', '.join(missing)} (util-linux, iproute2, Debian's slurm and munge)"
    r = subprocess.run(["unshare", "--net", "--uts", "--mount", "true"], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create network namespaces here: {r.stderr.strip()}"
    return None


@pytest.mark.slurm
@pytest.mark.slow
def test_two_node_check(tmp_path):
    """Two nodes in namespaces: a 2-node run on node1 and node2, a preempted + requeued run with the
    same metrics, and a one-line error for an unreachable head. About 2 minutes on 2 shared cores."""
    reason = _cannot_run_here()
    if reason:
        pytest.skip(reason)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, OUT=str(out), PYTHONPATH=str(REPO))
    r = subprocess.run(["bash", str(CHECK)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-5000:]
    run = json.loads((out / "runs" / "plain" / "run.json").read_text())
    assert run["world_size"] == 2 and run["hosts"] == ["node1", "node2"]
    assert run["master"][0] == run["master"][1] and run["master"][0].startswith("node1:")
    plain, preempted = (json.loads((out / "runs" / n / "metrics.json").read_text()) for n in ("plain", "preempted"))
    assert preempted == plain
    assert "requeueing" in (out / "logs" / "preempted.out").read_text()
    summary = json.loads((out / "two_node_check.json").read_text())
    assert set(summary["seconds"]) == {"data", "cluster_start", "plain_run", "preempted_run", "unreachable_head"}
    assert "torn down" in r.stderr
    left = subprocess.run(["pgrep", "-f", str(out)], capture_output=True, text=True).stdout.split()
    assert not left, f"processes left running: {left}"
