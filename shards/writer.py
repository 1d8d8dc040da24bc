"""Write one class-pure tar shard (and its DALI index), atomically.

Runs in worker processes: takes a plan, returns a JSON-able record of what it wrote (the
per-sample columns of the index plus per-modality, per-channel pixel sums), which is also what
the build state keeps. A sample holds one member per modality (`shards/members.py`).
"""
from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds

from shards.atomic import write_atomic
from shards.errors import DataError, printable, storage_error
from shards.layout import DEFAULT_LAYOUT, Layout
from shards.members import MEMBER_FIELDS, column_name, member_ext
from shards.pixels import chip_bytes
from shards.raw import RawImage
from shards.tarscan import Member, dali_index_path, dali_index_text, key_problem, scan_members

TAR_MTIME = 0  # fixed member mtime: the same input gives byte-identical shards


@dataclass(frozen=True)
class ShardPlan:
    split: str
    path: str  # relative to OUT: <split>/<split>-c<CC>-<NNNNN>.tar
    label: int
    images: tuple[RawImage, ...]


def make_shard(plan: ShardPlan, prev: dict[str, Any] | None, out: Path, dali_index: bool,
               size_range: tuple[int, int],
               layout: Layout = DEFAULT_LAYOUT) -> tuple[dict[str, Any], bool]:
    """Reuse a shard finished by an interrupted run if it is still intact, else write it.

    Returns (record, reused).
    """
    if prev is not None and still_valid(plan, prev, out, dali_index, layout):
        return prev, True
    return write_shard(plan, out, dali_index, size_range, layout), False


def new_record(plan: ShardPlan, layout: Layout) -> dict[str, Any]:
    rec: dict[str, Any] = {"path": plan.path, "label": plan.label, "count": len(plan.images),
                           "keys": [], "files": [], "pixels": {}}
    for m, channels in layout.channels.items():
        for f in ("crc32", "height", "width", "source_crc32"):
            rec[column_name(layout.modalities, m, f)] = []
        rec["pixels"][m] = {"n": 0, "sum": [0] * channels, "sq": [0] * channels}
    return rec


def write_shard(plan: ShardPlan, out: Path, dali_index: bool, size_range: tuple[int, int],
                layout: Layout = DEFAULT_LAYOUT) -> dict[str, Any]:
    final = out / plan.path
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, final.parent, "cannot create the split folder") from None
    tmp = final.with_name(final.name + ".tmp")
    rec = new_record(plan, layout)
    try:
        with open(tmp, "wb") as f:
            write_samples(plan, f, rec, size_range, layout)
        members = finish_record(tmp, rec, layout)
        if dali_index:
            write_atomic(dali_index_path(final), dali_index_text(members))
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e, tmp, "cannot write the shard") from None
    except BaseException:
        tmp.unlink(missing_ok=True)  # bad input, full disk or interrupt: no partial file left
        raise
    os.replace(tmp, final)
    return rec


def finish_record(tmp: Path, rec: dict[str, Any], layout: Layout) -> list[Member]:
    """Where each member landed in the written tar, its size and checksum; the members."""
    members = scan_members(tmp)
    where = {m.name: m for m in members}
    for m in layout.modalities:
        ext = member_ext(layout.modalities, m)
        placed = [where[f"{k}.{ext}"] for k in rec["keys"]]
        rec[column_name(layout.modalities, m, "offset")] = [x.offset for x in placed]
        rec[column_name(layout.modalities, m, "size")] = [x.size for x in placed]
    rec["bytes"] = tmp.stat().st_size
    rec["sha256"] = sha256_file(tmp)
    return members


def check_keys(images: Sequence[RawImage]) -> None:
    """Every sample key can be a tar member name and a DALI index token; DataError naming the
    first file whose key cannot (before any shard is written)."""
    for im in images:
        problem = key_problem(im.key)
        if problem:
            raise DataError(f"{printable(im.path)}: gives the sample key {im.key!r}, which a shard "
                            f"and its DALI index cannot carry: {problem}; rename the file")


def member_files(im: RawImage, layout: Layout) -> list[tuple[str, Path, int]]:
    """(modality, path, bytes at scan time) of every member of a sample, in modality order."""
    return [(layout.modalities[0], im.path, im.bytes)] + [
        (p.modality, p.path, p.bytes) for p in im.partners]


def write_samples(plan: ShardPlan, f: BinaryIO, rec: dict[str, Any],
                  size_range: tuple[int, int], layout: Layout = DEFAULT_LAYOUT) -> None:
    """Stream the plan's images into the tar `f`, validating each; fills the record."""
    writer = wds.TarWriter(f, encoder=False, mtime=TAR_MTIME)
    mods = layout.modalities
    try:
        for im in plan.images:
            sample = {"__key__": im.key, "cls": str(plan.label).encode()}
            for (m, path, nbytes), expected in zip(member_files(im, layout), layout.modes):
                # the one decode per chip; what is stored: shards/chips.py
                source = read_file(path, nbytes)
                data, info = chip_bytes(path, source, size_range, expected, layout.spec)
                rec[column_name(mods, m, "source_crc32")].append(zlib.crc32(source))
                sample[member_ext(mods, m)] = data
                rec[column_name(mods, m, "crc32")].append(zlib.crc32(data))
                rec[column_name(mods, m, "height")].append(info.height)
                rec[column_name(mods, m, "width")].append(info.width)
                px = rec["pixels"][m]
                px["n"] += info.height * info.width
                px["sum"] = [a + b for a, b in zip(px["sum"], info.sums)]
                px["sq"] = [a + b for a, b in zip(px["sq"], info.squares)]
            writer.write(sample)
            rec["keys"].append(im.key)
            rec["files"].append(im.relative)
    finally:
        writer.close()  # also on error, while `f` is open: no late flush into a closed file
    f.flush()
    os.fsync(f.fileno())


def still_valid(plan: ShardPlan, prev: dict[str, Any], out: Path, dali_index: bool,
                layout: Layout = DEFAULT_LAYOUT) -> bool:
    """A recorded shard is reused only if the file, its DALI index and the raw images match."""
    path = out / plan.path
    columns = [column_name(layout.modalities, m, x) for m in layout.modalities for x in MEMBER_FIELDS]
    if prev.get("keys") != [im.key for im in plan.images] or prev.get("label") != plan.label:
        return False
    if any(c not in prev for c in columns) or set(prev.get("pixels", {})) != set(layout.modalities):
        return False  # written by an older builder or for other modalities
    if any(len(prev["pixels"][m]["sum"]) != c for m, c in layout.channels.items()):
        return False
    try:
        if path.stat().st_size != prev["bytes"] or sha256_file(path) != prev["sha256"]:
            return False
        if dali_index and (dali_index_path(path).read_text()
                           != dali_index_text(scan_members(path))):
            return False
        for j, m in enumerate(layout.modalities):
            crcs = prev.get(column_name(layout.modalities, m, "source_crc32"),
                            prev[column_name(layout.modalities, m, "crc32")])  # of the raw files
            if any(zlib.crc32(member_files(im, layout)[j][1].read_bytes()) != crc
                   for im, crc in zip(plan.images, crcs)):
                return False
        return True
    except OSError:
        return False


def read_file(path: Path, nbytes: int) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) != nbytes:
        raise DataError(f"{path}: file changed during the build "
                        f"({nbytes} bytes when listed, {len(data)} now)")
    return data


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

