"""Synthetic SAR vehicle chips in the NTIRE raw layout: the embedded default dataset.

`python -m datasets synth OUT [--preset mini|small|ntire] [--seed S] [--look SIDE] [--workers N]`

This module plans a set (which chip of which class goes where), writes it (chips, EO twins,
test labels, a contact sheet, the synth.json manifest) and holds the presets and the CLI.
The pictures come from `datasets.synth_render` (radar, clutter, shadow, speckle), the vehicles
from `datasets.synth_vehicles`. By default the radar looks from the left of the image; `look`
turns every finished chip so that it looks from another side.
Every chip has its own RNG seeded from (seed, split, index): output is independent of workers.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from datasets.ntire import (CHIP_SIDE_RANGE, CLASS_NAMES, NTIRE_TEST_PER_CLASS, NTIRE_TRAIN_COUNTS,
                            TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES)
from datasets.synth_render import LOOKS, chip_rng, orient, render_eo, render_sar
from datasets.synth_vehicles import vehicle_model
from shards.atomic import write_atomic, write_json
from shards.errors import DataError

__all__ = ["CONTACT_SHEET", "EO_CLASSES", "EO_PER_CLASS", "GENERATOR_VERSION", "LOOKS", "MANIFEST",
           "PRESETS", "Plan", "chip_rng", "main", "make_synthetic", "orient", "render_eo", "render_sar",
           "vehicle_model", "write_contact_sheet"]

GENERATOR_VERSION = "sar-synth/1"
MANIFEST = "synth.json"
CONTACT_SHEET = "contact_sheet.png"
PRESETS: dict[str, tuple[tuple[int, ...], int]] = {   # name -> (train counts, test chips per class)
    "ntire": (NTIRE_TRAIN_COUNTS, NTIRE_TEST_PER_CLASS),
    "mini": ((3000, 360, 196, 136, 40, 24, 24, 20, 24, 20), 50),
    # a small real SAR set: 643 train chips (10% per class, at least 1, later go to val), 10 x 240 test
    "small": ((230, 149, 96, 62, 40, 26, 17, 11, 7, 5), 240),
}
EO_CLASSES = (0, 3, 6, 9)          # class folders that also get a few optical EO_<id>.png chips
EO_PER_CLASS = 2
_MANIFEST_KEYS = ("preset", "seed", "look", "train_counts", "test_per_class")   # what makes a set


@dataclass(frozen=True)
class Plan:
    """Which chip goes where: labels and unique ids of every train and test chip."""
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray

    @classmethod
    def make(cls, counts: tuple[int, ...], test_per_class: int, seed: int) -> "Plan":
        train = np.repeat(np.arange(len(counts)), counts)
        test = np.repeat(np.arange(len(counts)), test_per_class)
        ids = chip_rng(seed, "plan", 0).permutation(train.size + test.size) + 1
        return cls(train, test, ids[:train.size], ids[train.size:])

    def path(self, out: Path, split: str, i: int) -> Path:
        if split == "train":
            return out / TRAIN_IMAGES / str(self.train_labels[i]) / f"SAR_{self.train_ids[i]}.png"
        return out / TEST_IMAGES / f"SAR_{self.test_ids[i]}.png"

    def label(self, split: str, i: int) -> int:
        return int((self.train_labels if split == "train" else self.test_labels)[i])


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


_WORKER: dict = {}


def _init_worker(out: Path, plan: Plan, seed: int, look: str) -> None:
    _WORKER.update(out=out, plan=plan, seed=seed, look=look)


def _render_range(task: tuple[str, int, int]) -> int:
    split, start, stop = task
    out, plan, seed, look = _WORKER["out"], _WORKER["plan"], _WORKER["seed"], _WORKER["look"]
    for i in range(start, stop):
        pixels = orient(render_sar(plan.label(split, i), chip_rng(seed, split, i)), look)
        # atomic (never a torn chip) but no fsync per chip: a rerun regenerates the same bytes
        write_atomic(plan.path(out, split, i), _png_bytes(pixels), durable=False)
    return stop - start


def _tasks(plan: Plan, chunk: int) -> list[tuple[str, int, int]]:
    tasks = []
    for split, n in (("train", plan.train_labels.size), ("test", plan.test_labels.size)):
        tasks += [(split, s, min(n, s + chunk)) for s in range(0, n, chunk)]
    return tasks


def _check_out(out: Path, record: dict) -> None:
    """Refuse an OUT that holds something else; the same preset, seed and look may be regenerated."""
    manifest = out / MANIFEST
    if manifest.exists():
        try:
            old = json.loads(manifest.read_text())
        except (OSError, ValueError) as e:
            raise DataError(f"{manifest}: unreadable ({e}); remove it or choose another OUT") from None
        if isinstance(old, dict):
            old = {"look": "left", **old}          # sets written before `look` existed look from the left
        if not isinstance(old, dict) or any(old.get(k) != record[k] for k in _MANIFEST_KEYS):
            have = {k: old.get(k) for k in _MANIFEST_KEYS} if isinstance(old, dict) else old
            want = {k: record[k] for k in _MANIFEST_KEYS}
            raise DataError(f"{manifest}: OUT holds a different synthetic set {have}, asked for {want}; "
                            "choose another OUT or delete it")
    elif out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    elif out.exists() and any(out.iterdir()):
        raise DataError(f"{out}: not empty and has no {MANIFEST}; refusing to write a synthetic set into it")


def _write_json(path: Path, record: dict) -> None:
    write_json(path, record, indent=1)


def _resolve(out: Path | str, preset: str, seed: int, look: str, counts: tuple[int, ...] | None,
             test_per_class: int | None) -> tuple[tuple[int, ...], int]:
    """Validated (train counts, test chips per class): the preset's, or the given overrides."""
    if preset not in PRESETS:
        raise DataError(f"{out}: unknown preset {preset!r}, choose one of {sorted(PRESETS)}")
    if look not in LOOKS:
        raise DataError(f"{out}: unknown look {look!r}, choose one of {sorted(LOOKS)}")
    base_counts, base_test = PRESETS[preset]
    counts = tuple(int(c) for c in (counts if counts is not None else base_counts))
    test_per_class = int(base_test if test_per_class is None else test_per_class)
    if seed < 0:
        raise DataError(f"{out}: seed must be >= 0, got {seed}")
    if len(counts) != len(CLASS_NAMES) or min(counts) < 1 or test_per_class < 0:
        raise DataError(f"{out}: need {len(CLASS_NAMES)} train counts >= 1 and test_per_class >= 0, "
                        f"got {counts} and {test_per_class}")
    return counts, test_per_class


