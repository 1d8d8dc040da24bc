"""launch/gpu_pack.sh and launch/gpu_check.sh: the wheels carried to the GPU node (split in
parts, checksummed), the resume comparison, the summary (each step ok / skipped (why) /
FAILED (why), every number, at most 3 files in OUT), and the CPU smoke of both phases run in a
virtualenv holding only the node's packages, with no index."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CHECK, PACK = REPO / "launch" / "gpu_check.sh", REPO / "launch" / "gpu_pack.sh"
sys.path.insert(0, str(REPO / "launch"))
import gpu_check  # noqa: E402  (launch/gpu_check.py)

CORE_STEPS = ("install", "data", "bench_eager", "loaders", "resume_det", "latency", "gpu_tests",
              "resume_nondet", "bench_compiled")
FAKE = "nvidia_dali_smoke-0.1-py3-none-any.whl"


def fake_wheel(folder: Path, name: str = FAKE, size: int = 4000) -> Path:
    """A small valid wheel, named like DALI's, with incompressible filler so it splits in parts."""
    dist, version = name.split("-")[:2]
    info = f"{dist}-{version}.dist-info"
    package = "nvidia/dali_smoke" if dist.startswith("nvidia") else dist   # as DALI: inside nvidia/
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        if dist.startswith("nvidia"):
            z.writestr("nvidia/__init__.py", "")          # as nvimgcodec's wheel: a regular package
        z.writestr(f"{package}/__init__.py", "")
        z.writestr(f"{package}/filler.bin", os.urandom(size))
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist.replace('_', '-')}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(buf.getvalue())
    return folder / name


