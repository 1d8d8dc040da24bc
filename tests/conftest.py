"""Shared fixtures: a tiny raw NTIRE-layout folder and shards built from it."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Read once per process by the CUDA libraries, at their first call: set here, at import, before
# any test runs (a test's monkeypatch comes after an earlier test's first cuBLAS call).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS (use_deterministic_algorithms)

# Deliberately uneven, with a 3-image tail class, so stratification and balancing are visible.
TINY_COUNTS = (40, 12, 6, 3)


def write_raw(root: Path, counts=TINY_COUNTS, seed: int = 0) -> Path:
    """Write class folders 0..C-1 of random 8-bit grayscale PNGs, 54–60 px per side."""
    rng = np.random.default_rng(seed)
    next_id = 1
    for label, n in enumerate(counts):
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            h, w = rng.integers(54, 61, size=2)
            # Brightness depends on the label so that a model can learn something.
            pixels = rng.integers(0, 120, size=(h, w)) + 12 * label
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"SAR_{next_id}.png")
            next_id += 1
    return root


@pytest.fixture
def tiny_raw(tmp_path: Path) -> Path:
    return write_raw(tmp_path / "raw")


@pytest.fixture
def tiny_shards(tiny_raw: Path, tmp_path: Path) -> Path:
    from shards.build import build_shards

    out = tmp_path / "shards"
    build_shards(tiny_raw, out, val_fraction=0.2, seed=0, shard_size=8, workers=1)
    return out


@pytest.fixture(scope="module")
def module_shards(tmp_path_factory) -> Path:
    """tiny_shards built once per test module (for modules whose tests only read them)."""
    from shards.build import build_shards

    tmp = tmp_path_factory.mktemp("module_shards")
    out = tmp / "shards"
    build_shards(write_raw(tmp / "raw"), out, val_fraction=0.2, seed=0, shard_size=8, workers=1, quiet=True)
    return out


# Multi-channel shard sets: kind -> (shards build --modalities, channels per chip).
CHANNEL_KINDS = {"rgb": ("eo", 3), "pair": ("sar,eo", 4)}


@pytest.fixture(scope="session")
def channel_sets(tmp_path_factory) -> dict[str, Path]:
    """An RGB-only and a SAR+EO shard set of one tiny synthetic set with an EO twin per chip."""
    from datasets.synthetic import make_synthetic
    from shards.build import build_shards

    base = tmp_path_factory.mktemp("channels")
    raw = base / "raw"
    make_synthetic(raw, "mini", seed=0, counts=(6, 4, 3, 3, 3, 3, 3, 3, 3, 3), test_per_class=2, eo="every")
    for kind, (modalities, _) in CHANNEL_KINDS.items():
        build_shards(raw / "train_images", base / kind, val_fraction=0.2, seed=0, workers=1, quiet=True,
                     modalities=modalities)
    return {kind: base / kind for kind in CHANNEL_KINDS}
