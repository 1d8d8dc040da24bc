"""The per-class index of a shard folder (`OUT/index.json`), as Python objects.

The layout is fixed in docs/architecture.md ("Shards on disk"). Samples are stored as
columns (one list per field) so that a 300k-sample split loads quickly into numpy arrays.
A split records its modalities (`shards/members.py`), the channel count and per-channel pixel
statistics of each, and whether it is labelled; an index written before these fields existed
loads as one grayscale `sar` modality, labelled.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shards.atomic import write_atomic
from shards.confine import inside
from shards.errors import DataError
from shards.members import DEFAULT_MODALITIES, MEMBER_FIELDS, column_name, member_ext

FORMAT = "sar-shards/1"
INDEX_NAME = "index.json"
# Column name -> numpy dtype of the per-sample arrays in a SplitIndex.
# The index ends with its own checksum: sha256 of the text before it (closed with `}`). It
# catches an index edited by hand or damaged (classes swapped, a split replaced), not a forger
# who recomputes it. An index written before checksums has none and loads as before.
_SEAL = re.compile(rb',"checksum":"sha256:([0-9a-f]{64})"\}\s*$')
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
class ModalityStats:
    """Channel count and per-channel statistics of x/255 of one modality's chips in a split."""

    channels: int
    pixel_mean_c: list[float]
    pixel_std_c: list[float]
    image_sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> count

    @property
    def pixel_mean(self) -> float:
        """Mean over channels (for a 1-channel modality: the pixel mean)."""
        return sum(self.pixel_mean_c) / len(self.pixel_mean_c)

    @property
    def pixel_std(self) -> float:
        return sum(self.pixel_std_c) / len(self.pixel_std_c)

    def to_json(self) -> dict[str, Any]:
        return {"channels": self.channels, "pixel_mean_c": list(self.pixel_mean_c),
                "pixel_std_c": list(self.pixel_std_c), "pixel_mean": self.pixel_mean,
                "pixel_std": self.pixel_std, "image_sizes": dict(self.image_sizes)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModalityStats:
        return cls(int(d["channels"]), [float(x) for x in d["pixel_mean_c"]],
                   [float(x) for x in d["pixel_std_c"]], dict(d.get("image_sizes", {})))


@dataclass(frozen=True)
class MemberColumns:
    """The per-sample columns of one member (modality) of a split."""

    modality: str
    ext: str  # of the member in the tar: "png" (primary) or "eo.png"
    offset: np.ndarray
    size: np.ndarray
    crc32: np.ndarray
    height: np.ndarray
    width: np.ndarray


@dataclass
class SplitIndex:
    """One split; sample ids are positions 0..N-1 (ordered by shard, then by position in it).

    `offset`/`size`/`crc32`/`height`/`width` (and `pixel_mean`/`pixel_std`, `image_sizes`)
    describe the first (primary) modality; `member(m)` and `stats(m)` give any modality's.
    """

    name: str
    root: Path
    shards: list[ShardInfo]
    keys: list[str]
    labels: np.ndarray  # -1 for every sample of an unlabeled split
    shard: np.ndarray
    offset: np.ndarray
    size: np.ndarray
    crc32: np.ndarray
    height: np.ndarray
    width: np.ndarray
    pixel_mean: float  # of the primary modality, mean over its channels
    pixel_std: float
    num_classes: int = 0  # of the dataset (a split may lack some classes)
    image_sizes: dict[str, int] = field(default_factory=dict)  # "HxW" -> count
    modalities: list[str] = field(default_factory=lambda: list(DEFAULT_MODALITIES))
    channels: int = 1  # of the primary modality
    pixel_mean_c: list[float] | None = None  # per channel; None: [pixel_mean] * channels
    pixel_std_c: list[float] | None = None
    labeled: bool = True  # False: no sample has a class (labels are all -1)
    modality_stats: dict[str, ModalityStats] = field(default_factory=dict)  # default: primary only
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # other members' columns: eo_offset ...
    files: list[str] = field(default_factory=list)  # each sample's raw file, relative to the raw folder

    def __post_init__(self) -> None:
        self.modalities = list(self.modalities)
        if self.pixel_mean_c is None:
            self.pixel_mean_c = [float(self.pixel_mean)] * self.channels
        if self.pixel_std_c is None:
            self.pixel_std_c = [float(self.pixel_std)] * self.channels
        primary = self.modalities[0]
        if primary not in self.modality_stats:
            self.modality_stats[primary] = ModalityStats(
                self.channels, list(self.pixel_mean_c), list(self.pixel_std_c), self.image_sizes)

    def __len__(self) -> int:
        return len(self.keys)

    def class_counts(self) -> np.ndarray:
        """Samples per class; unlabeled samples (label -1) belong to no class."""
        labels = self.labels[self.labels >= 0]
        n = max(self.num_classes, int(labels.max()) + 1 if len(labels) else 0)
        return np.bincount(labels, minlength=n)

    @property
    def num_unlabeled(self) -> int:
        return int((self.labels < 0).sum())

    def indices_of(self, label: int) -> np.ndarray:
        return np.flatnonzero(self.labels == label)

    def shard_path(self, j: int) -> Path:
        return self.root / self.shards[j].path

    def _modality(self, modality: str | None) -> str:
        if modality is None:
            return self.modalities[0]
        if modality not in self.modalities:
            raise DataError(f"{self.root / INDEX_NAME}: split {self.name!r} has no modality "
                            f"{modality!r}; modalities: {self.modalities}")
        return modality

    def member(self, modality: str | None = None) -> MemberColumns:
        """Columns of one modality's member (default: the primary one)."""
        m = self._modality(modality)
        cols = {f: self._column(column_name(self.modalities, m, f)) for f in MEMBER_FIELDS}
        return MemberColumns(m, member_ext(self.modalities, m), **cols)

    def stats(self, modality: str | None = None) -> ModalityStats:
        return self.modality_stats[self._modality(modality)]

    def to_json(self) -> dict[str, Any]:
        samples: dict[str, list] = {"key": list(self.keys)}
        for col in COLUMNS:
            samples[col] = self._column(col).tolist()
        for col, values in self.extra.items():
            samples[col] = values.tolist()
        if self.files:
            samples["file"] = list(self.files)
        return {"num_samples": len(self), "class_counts": self.class_counts().tolist(),
                "pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std,
                "image_sizes": dict(self.image_sizes),
                "modalities": list(self.modalities), "channels": self.channels,
                "pixel_mean_c": list(self.pixel_mean_c), "pixel_std_c": list(self.pixel_std_c),
                "labeled": self.labeled,
                "modality_stats": {m: self.modality_stats[m].to_json() for m in self.modalities},
                "shards": [vars(s).copy() for s in self.shards], "samples": samples}

    def _column(self, col: str) -> np.ndarray:
        if col == "label":
            return self.labels
        return getattr(self, col) if col in COLUMNS else self.extra[col]

    @classmethod
    def from_json(cls, name: str, root: Path, d: dict[str, Any], num_classes: int) -> SplitIndex:
        s = d["samples"]
        cols = {col: np.asarray(s[col], dtype=dt) for col, dt in COLUMNS.items()}
        modalities = [str(m) for m in d.get("modalities", DEFAULT_MODALITIES)]
        extra = {column_name(modalities, m, f): np.asarray(s[column_name(modalities, m, f)], dt)
                 for m in modalities[1:] for f, dt in MEMBER_FIELDS.items()}
        files = [s["file"]] if "file" in s else []
        if any(len(c) != len(s["key"]) for c in [*cols.values(), *extra.values(), *files]):
            raise ValueError(f"split {name!r}: sample columns differ in length")
        stats = {m: ModalityStats.from_json(x) for m, x in d.get("modality_stats", {}).items()}
        missing = [m for m in modalities[1:] if m not in stats]
        if missing:
            raise ValueError(f"split {name!r}: no modality_stats for {missing}")
        return cls(name=name, root=root, shards=[ShardInfo(**x) for x in d["shards"]],
                   keys=list(s["key"]), labels=cols.pop("label"), **cols,
                   pixel_mean=float(d["pixel_mean"]), pixel_std=float(d["pixel_std"]),
                   num_classes=num_classes, image_sizes=dict(d.get("image_sizes", {})),
                   modalities=modalities, channels=int(d.get("channels", 1)),
                   pixel_mean_c=d.get("pixel_mean_c"), pixel_std_c=d.get("pixel_std_c"),
                   labeled=bool(d.get("labeled", True)), modality_stats=stats, extra=extra,
                   files=[str(f) for f in s.get("file", [])])


@dataclass
class ClassIndex:
    """The whole `OUT/index.json`."""

    root: Path
    classes: list[str]
    splits: dict[str, SplitIndex]
    source: dict[str, Any] = field(default_factory=dict)
    sealed: bool = False  # loaded with a matching checksum (or saved with one)

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
            data = path.read_bytes()
            d = json.loads(data)
        except FileNotFoundError:
            raise DataError(f"{path}: no shard index (build it with `python -m shards build`)") from None
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: unreadable index: {e}") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise DataError(f"{path}: not a shard index of format {FORMAT!r}")
        sealed = check_seal(path, data, d)
        try:
            classes = [str(c) for c in d["classes"]]
            splits = {name: SplitIndex.from_json(name, root, s, len(classes))
                      for name, s in d["splits"].items()}
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: malformed index ({type(e).__name__}: {e})") from None
        for split in splits.values():
            for shard in split.shards:  # never read a file outside the shard folder
                inside(root, shard.path, f"{path}: split {split.name!r}")
        return cls(root=root, classes=classes, splits=splits, source=dict(d.get("source", {})),
                   sealed=sealed)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "classes": list(self.classes),
                "splits": {n: s.to_json() for n, s in self.splits.items()},
                "source": self.source}

    def save(self) -> None:
        """Write OUT/index.json atomically: readers see the old index or the new one, never half."""
        write_atomic(self.root / INDEX_NAME, seal(self.to_json()))
        self.sealed = True


def seal(d: dict[str, Any]) -> str:
    """The text of an index dict (any old checksum dropped) with its checksum as last key."""
    body = json.dumps({k: v for k, v in d.items() if k != "checksum"}, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return body[:-1] + f',"checksum":"sha256:{digest}"}}' + "\n"


def check_seal(path: Path, data: bytes, d: dict[str, Any]) -> bool:
    """True when the index carries a checksum that matches; False when it has none (written
    before checksums); DataError when it does not match."""
    if "checksum" not in d:
        return False
    m = _SEAL.search(data)
    if m is None or hashlib.sha256(data[:m.start()] + b"}").hexdigest() != m.group(1).decode():
        raise DataError(f"{path}: index changed after it was written (its checksum does not "
                        "match); rebuild it or restore the copy the build wrote")
    return True

