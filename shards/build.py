"""Raw folder -> class-pure WebDataset shards + `index.json`: parallel, atomic, restartable.

Order of events, so that an interrupted build never leaves an index pointing at missing or
partial shards: every shard is written under a temporary name and renamed when complete, then
recorded in the build state (`shards/state.py`); `index.json` is written last (tmp + rename).
A rerun skips the recorded shards after re-checking them. Adding a split to an existing OUT
keeps the old index valid until the new one replaces it.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shards import writer
from shards.confine import inside
from shards.errors import DataError
from shards.labels import display_names
from shards.index import INDEX_NAME, ClassIndex, ModalityStats, ShardInfo, SplitIndex
from shards.chips import ChipSpec
from shards.lock import LOCK_NAME, hold
from shards.layout import (DEFAULT_LAYOUT, Layout, check_matches_existing, check_modalities,
                           resolve_layout, resolve_modalities, resolve_spec)
from shards.members import MEMBER_FIELDS, column_name
from shards.pixels import DEFAULT_SIZE_RANGE, channel_stats
from shards.names import natural_key
from shards.raw import UNLABELED, RawImage, RawListing, scan_raw
from shards.state import STATE_DIR, BuildState
from shards.tarscan import dali_index_path
from shards.writer import ShardPlan

BUILDER = "shards.build/1"
MIN_IMAGES_PER_WORKER = 500  # default: small builds stay in one process (pool start-up not worth it)


def build_shards(raw: Path, out: Path, *, val_fraction: float = 0.1, seed: int = 0,
                 split: str | None = None, labels_csv: Path | None = None,
                 shard_size: int = 1000, workers: int | None = None, dali_index: bool = True,
                 size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
                 quiet: bool = False, modalities: str | Sequence[str] | None = None,
                 mode: str | Sequence[str] = "auto", unlabeled: bool = False,
                 intensity: str | None = None, size_policy: str | None = None,
                 chip_size: int | None = None) -> ClassIndex:
    """Build (or finish, or confirm) the shards of `raw` in `out`; returns the new index.

    Without `split`: a stratified train/val split. With `split`: that one split, added to `out`.
    `modalities` ("sar", "eo" or "sar,eo"; default: those of the splits already in `out`, else
    sar) pairs the chips of each sample; `mode` (gray | rgb | auto, or one per modality) fixes
    the channels of each. `unlabeled` (with `split`, into an existing `out`): a flat folder of
    chips of no class, stored with label -1. `intensity`, `size_policy` and `chip_size`
    (shards/chips.py; default: those of the splits already in `out`, else auto and crop at the
    chips' own size) say how each file becomes the stored 8-bit chip.
    """
    check_options(val_fraction, shard_size, split, size_range, unlabeled, labels_csv)
    raw, out = Path(raw).resolve(), Path(out)
    check_apart(raw, out)
    with out_lock(out):
        existing = load_existing(out, unlabeled)
        mods = resolve_modalities(modalities, existing)
        check_modalities(existing, raw, mods)
        known = existing.classes if existing and (labels_csv or unlabeled) else None
        listing = scan_raw(raw, labels_csv, known, modalities=mods, unlabeled=unlabeled)
        if existing is not None and listing.classes != existing.classes:
            raise DataError(f"{raw}: classes {listing.classes} differ from those of "
                            f"{out / INDEX_NAME}: {existing.classes}")
        writer.check_keys(listing.images)
        spec = resolve_spec(intensity, size_policy, chip_size, existing, raw)
        layout = resolve_layout(listing.images, mods, mode, raw, spec)
        check_matches_existing(existing, raw, layout)
        splits = {split: listing.images} if split else stratify(listing, val_fraction, seed)
        record = build_record(listing, labels_csv, splits, val_fraction if not split else None,
                              seed if not split else None, shard_size, size_range, dali_index,
                              layout, unlabeled)
        if existing is not None and already_built(existing, record):
            return existing
        plans = plan_shards(splits, shard_size)
        protected = {s.path for sp in (existing.splits.values() if existing else []) for s in sp.shards}
        check_split_folders(out, list(splits))
        state = BuildState(out, record["fingerprint"], protected)
        records = run_plans(plans, out, state, workers=workers, dali_index=dali_index,
                            size_range=size_range, quiet=quiet, layout=layout)
        index = assemble(out, listing.classes, existing, splits, plans, records, record, layout)
        remove_orphans(out, list(splits), plans, dali_index)
        index.save()
        state.finish()
        return index


def check_options(val_fraction: float, shard_size: int, split: str | None,
                  size_range: tuple[int, int], unlabeled: bool = False,
                  labels_csv: Path | None = None) -> None:
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    if split is not None and (not split or not split.replace("_", "").isalnum()):
        raise ValueError(f"split name must be letters, digits or _, got {split!r}")
    if not 1 <= size_range[0] <= size_range[1]:
        raise ValueError(f"size range must be 1 <= MIN <= MAX, got {size_range}")
    if unlabeled and (split is None or split in ("train", "val")):
        raise ValueError("an unlabeled split needs a split name other than train and val "
                         "(e.g. --split ood)")
    if unlabeled and labels_csv is not None:
        raise ValueError("an unlabeled split takes no labels CSV")


def check_apart(raw: Path, out: Path) -> None:
    """OUT inside RAW would be read as a class folder of its own shards (and RAW inside OUT
    could be removed as orphans): refuse both before anything is written."""
    o = out.resolve()
    if o == raw or raw in o.parents or o in raw.parents:
        raise DataError(f"{out}: the output folder and the raw folder {raw} must not contain "
                        "one another; choose an OUT outside the raw data")


@contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold OUT's lock for the whole build (`shards/lock.py`): a second build into OUT stops
    with one line naming the first. A folder of something else is refused before the lock
    file is put into it; an OUT this build created is removed again if it stays empty."""
    check_not_foreign(out)
    created = not out.exists()
    try:
        with hold(out, "shards build"):
            yield
    except BaseException:
        if created:
            try:
                out.rmdir()
            except OSError:
                pass  # not empty: shards a rerun will reuse
        raise


def check_not_foreign(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    if (out / INDEX_NAME).exists() or (out / STATE_DIR).is_dir() or not out.is_dir():
        return
    if any(f.name != LOCK_NAME for f in out.iterdir()):
        raise DataError(f"{out}: folder is not empty and holds no shard index; "
                        "refusing to write shards into it")


def check_split_folders(out: Path, names: list[str]) -> None:
    """Shards are written, and orphans deleted, only in split folders inside OUT (no link out)."""
    for name in names:
        inside(out, name, out / name, "split folder")


def load_existing(out: Path, unlabeled: bool = False) -> ClassIndex | None:
    if (out / INDEX_NAME).exists():
        return ClassIndex.load(out)
    check_not_foreign(out)
    if unlabeled:
        raise DataError(f"{out / INDEX_NAME}: no shard index; an unlabeled split is added to a "
                        "shard folder that holds labelled splits (build train/val first)")
    return None


def stratify(listing: RawListing, val_fraction: float, seed: int) -> dict[str, list[RawImage]]:
    """Per class round(val_fraction * n) images to val, but at least 1 in each split. Each class
    is drawn from in the natural order of its file names (then relative paths), so the same
    files give the same split however they are arranged in sub-folders."""
    rng = np.random.default_rng(seed)
    by_class: list[list[RawImage]] = [[] for _ in listing.classes]
    for im in sorted(listing.images, key=lambda im: (natural_key(im.path.name), natural_key(im.relative))):
        by_class[im.label].append(im)
    train: list[RawImage] = []
    val: list[RawImage] = []
    for label, images in enumerate(by_class):
        n = len(images)
        if n < 2:
            where = images[0].path.parent if images else listing.root
            raise DataError(f"{where}: class {listing.classes[label]!r} has {n} image(s); "
                            "at least 2 are needed to put one in train and one in val")
        n_val = min(max(math.floor(val_fraction * n + 0.5), 1), n - 1)
        in_val = np.zeros(n, bool)
        in_val[rng.permutation(n)[:n_val]] = True
        val += [im for im, v in zip(images, in_val) if v]
        train += [im for im, v in zip(images, in_val) if not v]
    return {"train": train, "val": val}


def build_record(listing: RawListing, labels_csv: Path | None,
                 splits: dict[str, list[RawImage]], val_fraction: float | None,
                 seed: int | None, shard_size: int, size_range: tuple[int, int],
                 dali_index: bool, layout: Layout = DEFAULT_LAYOUT,
                 unlabeled: bool = False) -> dict[str, Any]:
    """What one build made and from what; `fingerprint` identifies its content."""
    options = {"builder": BUILDER, "splits": list(splits), "val_fraction": val_fraction,
               "seed": seed, "shard_size": shard_size, "size_range": list(size_range),
               "dali_index": dali_index, "listing": listing.fingerprint()}
    # Only what differs from a plain SAR build enters the fingerprint: older builds keep theirs.
    if layout.modalities != DEFAULT_LAYOUT.modalities:
        options["modalities"] = list(layout.modalities)
    if unlabeled:
        options["unlabeled"] = True
    if layout.spec != ChipSpec():
        options["chip"] = layout.spec.to_json()
    fingerprint = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()
    return {**options, **layout.record(), "unlabeled": unlabeled, "raw": str(listing.root),
            "labels_csv": str(Path(labels_csv).resolve()) if labels_csv else None,
            "images": len(listing.images), "ignored_files": len(listing.ignored),
            "ignored_examples": [p.name for p in listing.ignored[:3]],
            "names": "ntire" if listing.ntire else "any",
            "class_names": display_names(listing.root, listing.classes) if labels_csv is None
            and not unlabeled else None,
            "fingerprint": fingerprint}


def already_built(existing: ClassIndex, record: dict[str, Any]) -> bool:
    """True if `existing` holds exactly these splits from the same build; DataError on a clash."""
    builds = existing.source.get("builds", [])
    present = [s for s in record["splits"] if s in existing.splits]
    for name in present:
        prior = next((b for b in builds if name in b.get("splits", [])), {})
        if prior.get("fingerprint") != record["fingerprint"]:
            raise DataError(f"{existing.root / INDEX_NAME}: already holds split {name!r} of a "
                            f"different dataset or options (built from {prior.get('raw')}); "
                            "use a new output folder")
    return len(present) == len(record["splits"])


def plan_shards(splits: dict[str, list[RawImage]], shard_size: int) -> list[ShardPlan]:
    plans = []
    for name, images in splits.items():
        for label in sorted({im.label for im in images}):
            members = [im for im in images if im.label == label]
            part = f"c{label:02d}" if label != UNLABELED else "none"
            for seq, start in enumerate(range(0, len(members), shard_size)):
                plans.append(ShardPlan(name, f"{name}/{name}-{part}-{seq:05d}.tar", label,
                                       tuple(members[start:start + shard_size])))
    return plans


def run_plans(plans: list[ShardPlan], out: Path, state: BuildState, *, workers: int | None,
              dali_index: bool, size_range: tuple[int, int], quiet: bool,
              layout: Layout = DEFAULT_LAYOUT) -> list[dict[str, Any]]:
    """Write (or reuse) every planned shard; records come back in plan order."""
    done = state.load()
    total = sum(len(p.images) for p in plans)
    workers = resolve_workers(workers, len(plans), total)
    records: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=total, unit="img", desc=f"shards -> {out}", dynamic_ncols=True,
               disable=quiet or not sys.stderr.isatty())

    def finish(result: tuple[dict[str, Any], bool]) -> None:
        rec, reused = result
        if not reused:
            state.save(rec)
        records[rec["path"]] = rec
        bar.update(rec["count"])

    args = [(p, done.get(p.path), out, dali_index, size_range, layout) for p in plans]
    try:
        if workers == 1:
            for a in args:
                finish(writer.make_shard(*a))
        else:
            # spawn, not fork: a forked child of a process with live thread pools (torch,
            # OpenBLAS in a test run or a notebook) can deadlock on a lock it inherited held
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(writer.make_shard, *a) for a in args]
                try:
                    for fut in as_completed(futures):
                        finish(fut.result())
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    return [records[p.path] for p in plans]


