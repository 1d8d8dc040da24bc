"""Build state: which shards an unfinished build has already written (for restarts).

`OUT/.build/<fingerprint>/<shard name>.json` holds one record per finished shard, written
atomically right after the shard was renamed into place. A rerun of the same build (same
fingerprint) reuses those shards after re-checking them; state left by a *different* build is
discarded together with the shards it wrote (no index refers to them).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shards.atomic import write_atomic
from shards.tarscan import dali_index_path

STATE_DIR = ".build"


class BuildState:
    def __init__(self, out: Path, fingerprint: str, protected: set[str]):
        """`protected`: shard paths an existing index refers to; never deleted."""
        self.out = out
        self.root = out / STATE_DIR
        self.dir = self.root / fingerprint[:24]
        self._discard_others(protected)
        self.dir.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, dict[str, Any]]:
        records = {}
        for f in sorted(self.dir.glob("*.json")):
            try:
                rec = json.loads(f.read_text())
                records[rec["path"]] = rec
            except (OSError, ValueError, KeyError):
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
        for d in self.root.iterdir():
            if d == self.dir:
                continue
            for f in d.glob("*.json") if d.is_dir() else []:
                try:
                    path = json.loads(f.read_text())["path"]
                except (OSError, ValueError, KeyError):
                    continue
                if path not in protected:
                    (self.out / path).unlink(missing_ok=True)
                    dali_index_path(self.out / path).unlink(missing_ok=True)
            shutil.rmtree(d) if d.is_dir() else d.unlink()
