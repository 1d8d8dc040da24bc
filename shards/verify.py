"""Re-read a whole shard folder and check it against its index; stop at the first problem."""
from __future__ import annotations

import hashlib
import mmap
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.errors import DataError
from shards.index import ClassIndex, SplitIndex
from shards.raw import UNLABELED
from shards.tarscan import (dali_index_path, group_samples, key_problem, parse_dali_index,
                            scan_members)


@dataclass
class VerifyReport:
    splits: int = 0
    shards: int = 0
    samples: int = 0
    dali_indexes: int = 0
    bytes: int = 0
    sealed: bool = False  # index.json carries a checksum, and it matched


def verify(out: Path | str) -> VerifyReport:
    """Raise DataError naming the first inconsistency; return what was checked."""
    index = ClassIndex.load(out)
    builds = index.source.get("builds", [])
    report = VerifyReport(splits=len(index.splits), sealed=index.sealed)
    for split in index.splits.values():
        made_by = next((b for b in builds if split.name in b.get("splits", [])), {})
        dali = made_by.get("dali_index", True)
        check_columns(split, index.num_classes)
        for j in range(len(split.shards)):
            report.bytes += verify_shard(split, j)
            report.shards += 1
            report.samples += split.shards[j].count
            if dali or dali_index_path(split.shard_path(j)).exists():
                verify_dali_index(split, j)
                report.dali_indexes += 1
    return report


def check_columns(split: SplitIndex, num_classes: int) -> None:
    where = f"{split.root / 'index.json'}: split {split.name!r}"
    counts = [s.count for s in split.shards]
    if sum(counts) != len(split):
        raise DataError(f"{where}: shards hold {sum(counts)} samples, the columns {len(split)}")
    if not np.array_equal(split.shard, np.repeat(np.arange(len(counts)), counts)):
        raise DataError(f"{where}: sample-to-shard column does not match the shard counts")
    if not np.array_equal(split.labels, np.repeat([s.label for s in split.shards], counts)):
        raise DataError(f"{where}: sample labels do not match their class-pure shards")
    if not split.labeled:
        if len(split) and (split.labels != UNLABELED).any():
            raise DataError(f"{where}: an unlabeled split holds a label other than {UNLABELED}")
    elif len(split) and not 0 <= split.labels.min() <= split.labels.max() < num_classes:
        raise DataError(f"{where}: a label lies outside 0..{num_classes - 1}")
    if len(set(split.keys)) != len(split.keys):
        raise DataError(f"{where}: duplicate sample keys")
    for key in split.keys:
        problem = key_problem(key)
        if problem:
            raise DataError(f"{where}: sample key {key!r} cannot be carried by a DALI index: {problem}")


def verify_shard(split: SplitIndex, j: int) -> int:
    """Size, sha256, member layout, payload crc32 and .cls label of one shard; returns its size."""
    info, path = split.shards[j], split.shard_path(j)
    if not path.is_file():
        raise DataError(f"{path}: shard missing")
    size = path.stat().st_size
    if size != info.bytes:
        raise DataError(f"{path}: shard is {size} bytes, the index says {info.bytes} (truncated?)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if hashlib.sha256(mm).hexdigest() != info.sha256:
            raise DataError(f"{path}: sha256 differs from the index (shard changed after build)")
        try:
            samples = group_samples(scan_members(path))
        except tarfile.TarError as e:
            raise DataError(f"{path}: not a readable tar ({e})") from None
        ids = np.flatnonzero(split.shard == j)
        if [k for k, _ in samples] != [split.keys[i] for i in ids]:
            raise DataError(f"{path}: samples in the tar differ from the index")
        for i, (key, parts) in zip(ids, samples):
            check_sample(path, mm, split, int(i), {m.ext: m for m in parts})
    return size


def check_sample(path: Path, mm: mmap.mmap, split: SplitIndex, i: int, parts: dict) -> None:
    """Every member of sample i where the index puts it, with its crc32; the .cls label."""
    key = split.keys[i]
    members = [split.member(m) for m in split.modalities]
    expected = sorted(["cls"] + [c.ext for c in members])
    if sorted(parts) != expected:
        raise DataError(f"{path}: sample {key} has members {sorted(parts)}, "
                        f"expected {' + '.join(expected)}")
    for c in members:
        got = parts[c.ext]
        what = "png" if c.ext == "png" else f"{key}.{c.ext}"
        if (got.offset, got.size) != (int(c.offset[i]), int(c.size[i])):
            raise DataError(f"{path}: sample {key}: {what} at offset {got.offset} size {got.size}, "
                            f"index says {int(c.offset[i])} size {int(c.size[i])}")
        if zlib.crc32(mm[got.offset:got.offset + got.size]) != int(c.crc32[i]):
            where = "" if c.ext == "png" else f" {key}.{c.ext}"
            raise DataError(f"{path}: sample {key}:{where} crc32 mismatch")
    cls = parts["cls"]
    label = mm[cls.offset:cls.offset + cls.size].decode("ascii", "replace")
    if label != str(int(split.labels[i])):
        raise DataError(f"{path}: sample {key}: .cls says {label!r}, "
                        f"index says {int(split.labels[i])}")


def verify_dali_index(split: SplitIndex, j: int) -> None:
    path = split.shard_path(j)
    idx = dali_index_path(path)
    if not idx.is_file():
        raise DataError(f"{idx}: DALI index missing")
    try:
        listed = parse_dali_index(idx.read_bytes().decode("ascii"), idx)
    except UnicodeDecodeError:
        raise DataError(f"{idx}: DALI index holds non-ASCII bytes") from None
    except ValueError as e:
        raise DataError(f"{e}; DALI cannot read it") from None
    actual = [parts for _, parts in group_samples(scan_members(path))]
    if listed != actual:
        raise DataError(f"{idx}: DALI index does not match its shard")