def resolve_workers(workers: int | None, n_shards: int, n_images: int) -> int:
    if workers is None:
        workers = min(os.cpu_count() or 1, n_images // MIN_IMAGES_PER_WORKER)
    return max(1, min(workers, n_shards))


def assemble(out: Path, classes: list[str], existing: ClassIndex | None,
             splits: dict[str, list[RawImage]], plans: list[ShardPlan],
             records: list[dict[str, Any]], record: dict[str, Any],
             layout: Layout = DEFAULT_LAYOUT) -> ClassIndex:
    index_splits = dict(existing.splits) if existing else {}
    for name in splits:
        recs = [r for p, r in zip(plans, records) if p.split == name]
        index_splits[name] = split_index(name, out, recs, len(classes), layout,
                                         labeled=not record.get("unlabeled"))
    builds = list(existing.source.get("builds", [])) if existing else []
    return ClassIndex(root=out, classes=list(classes), splits=index_splits,
                      source={"builder": BUILDER, "builds": builds + [record]})


def modality_stats(recs: list[dict[str, Any]], layout: Layout, m: str) -> ModalityStats:
    """Channels, per-channel mean/std (exact integer sums: independent of order) and sizes."""
    channels = layout.channels[m]
    n = sum(r["pixels"][m]["n"] for r in recs)
    sums = [sum(r["pixels"][m]["sum"][c] for r in recs) for c in range(channels)]
    squares = [sum(r["pixels"][m]["sq"][c] for r in recs) for c in range(channels)]
    mean_c, std_c = channel_stats(n, sums, squares)
    heights = [h for r in recs for h in r[column_name(layout.modalities, m, "height")]]
    widths = [w for r in recs for w in r[column_name(layout.modalities, m, "width")]]
    sizes = Counter(f"{h}x{w}" for h, w in zip(heights, widths))
    return ModalityStats(channels, mean_c, std_c, dict(sorted(sizes.items())))


def split_index(name: str, out: Path, recs: list[dict[str, Any]], num_classes: int,
                layout: Layout = DEFAULT_LAYOUT, labeled: bool = True) -> SplitIndex:
    def column(key: str, dtype: type) -> np.ndarray:
        return np.asarray([x for r in recs for x in r[key]], dtype=dtype)

    counts = [r["count"] for r in recs]
    mods = layout.modalities
    stats = {m: modality_stats(recs, layout, m) for m in mods}
    first = stats[mods[0]]
    extra = {column_name(mods, m, f): column(column_name(mods, m, f), dt)
             for m in mods[1:] for f, dt in MEMBER_FIELDS.items()}
    return SplitIndex(
        name=name, root=out,
        shards=[ShardInfo(r["path"], r["label"], r["count"], r["bytes"], r["sha256"]) for r in recs],
        keys=[k for r in recs for k in r["keys"]],
        labels=np.repeat(np.asarray([r["label"] for r in recs], np.int64), counts),
        shard=np.repeat(np.arange(len(recs), dtype=np.int64), counts),
        offset=column("offset", np.int64), size=column("size", np.int64),
        crc32=column("crc32", np.uint32), height=column("height", np.int32),
        width=column("width", np.int32),
        pixel_mean=first.pixel_mean, pixel_std=first.pixel_std,
        num_classes=num_classes, image_sizes=first.image_sizes, modalities=list(mods),
        channels=first.channels, pixel_mean_c=first.pixel_mean_c, pixel_std_c=first.pixel_std_c,
        labeled=labeled, modality_stats=stats, extra=extra,
        files=[f for r in recs for f in r.get("files", [])])


def remove_orphans(out: Path, split_names: list[str], plans: list[ShardPlan],
                   dali_index: bool) -> None:
    """Drop files a crashed earlier attempt left in the split folders this build owns."""
    keep = {out / p.path for p in plans}
    keep |= {dali_index_path(out / p.path) for p in plans} if dali_index else set()
    for name in split_names:
        for f in (out / name).iterdir():
            if f.suffix in (".tar", ".idx", ".tmp") and f not in keep:
                f.unlink()
