"""Write one class-pure tar shard (and its DALI index), atomically.

Runs in worker processes: takes a plan, returns a JSON-able record of what it wrote (the
per-sample columns of the index plus pixel sums), which is also what the build state keeps.
"""
from __future__ import annotations

import hashlib
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import webdataset as wds

from shards.errors import DataError
from shards.atomic import write_atomic
from shards.raw import RawImage, inspect_png
from shards.tarscan import dali_index_path, dali_index_text, scan_members

TAR_MTIME = 0  # fixed member mtime: the same input gives byte-identical shards


@dataclass(frozen=True)
class ShardPlan:
    split: str
    path: str  # relative to OUT: <split>/<split>-c<CC>-<NNNNN>.tar
    label: int
    images: tuple[RawImage, ...]


def make_shard(plan: ShardPlan, prev: dict[str, Any] | None, out: Path, dali_index: bool,
               size_range: tuple[int, int]) -> tuple[dict[str, Any], bool]:
    """Reuse a shard finished by an interrupted run if it is still intact, else write it.

    Returns (record, reused).
    """
    if prev is not None and still_valid(plan, prev, out, dali_index):
        return prev, True
    return write_shard(plan, out, dali_index, size_range), False


def write_shard(plan: ShardPlan, out: Path, dali_index: bool,
                size_range: tuple[int, int]) -> dict[str, Any]:
    final = out / plan.path
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    rec: dict[str, Any] = {"path": plan.path, "label": plan.label, "count": len(plan.images),
                           "keys": [], "crc32": [], "height": [], "width": [],
                           "pixel_n": 0, "pixel_sum": 0, "pixel_sq": 0}
    try:
        with open(tmp, "wb") as f:
            write_samples(plan, f, rec, size_range)
    except BaseException:
        tmp.unlink(missing_ok=True)  # bad input or interrupt: leave no partial file behind
        raise
    members = scan_members(tmp)
    png = {m.key: m for m in members if m.ext == "png"}
    rec["offset"] = [png[k].offset for k in rec["keys"]]
    rec["size"] = [png[k].size for k in rec["keys"]]
    rec["bytes"] = tmp.stat().st_size
    rec["sha256"] = sha256_file(tmp)
    if dali_index:
        write_atomic(dali_index_path(final), dali_index_text(members))
    os.replace(tmp, final)
    return rec


def write_samples(plan: ShardPlan, f: BinaryIO, rec: dict[str, Any],
                  size_range: tuple[int, int]) -> None:
    """Stream the plan's images into the tar `f`, validating each; fills the record."""
    writer = wds.TarWriter(f, encoder=False, mtime=TAR_MTIME)
    for im in plan.images:
        data = read_raw(im)
        h, w, s, sq = inspect_png(im.path, data, size_range)  # the one decode per image
        writer.write({"__key__": im.key, "png": data, "cls": str(plan.label).encode()})
        rec["keys"].append(im.key)
        rec["crc32"].append(zlib.crc32(data))
        rec["height"].append(h)
        rec["width"].append(w)
        rec["pixel_n"] += h * w
        rec["pixel_sum"] += s
        rec["pixel_sq"] += sq
    writer.close()
    f.flush()
    os.fsync(f.fileno())


def still_valid(plan: ShardPlan, prev: dict[str, Any], out: Path, dali_index: bool) -> bool:
    """A recorded shard is reused only if the file, its DALI index and the raw images match."""
    path = out / plan.path
    if prev["keys"] != [im.key for im in plan.images] or prev["label"] != plan.label:
        return False
    try:
        if path.stat().st_size != prev["bytes"] or sha256_file(path) != prev["sha256"]:
            return False
        if dali_index and (dali_index_path(path).read_text()
                           != dali_index_text(scan_members(path))):
            return False
        return all(zlib.crc32(im.path.read_bytes()) == crc
                   for im, crc in zip(plan.images, prev["crc32"]))
    except OSError:
        return False


def read_raw(im: RawImage) -> bytes:
    try:
        data = im.path.read_bytes()
    except OSError as e:
        raise DataError(f"{im.path}: cannot read ({e.strerror})") from None
    if len(data) != im.bytes:
        raise DataError(f"{im.path}: file changed during the build "
                        f"({im.bytes} bytes when listed, {len(data)} now)")
    return data


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()

