"""Paths read from a record (build state, `index.json`) stay inside the shard folder.

A record is data: whoever can edit it must not be able to make a build delete, or a reader
read, a file outside OUT. A recorded path must be relative, without `..`, and still inside OUT
once links are followed; anything else is refused, naming the record it came from.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from shards.errors import DataError


def inside(root: Path, rel: object, source: Path | str, what: str = "recorded path") -> Path:
    """`root / rel`, or DataError naming `source` when `rel` would leave `root`."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or "\\" in rel:
        raise DataError(f"{source}: {what} {rel!r} is not a plain relative path; refused")
    parts = PurePosixPath(rel).parts
    if PurePosixPath(rel).is_absolute() or ".." in parts:
        raise DataError(f"{source}: {what} {rel!r} points outside {root}; refused")
    path = Path(root) / rel
    if not path.resolve().is_relative_to(Path(root).resolve()):
        raise DataError(f"{source}: {what} {rel!r} leads outside {root} through a link; refused")
    return path
