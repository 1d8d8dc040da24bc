"""Build state: which shards an unfinished build has already written (for restarts).

`OUT/.build/<fingerprint>/<shard name>.json` holds one record per finished shard, written
atomically right after the shard was renamed into place. A rerun of the same build (same
fingerprint) reuses those shards after re-checking them; state left by a *different* build is
discarded together with the shards it wrote (no index refers to them). A record is data, so
the shard it names is deleted only if it is a shard file inside OUT (`shards/confine.py`);
a record naming anything else stops the build, and nothing is deleted.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from shards.atomic import write_atomic
from shards.confine import inside
from shards.errors import DataError, storage_error
from shards.tarscan import dali_index_path

STATE_DIR = ".build"
SHARD_PATH = re.compile(r"[A-Za-z0-9_]+/[A-Za-z0-9_]+-(c\d{2,}|none)-\d{5,}\.tar")


class BuildState:
    def __init__(self, out: Path, fingerprint: str, protected: set[str]):
        """`protected`: shard paths an existing index refers to; never deleted."""
        self.out = out
        self.root = out / STATE_DIR
        self.dir = self.root / fingerprint[:24]
        if self.root.is_symlink():
            raise DataError(f"{self.root}: is a link; the build state must be a folder in {out}")
        self._discard_others(protected)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise storage_error(e, self.dir, "cannot create the build state") from None

    def load(self) -> dict[str, dict[str, Any]]:
        records = {}
        for f in sorted(self.dir.glob("*.json")):
            try:
                rec = json.loads(f.read_text())
                records[rec["path"]] = rec
            except (OSError, ValueError, KeyError, TypeError):
                f.unlink()  # unreadable: that shard is simply rebuilt
        return records

    def save(self, rec: dict[str, Any]) -> None:
        write_atomic(self.dir / (Path(rec["path"]).name + ".json"), json.dumps(rec))

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()

    def _discard_others(self, protected: set[str]) -> None:
        if not self.root.is_dir():
            return
        others = [d for d in self.root.iterdir() if d != self.dir]
        doomed = [(p, rec) for d in others for p, rec in self._recorded(d)
                  if not (isinstance(p, str) and p in protected)]
        targets = [shard_target(self.out, p, rec) for p, rec in doomed]  # all checked first
        for path in targets:
            path.unlink(missing_ok=True)
            dali_index_path(path).unlink(missing_ok=True)
        for d in others:
            shutil.rmtree(d) if d.is_dir() and not d.is_symlink() else d.unlink()

    def _recorded(self, d: Path) -> list[tuple[Any, Path]]:
        """(recorded shard path, record file) of every readable record in `d`."""
        found = []
        for f in sorted(d.glob("*.json")) if d.is_dir() and not d.is_symlink() else []:
            try:
                found.append((json.loads(f.read_text())["path"], f))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return found


def shard_target(out: Path, rel: Any, record: Path) -> Path:
    """The shard file a record names, if it is one inside OUT; DataError naming the record."""
    path = inside(out, rel, record)
    if not SHARD_PATH.fullmatch(rel):
        raise DataError(f"{record}: recorded path {rel!r} is not a shard file of this builder; "
                        "refusing to delete it")
    return path