def make_synthetic(out: Path | str, preset: str = "mini", seed: int = 0, *, look: str = "left",
                   counts: tuple[int, ...] | None = None, test_per_class: int | None = None,
                   workers: int = 1, progress: bool = False, chunk: int = 256) -> dict:
    """Write a synthetic SAR set in the NTIRE raw layout under `out`; returns the synth.json record.

    `look` is the side of the image the radar looks from (see `LOOKS`; "left" is the original
    rendering, the others turn every chip). `counts` / `test_per_class` override the preset's
    numbers (tests use tiny sets)."""
    counts, test_per_class = _resolve(out, preset, seed, look, counts, test_per_class)
    out = Path(out)
    plan = Plan.make(counts, test_per_class, seed)
    record = {"generator": GENERATOR_VERSION, "preset": preset, "seed": int(seed), "look": look,
              "train_counts": list(counts), "test_per_class": test_per_class,
              "num_train": int(sum(counts)), "num_test": int(plan.test_ids.size),
              "classes": list(CLASS_NAMES), "eo_files": [], "complete": False}
    _check_out(out, record)
    _make_folders(out, len(counts))
    _remove_temporaries(out)                       # left by a run that was killed mid-write
    _write_json(out / MANIFEST, record)            # claims OUT before any chip lands
    _render_all(out, plan, seed, look, workers=workers, progress=progress, chunk=chunk)
    record["eo_files"] = _write_eo(out, plan, seed, look)
    _write_test_labels(out / TEST_LABELS, plan)
    write_contact_sheet(out, plan)
    record["complete"] = True
    _write_json(out / MANIFEST, record)
    return record