def pack_dali(tmp: Path, part_size: str = "1500") -> tuple[Path, Path]:
    """gpu_pack.sh --dali on a fake wheel (no download); the core folder exists, so it is kept."""
    carry, dali = tmp / "carry", tmp / "dali"
    core = fake_wheel(carry, "core_smoke-0.1-py3-none-any.whl", 10)
    (carry / "SHA256SUMS").write_text(f"{hashlib.sha256(core.read_bytes()).hexdigest()}  {core.name}\n")
    fake_wheel(tmp / "wheels")
    env = {**os.environ, "CARRY": str(carry), "DALI_CARRY": str(dali), "DALI_WHEELS": str(tmp / "wheels"),
           "GPU_PART_SIZE": part_size}
    run = subprocess.run(["bash", str(PACK), "--dali"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return carry, dali


def check_parts(carry: Path, dali: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CARRY": str(carry), "DALI_CARRY": str(dali)}
    return subprocess.run(["bash", str(PACK), "--check"], env=env, capture_output=True, text=True, timeout=60)


def test_usage_errors_exit_2():
    for script, arg in ((CHECK, "--gpu"), (PACK, "--all")):
        run = subprocess.run(["bash", str(script), arg], capture_output=True, text=True, timeout=30)
        assert run.returncode == 2 and "usage" in run.stderr


def test_dali_wheels_are_split_in_checked_parts_one_folder_each(tmp_path):
    carry, dali = pack_dali(tmp_path)
    parts = sorted(dali.glob("part*/dali-phase.tar.part-*"))
    assert len(parts) >= 3 and all(p.stat().st_size <= 1500 for p in parts)
    assert [p.parent.name for p in parts] == [f"part{k}" for k in range(1, len(parts) + 1)]
    sums = (dali / "part1" / "SHA256SUMS").read_text()
    assert all((p.parent / "SHA256SUMS").read_text() == sums for p in parts)   # every part knows all
    joined = b"".join(p.read_bytes() for p in parts)
    assert f"{hashlib.sha256(joined).hexdigest()}  dali-phase.tar" in sums
    run = check_parts(carry, dali)
    assert run.returncode == 0 and f"{len(parts)} of {len(parts)} parts here" in run.stdout
    shutil.rmtree(parts[1].parent)                                             # not carried yet
    run = check_parts(carry, dali)
    assert f"{parts[1].parent.name}/{parts[1].name} missing" in run.stdout
    parts[0].write_bytes(b"x" + parts[0].read_bytes()[1:])                     # damaged on the way
    run = check_parts(carry, dali)
    assert run.returncode == 1 and "CORRUPT" in run.stdout


def third_party_imports(folders: tuple[str, ...]) -> dict[str, str]:
    """Top-level module -> a file importing it, over the project's packages and tests."""
    import ast

    local = {p.name for p in REPO.iterdir() if p.is_dir()} | {p.stem for p in (REPO / "tests").glob("*.py")}
    local |= {p.stem for p in (REPO / "launch").glob("*.py")}
    found: dict[str, str] = {}
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local and top != "__future__":
                        found.setdefault(top if top != "nvidia" else name, str(path.relative_to(REPO)))
    return found


def test_every_import_is_on_the_node_or_carried():
    """A new dependency must be on the node or packed by gpu_pack.sh (DALI: its own phase)."""
    from importlib.metadata import packages_distributions

    from node_env import canonical, node_packages

    carried = re.search(r"CORE_PACKAGES=\(([^)]*)\)", PACK.read_text()).group(1).split()
    allowed = node_packages() | {canonical(c) for c in carried}
    dists = packages_distributions()
    missing = {}
    for module, where in third_party_imports(("shards", "datasets", "trainer", "tests", "launch")).items():
        if module.startswith("nvidia.dali"):
            continue                                   # the DALI phase carries it
        names = {canonical(d) for d in dists.get(module, [module])}
        if not names & allowed:
            missing[module] = where
    assert not missing, f"imported, but neither on the GPU node nor in CORE_PACKAGES: {missing}"
    assert {"webdataset", "braceexpand"} <= set(carried)


def fake_run(root: Path, metrics: dict, weight: float) -> Path:
    (root / "stages" / "0-joint").mkdir(parents=True)
    (root / "metrics.json").write_text(json.dumps({"classes": ["a"], "final": metrics}))
    torch.save({"w": torch.full((3,), weight), "n": torch.tensor(4)}, root / "stages" / "0-joint" / "model.pt")
    return root


def test_compare_runs_exact_and_within_tolerance(tmp_path):
    final = {"val": {"top1": 0.9, "balanced_acc": 0.8}, "test": {"top1": 0.7, "balanced_acc": 0.6}}
    ref = fake_run(tmp_path / "ref", final, 1.0)
    same = fake_run(tmp_path / "same", final, 1.0)
    r = gpu_check.compare_runs(ref, same, exact=True, tolerance=0.0)
    assert r["ok"] and r["bit_identical"] and r["tensors_compared"] == 2
    drift = {"val": final["val"], "test": {"top1": 0.7, "balanced_acc": 0.63}}
    moved = fake_run(tmp_path / "moved", drift, 1.0 + 1e-6)
    r = gpu_check.compare_runs(ref, moved, exact=True, tolerance=0.0)
    assert not r["ok"] and not r["bit_identical"] and r["max_weight_difference"] == pytest.approx(1e-6, rel=0.1)
    assert gpu_check.compare_runs(ref, moved, exact=False, tolerance=0.05)["ok"]
    assert not gpu_check.compare_runs(ref, moved, exact=False, tolerance=0.02)["ok"]
    out = tmp_path / "r.json"
    assert gpu_check.main(["compare-runs", str(ref), str(moved), "--out", str(out), "--exact"]) == 1
    assert json.loads(out.read_text())["bit_identical"] is False


def test_summary_says_why_and_keeps_partial_numbers(tmp_path, monkeypatch):
    work, out = tmp_path / "work", tmp_path / "out"
    for d in ("logs", "results", "notes"):
        (work / d).mkdir(parents=True)
    (work / "steps.tsv").write_text("install\tok\t0\t3\tinstalled webdataset\nbench_eager\tskipped\t3\t1\tneeds CUDA\n"
                                    "data\tfailed\t1\t2\t\nbench_compiled\ttimeout\t124\t240\t\n")
    (work / "logs" / "data.log").write_text("building\nModuleNotFoundError: No module named 'webdataset'\n")
    row = {"batch": 512, "compile": True, "trainer_images_per_s": 41000.0, "bare_images_per_s": None,
           "train_gflops_per_image": 1.5, "achieved_tflops": 61.5, "mfu": 0.062, "peak_bf16_tflops": 989.0}
    (work / "logs" / "bench_compiled.log").write_text("compiling\n" + json.dumps(row) + "\n")   # then killed
    monkeypatch.setenv("PHASE", "core")
    assert gpu_check.main(["summary", str(work), str(out)]) == 0
    md = (out / "summary.md").read_text()
    assert "| install | ok | 3 | installed webdataset |" in md
    assert "| bench_eager | skipped (needs CUDA) |" in md
    assert "| data | FAILED (ModuleNotFoundError: No module named 'webdataset') |" in md
    assert "| bench_compiled | FAILED (timed out after 240 s) | 240 |  |" in md
    assert re.search(r"\| 512 \| True \| 41,000 \| not run \| 1.50 \| 61.5 \| 6.2% of 989 \|", md)
    assert sorted(p.name for p in out.iterdir()) == ["summary.json", "summary.md"]
    assert json.loads((out / "summary.json").read_text())["results"]["bench"][0]["batch"] == 512


def test_bench_can_time_the_trainer_alone():
    from trainer.commands.bench import compare

    r = compare({"name": "resnet_cifar", "depth": 8, "width": 4}, batch=8, size=16, steps=2, repeats=2,
                precision="no", bare=False)
    assert r["trainer_images_per_s"] > 0 and r["bare_images_per_s"] is None and r["ratio"] is None


def carried_wheels(tmp: Path) -> Path:
    """The repo's packed .gpu_carry, else a fresh pack (PyPI reachable, as in CI)."""
    if (REPO / ".gpu_carry" / "SHA256SUMS").is_file():
        return REPO / ".gpu_carry"
    carry = tmp / "carry"
    env = {**os.environ, "CARRY": str(carry), "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(PACK)], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"gpu_pack.sh could not download the wheels: {run.stderr[-2000:]}"
    return carry


def statuses(md: str) -> dict[str, str]:
    return dict(re.findall(r"(?m)^\| (\w+) \| (ok|skipped \(.*?\)|FAILED \(.*?\)) \|", md))


def files_under(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.slow
def test_cpu_smoke_in_a_venv_of_only_the_node_packages(tmp_path):
    from node_env import make_node_venv, node_env

    python = make_node_venv(tmp_path / "venv")
    env = node_env(python, CARRY=str(carried_wheels(tmp_path)), WORK=str(tmp_path / "work"),
                   OUT=str(tmp_path / "out"))
    lacks = subprocess.run([str(python), "-c", "import webdataset"], env=env, capture_output=True, timeout=60)
    assert lacks.returncode != 0                                     # as on the node
    run = subprocess.run(["bash", str(CHECK), "--cpu-smoke"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1300)
    md = (tmp_path / "out" / "summary.md").read_text()
    assert run.returncode == 0 and "FAILED" not in md, md + run.stdout[-3000:]
    status = statuses(md)
    assert list(status) == list(CORE_STEPS), md
    assert all(status[s] == "ok" for s in ("install", "data", "loaders", "resume_det", "latency", "resume_nondet"))
    assert status["bench_eager"] == status["bench_compiled"] == "skipped (needs CUDA)"
    assert status["gpu_tests"].startswith("skipped (no CUDA")
    assert "installed into" in md or "webdataset" in (tmp_path / "work" / "notes" / "install").read_text()
    assert "final metrics and weights bit-identical" in md and "within 0.06: yes" in md
    assert re.search(r"resident \(ResidentStream, augment_batch on cpu\):\s+\d+ images/s", md)
    assert re.search(r"\| 16 \| 2 \| [\d.]+ \|", md)                # latency, large batch with TTA
    files = files_under(tmp_path / "out")
    assert sorted(p.name for p in files) == ["logs.tar.gz", "summary.json", "summary.md"]

    # The DALI phase: the parts joined and checked, the fake wheel installed, DALI steps skipped.
    carry, dali = pack_dali(tmp_path / "pack")
    env.update(DALI_CARRY=str(dali), OUT=str(tmp_path / "out_dali"))
    run = subprocess.run(["bash", str(CHECK), "--cpu-smoke", "--dali"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1300)
    md = (tmp_path / "out_dali" / "summary.md").read_text()
    assert run.returncode == 0 and "FAILED" not in md, md + run.stdout[-3000:]
    status = statuses(md)
    assert status["dali_install"].startswith("ok") and status["loaders"] == "ok"
    notes = (tmp_path / "work" / "notes" / "dali_install").read_text()
    assert "parts joined and checked" in notes and "nvidia_dali_smoke-0.1" in notes
    assert status["dali_tests"] == status["resume_dali"] == "skipped (DALI does not import)"
    assert len(files_under(tmp_path / "out_dali")) == 3
    # nvidia/ carried in (with an __init__.py) does not hide the node's own nvidia/ packages.
    site = tmp_path / "work" / "site"
    both = subprocess.run([str(python), "-c", "import nvidia.dali_smoke, nvidia.cudnn"], env={**env, "PYTHONPATH": str(site)},
                          capture_output=True, text=True, timeout=60)
    assert both.returncode == 0, both.stderr
