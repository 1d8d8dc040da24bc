"""The per-class index of a shard folder (`OUT/index.json`), as Python objects.

The layout is fixed in docs/architecture.md ("Shards on disk"). Samples are stored as
columns (one list per field) so that a 300k-sample split loads quickly into numpy arrays.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shards.atomic import write_atomic
from shards.errors import DataError

FORMAT = "sar-shards/1"
INDEX_NAME = "index.json"
# Column name -> numpy dtype of the per-sample arrays in a SplitIndex.
COLUMNS = {"label": np.int64, "shard": np.int64, "offset": np.int64, "size": np.int64,
           "crc32": np.uint32, "height": np.int32, "width": np.int32}


@dataclass(frozen=True)
class ShardInfo:
    path: str  # relative to the shard folder (OUT)
    label: int
    count: int
    bytes: int
    sha256: str


@dataclass
class SplitIndex:
    """One split; sample ids are positions 0..N-1 (ordered by shard, then by position in it)."""

    name: str
    root: Path
    shards: list[ShardInfo]
    keys: list[str]
    labels: np.ndarray
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    crc32: np.ndarray
    height: np.ndarray
    width: np.ndarray
    pixel_mean: float
    pixel_std: float
    num_classes: int = 0  # of the dataset (a split may lack some classes)
    image_sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> count

    def __len__(self) -> int:
        return len(self.keys)

    def class_counts(self) -> np.ndarray:
        n = max(self.num_classes, int(self.labels.max()) + 1 if len(self.labels) else 0)
        return np.bincount(self.labels, minlength=n)

    def indices_of(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)

    def shard_path(self, j: int) -> Path:
        return self.root / self.shards[j].path

    def to_json(self) -> dict[str, Any]:
        samples: dict[str, list] = {"key": list(self.keys)}
        for col in COLUMNS:
            samples[col] = self._column(col).tolist()
        return {"num_samples": len(self), "class_counts": self.class_counts().tolist(),
                "pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std,
                "image_sizes": dict(self.image_sizes),
                "shards": [vars(s).copy() for s in self.shards], "samples": samples}

    def _column(self, col: str) -> np.ndarray:
        return self.labels if col == "label" else getattr(self, col)

    @classmethod
    def from_json(cls, name: str, root: Path, d: dict[str, Any], num_classes: int) -> SplitIndex:
        s = d["samples"]
        cols = {col: np.asarray(s[col], dtype=dt) for col, dt in COLUMNS.items()}
        if any(len(c) != len(s["key"]) for c in cols.values()):
            raise ValueError(f"split {name!r}: sample columns differ in length")
        return cls(name=name, root=root, shards=[ShardInfo(**x) for x in d["shards"]],
                   keys=list(s["key"]), labels=cols.pop("label"), **cols,
                   pixel_mean=float(d["pixel_mean"]), pixel_std=float(d["pixel_std"]),
                   num_classes=num_classes, image_sizes=dict(d.get("image_sizes", {})))


@dataclass
class ClassIndex:
    """The whole `OUT/index.json`."""

    root: Path
    classes: list[str]
    splits: dict[str, SplitIndex]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, name: str) -> SplitIndex:
        if name not in self.splits:
            raise DataError(f"{self.root / INDEX_NAME}: no split {name!r}; "
                            f"splits present: {sorted(self.splits)}")
        return self.splits[name]

    @classmethod
    def load(cls, root: Path | str) -> ClassIndex:
        root = Path(root)
        path = root / INDEX_NAME
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: no shard index (build it with `python -m shards build`)") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable index: {e}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DataError(f"{path}: not a shard index of format {FORMAT!r}")
        try:
            classes = [str(c) for c in d["classes"]]
            splits = {name: SplitIndex.from_json(name, root, s, len(classes))
                      for name, s in d["splits"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: malformed index ({type(e).__name__}: {e})") from None
        return cls(root=root, classes=classes, splits=splits, source=dict(d.get("source", {})))

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "classes": list(self.classes),
                "splits": {n: s.to_json() for n, s in self.splits.items()},
                "source": self.source}

    def save(self) -> None:
        """Write OUT/index.json atomically: readers see the old index or the new one, never half."""
        path = self.root / INDEX_NAME
        write_atomic(path, json.dumps(self.to_json(), separators=(",", ":")) + "\n")

