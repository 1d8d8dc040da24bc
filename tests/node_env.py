"""A virtualenv that holds only what the GPU node has: the distributions the project needs that
are preinstalled there (launch/gpu_node_packages.txt) and their own dependencies, linked from
this interpreter's site-packages (no reinstall of torch), without webdataset, braceexpand or
DALI. The GPU check's CPU smoke runs in it, so a wheel the carry folder lacks fails here."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
# What the project imports (and its tests, and gpu_check.sh's pip) that the node provides.
ROOTS = ("torch", "torchvision", "accelerate", "numpy", "pyyaml", "pillow", "matplotlib", "tensorboard",
         "tqdm", "onnx", "onnxruntime", "pytest", "pytest-timeout", "psutil", "pip")
NOT_ON_NODE = re.compile(r"^(webdataset|braceexpand|nvidia-dali.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def node_packages() -> set[str]:
    lines = (REPO / "launch" / "gpu_node_packages.txt").read_text().splitlines()
    return {canonical(ln.strip()) for ln in lines if ln.strip() and not ln.startswith("#")}


def closure(roots: tuple[str, ...] = ROOTS) -> dict[str, metadata.Distribution]:
    """The roots and their dependencies (markers evaluated for this interpreter, no extras), as
    installed here; a root the node lacks, or a dependency the node must not have, is an error."""
    node = node_packages()
    missing_on_node = [r for r in roots if canonical(r) not in node]
    if missing_on_node:
        raise ValueError(f"not preinstalled on the node: {missing_on_node}")
    found: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        if NOT_ON_NODE.match(name):
            raise ValueError(f"{name} is needed by a node package, but the node does not have it")
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue   # an optional dependency not installed here: the node's own business
        found[name] = dist
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
    return found


def owned(dists) -> set[tuple[str, ...]]:
    """Site-packages-relative paths (as part tuples) of the files these distributions installed."""
    out = set()
    for d in dists:
        for f in d.files or []:
            parts = Path(str(f)).parts
            if parts and parts[0] != "..":
                out.add(parts)
    return out


def link_site(dst: Path, include: set[tuple[str, ...]], exclude: set[tuple[str, ...]], src: Path) -> None:
    """Link each included file at the shallowest folder level no excluded file lies under
    (nvidia/ is shared by torch's CUDA libraries and DALI: it is a real folder, its parts links)."""
    blocked = {p[:k] for p in exclude for k in range(1, len(p) + 1)}
    for parts in include:
        for k in range(1, len(parts) + 1):
            head = parts[:k]
            if head not in blocked:
                target, link = src.joinpath(*head), dst.joinpath(*head)
                if not link.exists() and not link.is_symlink() and target.exists():
                    link.parent.mkdir(parents=True, exist_ok=True)
                    link.symlink_to(target)
                break


def make_node_venv(root: Path) -> Path:
    """A venv at `root` with only the node's packages; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    src = Path(sysconfig.get_paths()["purelib"])
    keep = closure()
    others = [d for d in metadata.distributions(path=[str(src)])
              if canonical(d.metadata["Name"] or "") not in keep]
    link_site(site, owned(keep.values()), owned(others), src)
    return python


def node_env(python: Path, **extra: str) -> dict[str, str]:
    """The environment of a run on the node: no index, nothing of this process's Python path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_"))}
    env.update(PYTHON=str(python), PIP_NO_INDEX="1", PATH=f"{python.parent}:{env.get('PATH', '')}", **extra)
    return env
