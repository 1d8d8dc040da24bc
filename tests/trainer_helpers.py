"""Shared by the trainer tests: tiny shards with a test split, and overrides for tiny runs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_raw  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY = ["data.input_size=16", "data.batch_size=8", "data.eval_batch_size=16", "data.num_workers=0",
        "model.depth=8", "model.width=8", "run.progress_bar=false", "run.log_every=2"]


def write_test_images(folder: Path, per_class: int = 2, classes: int = 4, seed: int = 1) -> Path:
    """A flat NTIRE-style test folder (SAR_<id>.png) plus labels CSV; ids do not clash with train."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["image_id,class_id"]
    next_id = 1000
    for label in range(classes):
        for _ in range(per_class):
            h, w = rng.integers(54, 61, size=2)
            pixels = rng.integers(0, 120, size=(h, w)) + 12 * label
            Image.fromarray(pixels.astype(np.uint8), mode="L").save(folder / f"SAR_{next_id}.png")
            rows.append(f"{next_id},{label}")
            next_id += 1
    (folder / "EO_1000.png").write_bytes(b"not a SAR chip")  # must be ignored
    csv = folder.parent / "test_labels.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


def build_tiny(root: Path, with_test: bool = True) -> Path:
    from shards.build import build_shards

    raw = write_raw(root / "raw")
    out = root / "shards"
    build_shards(raw, out, val_fraction=0.2, seed=0, shard_size=8, workers=1, quiet=True)
    if with_test:
        csv = write_test_images(root / "test_images")
        build_shards(root / "test_images", out, split="test", labels_csv=csv, shard_size=8, workers=1,
                     quiet=True)
    return out


def recipe_overrides(name: str, cfg_stages: list[dict] | None = None) -> list[str]:
    """Tiny overrides for a built-in recipe: 1 epoch per stage, 8 per class, classes of 4."""
    from trainer.spec.config import load_config

    stages = load_config(name, ["data.shards=-"])["stages"]
    out = []
    for i, st in enumerate(stages):
        out.append(f"stages.{i}.epochs=1")
        if st["sampler"]["per_class"]:
            out.append(f"stages.{i}.sampler.per_class=8")
        if st["sampler"]["classes"]:
            out.append(f"stages.{i}.sampler.classes=[1,2,3]")
    return out + ["posthoc.crt.steps=4", "posthoc.lws.steps=4"]


def fake_index(counts: list[int], sizes: dict[str, int] | None = None):
    """A ClassIndex with a train split of `counts` per class (no files): for recipe resolution."""
    from shards.index import ClassIndex, SplitIndex

    labels = np.repeat(np.arange(len(counts)), counts)
    n = len(labels)
    cols = {c: np.zeros(n, dtype=np.int64) for c in ("shard", "offset", "size", "crc32", "height", "width")}
    split = SplitIndex(name="train", root=Path("/fake"), shards=[], keys=[str(i) for i in range(n)],
                       labels=labels, pixel_mean=0.5, pixel_std=0.2, num_classes=len(counts),
                       image_sizes=sizes or {"56x56": n}, **cols)
    return ClassIndex(root=Path("/fake"), classes=[str(c) for c in range(len(counts))],
                      splits={"train": split, "val": split})
