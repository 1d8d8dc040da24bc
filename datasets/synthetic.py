"""Synthetic SAR vehicle chips in the NTIRE raw layout: the embedded default dataset.

`python -m datasets synth OUT [--preset mini|small|ntire] [--seed S] [--look SIDE]
[--eo decoys|every|only] [--ood N] [--workers N]`

This module plans a set (which chip of which class goes where), writes it (chips, EO twins,
test labels, a contact sheet, the synth.json manifest) and holds the presets and the CLI.
Optical (EO) chips: `decoys` (default) writes a few `EO_<id>.png` beside SAR chips, as in NTIRE,
for the builder to skip; `every` writes the optical twin of every chip (same vehicle, same id);
`only` writes the twins alone (an RGB-only set). `--ood N` adds `ood_images/` with N chips of
vehicle-like shapes of no class (`OOD_KINDS`) and their ids in `ood_ids.txt`. The defaults
write exactly what earlier versions wrote.
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
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from datasets.ntire import (CLASS_NAMES, NTIRE_TEST_PER_CLASS, NTIRE_TRAIN_COUNTS, OOD_IMAGES,
                            OOD_LIST, TEST_IMAGES, TEST_LABELS, TRAIN_IMAGES)
from datasets.synth_render import (LOOKS, Model, chip_rng, contact_sheet, orient, render_eo,
                                   render_eo_twin, render_sar, render_sar_of)
from datasets.synth_vehicles import OOD_KINDS, ood_model, vehicle_model
from shards.atomic import write_atomic, write_json
from shards.errors import DataError, exit_on_error

__all__ = ["CONTACT_SHEET", "CONTACT_SHEET_EO", "CONTACT_SHEET_OOD", "EO_CLASSES", "EO_MODES",
           "EO_PER_CLASS", "GENERATOR_VERSION", "LOOKS", "MANIFEST", "OOD_KINDS", "PRESETS", "Plan",
           "chip_rng", "main", "make_synthetic", "orient", "render_eo", "render_eo_twin", "render_sar",
           "vehicle_model", "write_contact_sheet"]

GENERATOR_VERSION = "sar-synth/1"
MANIFEST = "synth.json"
CONTACT_SHEET = "contact_sheet.png"
CONTACT_SHEET_EO = "contact_sheet_eo.png"      # with --eo every: the optical twins
CONTACT_SHEET_OOD = "contact_sheet_ood.png"    # with --ood N: one row per kind
EO_MODES = ("decoys", "every", "only")
PRESETS: dict[str, tuple[tuple[int, ...], int]] = {   # name -> (train counts, test chips per class)
    "ntire": (NTIRE_TRAIN_COUNTS, NTIRE_TEST_PER_CLASS),
    "mini": ((3000, 360, 196, 136, 40, 24, 24, 20, 24, 20), 50),
    # a small real SAR set: 643 train chips (10% per class, at least 1, later go to val), 10 x 240 test
    "small": ((230, 149, 96, 62, 40, 26, 17, 11, 7, 5), 240),
}
EO_CLASSES = (0, 3, 6, 9)          # class folders that also get a few optical EO_<id>.png chips
EO_PER_CLASS = 2
_MANIFEST_KEYS = ("preset", "seed", "look", "train_counts", "test_per_class", "eo", "ood")  # what makes a set
# Value of a key a manifest may lack: written before it existed, or left out as the default (so that
# the default set, synth.json included, stays byte-identical to what earlier versions wrote).
_MANIFEST_DEFAULTS = {"look": "left", "eo": "decoys", "ood": 0}


@dataclass(frozen=True)
class Plan:
    """Which chip goes where: labels and unique ids of every train, test and ood chip."""
    train_labels: np.ndarray
    test_labels: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    ood_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ood_kinds: tuple[str, ...] = ()          # OOD_KINDS, in turn

    @classmethod
    def make(cls, counts: tuple[int, ...], test_per_class: int, seed: int, ood: int = 0) -> "Plan":
        train = np.repeat(np.arange(len(counts)), counts)
        test = np.repeat(np.arange(len(counts)), test_per_class)
        ids = chip_rng(seed, "plan", 0).permutation(train.size + test.size) + 1
        ood_ids = np.arange(ids.size + 1, ids.size + 1 + ood)     # after every train and test id
        kinds = tuple(OOD_KINDS[i % len(OOD_KINDS)] for i in range(ood))
        return cls(train, test, ids[:train.size], ids[train.size:], ood_ids, kinds)

    def size(self, split: str) -> int:
        return {"train": self.train_ids, "test": self.test_ids, "ood": self.ood_ids}[split].size

    def path(self, out: Path, split: str, i: int, prefix: str = "SAR_") -> Path:
        if split == "train":
            return out / TRAIN_IMAGES / str(self.train_labels[i]) / f"{prefix}{self.train_ids[i]}.png"
        if split == "ood":
            return out / OOD_IMAGES / f"{prefix}{self.ood_ids[i]}.png"
        return out / TEST_IMAGES / f"{prefix}{self.test_ids[i]}.png"

    def label(self, split: str, i: int) -> int:
        """The class of a chip; -1 for an ood chip."""
        if split == "ood":
            return -1
        return int((self.train_labels if split == "train" else self.test_labels)[i])

    def model(self, split: str, i: int) -> Model:
        """The vehicle model of a chip: its class's, or its ood kind's."""
        if split == "ood":
            return partial(ood_model, self.ood_kinds[i])
        return partial(vehicle_model, self.label(split, i))


def _png_bytes(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


_WORKER: dict = {}


def _init_worker(out: Path, plan: Plan, seed: int, look: str, eo: str = "decoys") -> None:
    _WORKER.update(out=out, plan=plan, seed=seed, look=look, eo=eo)


def _render_range(task: tuple[str, int, int]) -> int:
    split, start, stop = task
    out, plan, seed, look = _WORKER["out"], _WORKER["plan"], _WORKER["seed"], _WORKER["look"]
    eo = _WORKER.get("eo", "decoys")
    for i in range(start, stop):
        # atomic (never a torn chip) but no fsync per chip: a rerun regenerates the same bytes
        if eo != "only":
            if split == "ood":
                pixels = render_sar_of(plan.model(split, i), chip_rng(seed, split, i))
            else:
                pixels = render_sar(plan.label(split, i), chip_rng(seed, split, i))
            write_atomic(plan.path(out, split, i), _png_bytes(orient(pixels, look)), durable=False)
        if eo in ("every", "only"):          # same vehicle: replays the SAR chip's stream
            twin = render_eo_twin(plan.model(split, i), chip_rng(seed, split, i),
                                  chip_rng(seed, f"eo_{split}", i))
            write_atomic(plan.path(out, split, i, "EO_"), _png_bytes(orient(twin, look)), durable=False)
    return stop - start


def _tasks(plan: Plan, chunk: int) -> list[tuple[str, int, int]]:
    tasks = []
    for split in ("train", "test", "ood"):
        n = plan.size(split)
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
            old = {**_MANIFEST_DEFAULTS, **old}    # e.g. sets written before `look` existed look from the left
        want = {k: record.get(k, _MANIFEST_DEFAULTS.get(k)) for k in _MANIFEST_KEYS}
        if not isinstance(old, dict) or any(old.get(k) != want[k] for k in _MANIFEST_KEYS):
            have = {k: old.get(k) for k in _MANIFEST_KEYS} if isinstance(old, dict) else old
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
                   workers: int = 1, progress: bool = False, chunk: int = 256,
                   eo: str = "decoys", ood: int = 0) -> dict:
    """Write a synthetic SAR set in the NTIRE raw layout under `out`; returns the synth.json record.

    `look` is the side of the image the radar looks from (see `LOOKS`; "left" is the original
    rendering, the others turn every chip). `counts` / `test_per_class` override the preset's
    numbers (tests use tiny sets). `eo`: decoys | every | only (see the module docstring);
    `ood`: how many out-of-distribution chips to add under ood_images/."""
    counts, test_per_class = _resolve(out, preset, seed, look, counts, test_per_class)
    if eo not in EO_MODES:
        raise DataError(f"{out}: unknown eo mode {eo!r}, choose one of {list(EO_MODES)}")
    if ood < 0:
        raise DataError(f"{out}: ood must be >= 0, got {ood}")
    out = Path(out)
    plan = Plan.make(counts, test_per_class, seed, ood)
    record = _record(preset, seed, look, counts, test_per_class, plan, eo)
    _check_out(out, record)
    _make_folders(out, len(counts), ood > 0)
    _remove_temporaries(out)                       # left by a run that was killed mid-write
    _write_json(out / MANIFEST, record)            # claims OUT before any chip lands
    _render_all(out, plan, seed, look, workers=workers, progress=progress, chunk=chunk, eo=eo)
    if eo == "decoys":
        record["eo_files"] = _write_eo(out, plan, seed, look)
    _write_test_labels(out / TEST_LABELS, plan)
    if ood:
        write_atomic(out / OOD_LIST, "".join(f"{i}\n" for i in plan.ood_ids.tolist()))
    _write_sheets(out, plan, eo)
    record["complete"] = True
    _write_json(out / MANIFEST, record)
    return record


def _record(preset: str, seed: int, look: str, counts: tuple[int, ...], test_per_class: int,
            plan: Plan, eo: str) -> dict:
    """The synth.json record; `eo` and `ood` appear only when they differ from the defaults."""
    record = {"generator": GENERATOR_VERSION, "preset": preset, "seed": int(seed), "look": look,
              "train_counts": list(counts), "test_per_class": test_per_class,
              "num_train": int(sum(counts)), "num_test": int(plan.test_ids.size),
              "classes": list(CLASS_NAMES), "eo_files": [], "complete": False}
    if eo != "decoys":                             # every chip has its EO_<id>.png (eo_files: decoys only)
        record["eo"] = eo
    if plan.ood_ids.size:
        kinds = {k: plan.ood_kinds.count(k) for k in OOD_KINDS}
        record.update(ood=int(plan.ood_ids.size), ood_kinds=kinds, ood_folder=OOD_IMAGES,
                      ood_list=OOD_LIST, ood_ids=[int(plan.ood_ids[0]), int(plan.ood_ids[-1])],
                      ood_rule="ood chip i (in id order) shows OOD_KINDS[i % 3] of "
                               f"{list(OOD_KINDS)}; it belongs to no class")
    return record


def _render_all(out: Path, plan: Plan, seed: int, look: str, *, workers: int, progress: bool,
                chunk: int, eo: str = "decoys") -> None:
    """Every train, test and ood chip, in chunks, in this process or a pool of `workers`."""
    tasks = _tasks(plan, chunk)
    bar = tqdm(total=sum(plan.size(s) for s in ("train", "test", "ood")), unit="chip",
               disable=not progress or not sys.stderr.isatty(), desc="synth")   # a log file gets the summary line
    if workers <= 1:
        _init_worker(out, plan, seed, look, eo)
        for task in tasks:
            bar.update(_render_range(task))
    else:
        # spawn, not fork: forked children of a process with live thread pools can deadlock
        with mp.get_context("spawn").Pool(workers, _init_worker, (out, plan, seed, look, eo)) as pool:
            for n in pool.imap_unordered(_render_range, tasks):
                bar.update(n)
    bar.close()


def _remove_temporaries(out: Path) -> None:
    for pattern in (f"{TRAIN_IMAGES}/*/.*.tmp", f"{TEST_IMAGES}/.*.tmp", f"{OOD_IMAGES}/.*.tmp", ".*.tmp"):
        for path in out.glob(pattern):
            path.unlink(missing_ok=True)


def _make_folders(out: Path, num_classes: int, ood: bool = False) -> None:
    for label in range(num_classes):
        (out / TRAIN_IMAGES / str(label)).mkdir(parents=True, exist_ok=True)
    (out / TEST_IMAGES).mkdir(parents=True, exist_ok=True)
    if ood:
        (out / OOD_IMAGES).mkdir(parents=True, exist_ok=True)


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


def write_contact_sheet(out: Path, plan: Plan, per_class: int = 12, zoom: int = 2,
                        prefix: str = "SAR_", name: str = CONTACT_SHEET) -> Path:
    """One row per class, labelled with its id and name, of the first chips of that class."""
    rows = [(f"{label} {CLASS_NAMES[label]}",
             [plan.path(out, "train", int(i), prefix)
              for i in np.flatnonzero(plan.train_labels == label)[:per_class]])
            for label in range(int(plan.train_labels.max()) + 1)]
    path = out / name
    write_atomic(path, contact_sheet(rows, per_class, zoom, "L" if prefix == "SAR_" else "RGB"))
    return path


def _write_sheets(out: Path, plan: Plan, eo: str) -> None:
    """contact_sheet.png (of the EO chips for eo=only), the EO twins' and the ood chips' sheets."""
    write_contact_sheet(out, plan, prefix="EO_" if eo == "only" else "SAR_")
    if eo == "every":
        write_contact_sheet(out, plan, prefix="EO_", name=CONTACT_SHEET_EO)
    if plan.ood_ids.size:
        prefixes = {"decoys": ["SAR_"], "every": ["SAR_", "EO_"], "only": ["EO_"]}[eo]
        rows = [(f"ood {kind} {pre[:-1]}", [plan.path(out, "ood", i, pre) for i in range(plan.ood_ids.size)
                                            if plan.ood_kinds[i] == kind][:12])
                for kind in OOD_KINDS for pre in prefixes]
        write_atomic(out / CONTACT_SHEET_OOD, contact_sheet(rows, 12, 2, "RGB"))


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
    parser.add_argument("--eo", choices=EO_MODES, default="decoys",
                        help="optical chips: decoys (default: a few EO_<id>.png for the builder to skip), "
                             "every (the RGB twin of every chip, same vehicle and id), only (the twins "
                             "without SAR chips: an RGB-only set)")
    parser.add_argument("--ood", type=int, default=0, metavar="N",
                        help=f"also write N chips of no class ({', '.join(OOD_KINDS)}) to {OOD_IMAGES}/")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes (output does not depend on it)")
    args = parser.parse_args(argv)
    return exit_on_error(lambda: _synth(args))


def _synth(args: argparse.Namespace) -> int:
    record = make_synthetic(args.out, args.preset, args.seed, look=args.look, workers=args.workers,
                            progress=True, eo=args.eo, ood=args.ood)
    extras = (f", eo {args.eo}" if args.eo != "decoys" else "") + (f", {args.ood} ood" if args.ood else "")
    print(f"wrote {record['num_train']} train + {record['num_test']} test chips "
          f"({args.preset}, seed {args.seed}, look {args.look}{extras}) to {args.out}; "
          f"see {args.out / CONTACT_SHEET}")
    return 0