def _render_all(out: Path, plan: Plan, seed: int, look: str, *, workers: int, progress: bool,
                chunk: int) -> None:
    """Every train and test chip, in chunks, in this process or a pool of `workers`."""
    tasks = _tasks(plan, chunk)
    bar = tqdm(total=plan.train_ids.size + plan.test_ids.size, unit="chip", disable=not progress,
               desc="synth")
    if workers <= 1:
        _init_worker(out, plan, seed, look)
        for task in tasks:
            bar.update(_render_range(task))
    else:
        with mp.Pool(workers, _init_worker, (out, plan, seed, look)) as pool:
            for n in pool.imap_unordered(_render_range, tasks):
                bar.update(n)
    bar.close()


def _remove_temporaries(out: Path) -> None:
    for pattern in (f"{TRAIN_IMAGES}/*/.*.tmp", f"{TEST_IMAGES}/.*.tmp", ".*.tmp"):
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


def _make_folders(out: Path, num_classes: int) -> None:
    for label in range(num_classes):
        (out / TRAIN_IMAGES / str(label)).mkdir(parents=True, exist_ok=True)
    (out / TEST_IMAGES).mkdir(parents=True, exist_ok=True)


def _write_eo(out: Path, plan: Plan, seed: int, look: str) -> list[str]:
    """A few optical chips that share the id of a SAR chip in the same folder, as in NTIRE."""
    names = []
    for label in EO_CLASSES:
        for i in np.flatnonzero(plan.train_labels == label)[:EO_PER_CLASS]:
            path = out / TRAIN_IMAGES / str(label) / f"EO_{plan.train_ids[i]}.png"
            pixels = orient(render_eo(label, chip_rng(seed, "eo", int(i))), look)
            write_atomic(path, _png_bytes(pixels), durable=False)
            names.append(str(path.relative_to(out)))
    return names


def _write_test_labels(path: Path, plan: Plan) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["image_id", "class_id"])
    order = np.argsort(plan.test_ids)
    writer.writerows(zip(plan.test_ids[order].tolist(), plan.test_labels[order].tolist()))
    write_atomic(path, buf.getvalue().encode())


def write_contact_sheet(out: Path, plan: Plan, per_class: int = 12, zoom: int = 2) -> Path:
    """One row per class, labelled with its id and name, of the first chips of that class."""
    cell = CHIP_SIDE_RANGE[1] * zoom + 4
    margin = 190
    num_classes = int(plan.train_labels.max()) + 1
    sheet = Image.new("L", (margin + per_class * cell, num_classes * cell), 255)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=15)
    for label in range(num_classes):
        draw.text((6, label * cell + cell // 2 - 9), f"{label} {CLASS_NAMES[label]}", fill=0, font=font)
        for col, i in enumerate(np.flatnonzero(plan.train_labels == label)[:per_class]):
            with Image.open(plan.path(out, "train", int(i))) as chip:
                chip = chip.resize((chip.width * zoom, chip.height * zoom), Image.NEAREST)
                sheet.paste(chip, (margin + col * cell, label * cell + 2))
    path = out / CONTACT_SHEET
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
    return path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m datasets synth",
                                     description="Write a synthetic SAR vehicle set in the NTIRE raw layout.")
    parser.add_argument("out", type=Path, help="output folder (created; must be empty or the same set)")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="mini",
                        help="mini: NTIRE profile scaled down (3844 train, 10x50 test); "
                             "small: a small real SAR set (643 train, 230 down to 5 per class; 10x240 test); "
                             "ntire: the real counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--look", choices=sorted(LOOKS), default="left",
                        help="side of the image the radar looks from (default left: layover to the left, "
                             "shadow to the right; top: shadow falls downwards)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes (output does not depend on it)")
    args = parser.parse_args(argv)
    try:
        record = make_synthetic(args.out, args.preset, args.seed, look=args.look, workers=args.workers,
                                progress=True)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {record['num_train']} train + {record['num_test']} test chips "
          f"({args.preset}, seed {args.seed}, look {args.look}) to {args.out}; "
          f"see {args.out / CONTACT_SHEET}")
    return 0
