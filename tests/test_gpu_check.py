"""launch/gpu_check.sh --cpu-smoke: every step of the GPU check runs with tiny sizes on the CPU
or says why it is skipped, DALI wheel parts carried in are joined (and checked), and summary.md
names every step with its exit status and numbers."""
from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "launch" / "gpu_check.sh"
STEPS = ("install", "data", "gpu_tests", "bench_gpu_eager", "loaders", "resume_auto", "resume_dali",
         "latency", "bench_gpu_compiled")
SECTIONS = ("1. Install", "2. Synthetic mini set", "3. GPU tests", "4. Training throughput",
            "5. Loader throughput", "6. Preemption and resume", "7. Inference latency")
WHEEL = "nvidia_dali_smoke-0.1-py3-none-any.whl"


def wheel_parts(folder: Path) -> None:
    """A tiny valid wheel named like DALI's, split in two parts (as the 424 MB one is carried),
    with the SHA256SUMS of the whole wheel beside them."""
    info = "nvidia_dali_smoke-0.1.dist-info"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("nvidia_dali_smoke/__init__.py", "")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: nvidia-dali-smoke\nVersion: 0.1\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    data = buf.getvalue()
    folder.mkdir(parents=True)
    (folder / f"{WHEEL}.part-aa").write_bytes(data[:len(data) // 2])
    (folder / f"{WHEEL}.part-ab").write_bytes(data[len(data) // 2:])
    (folder / "SHA256SUMS").write_text(f"{hashlib.sha256(data).hexdigest()}  {WHEEL}\n")


def test_unknown_argument_exits_2():
    run = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2 and "usage" in run.stderr


@pytest.mark.slow
def test_cpu_smoke_runs_every_step_and_writes_the_summary(tmp_path):
    out, parts = tmp_path / "out", tmp_path / "dali"
    wheel_parts(parts)
    env = {**os.environ, "OUT": str(out), "DALI_PARTS": str(parts), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=600)
    summary = out / "summary.md"
    assert summary.is_file(), run.stdout + run.stderr
    text = summary.read_text()
    assert run.returncode == 0, text
    status = dict(re.findall(r"(?m)^\| (\w+) \| (ok|skipped|failed|timeout) \|", text))
    assert set(status) == set(STEPS), text
    assert all(status[s] == "ok" for s in ("install", "data", "gpu_tests", "loaders", "resume_auto", "latency"))
    assert status["bench_gpu_eager"] == status["bench_gpu_compiled"] == "skipped" and "needs CUDA" in text
    for section in SECTIONS:
        assert f"## {section}" in text
    assert "Would install nvidia-dali-smoke-0.1" in (out / "install.log").read_text()   # parts joined
    assert f"{WHEEL}: OK" in (out / "install.log").read_text()                          # and checked
    for line in (r"ratio resident / shard reader: [\d.]+x", r"ratio dali resident / dali: [\d.]+x",
                 r"within the tolerance 0.02", r"\| 16 \| 2 \| [\d.]+ \|"):
        assert re.search(line, text), (line, text)
