"""Chips straight from a folder of image files, as `predict` reads them: listed by the build's
rules (shards/names.py) and read by the build's reader (`shards.pixels.read_chip`, with the
run's recorded intensity mapping, size policy, depth and size range), so a prediction sees the
pixels the evaluation saw and a file the build would refuse is refused here too, by name.

Two kinds of folder: the NTIRE layout (`SAR_<id>.png`, paired with `EO_<id>.png` across
modalities; rows are ids) and any other folder of images, read recursively (rows are paths
relative to the folder). Files that are not chips are ignored and counted; NTIRE names that
give one id twice (`SAR_1.png`, `SAR_01.png`) are collisions: the first in natural order is
read, the others counted and named.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from datasets.decode import chip_into
from shards.chips import ChipSpec
from shards.errors import DataError
from shards.names import is_image, is_ntire_name, natural_key, ntire_id, prefix
from shards.pixels import DEFAULT_SIZE_RANGE, ExpectedMode, read_chip
from shards.raw import walk


@dataclass
class FolderListing:
    """What `predict` reads: one row per sample, in natural order."""

    ntire: bool                                      # rows are NTIRE ids, else relative paths
    rows: list[tuple[str, dict[str, Path]]]          # (id or relative path, {modality: file})
    ignored: list[Path] = field(default_factory=list)
    collisions: list[tuple[Path, Path]] = field(default_factory=list)   # (skipped, kept)


@dataclass(frozen=True)
class Preprocess:
    """How the run's chips were made from files (card.json `preprocess`; older runs: the
    defaults, which is what their builds did)."""

    spec: ChipSpec
    expected: dict[str, ExpectedMode]
    size_range: tuple[int, int]

    @classmethod
    def from_info(cls, info: dict) -> Preprocess:
        rec = info.get("preprocess") or {}
        modalities = info.get("modalities", ["sar"])
        channels = info["model"].get("modality_channels") or [info.get("channels", 1)]
        modes = rec.get("modes") or {m: "gray" if c == 1 else "rgb" for m, c in zip(modalities, channels)}
        depths = rec.get("depths") or {}
        expected = {m: ExpectedMode(modes[m], "as the run's training chips", depths.get(m, "8-bit"))
                    for m in modalities}
        return cls(ChipSpec.from_json(rec), expected, tuple(rec.get("size_range") or DEFAULT_SIZE_RANGE))


def list_ntire(folders: dict[str, Path], files: dict[str, list[Path]]) -> FolderListing:
    """NTIRE names: {id: {modality: file}} for the first modality's ids; partners by id."""
    listing = FolderListing(True, [])
    found: dict[str, dict[int, Path]] = {}
    for m, paths in files.items():
        found[m] = {}
        for p in sorted(paths, key=lambda p: natural_key(p.name)):
            i = ntire_id(p.name, m)
            if i is None:
                if m == next(iter(folders)):
                    listing.ignored.append(p)
            elif i in found[m]:
                listing.collisions.append((p, found[m][i]))
            else:
                found[m][i] = p
    primary, *others = folders
    if not found[primary]:
        raise DataError(f"{folders[primary]}: no {prefix(primary)}<id>.png images")
    for m in others:
        missing = sorted(set(found[primary]) - set(found[m]))
        if missing:
            raise DataError(f"{folders[m]}: no {prefix(m)}{missing[0]}.png for {prefix(primary)}{missing[0]}.png "
                            f"({len(missing)} ids without an {m} partner)")
    listing.rows = [(str(i), {m: found[m][i] for m in folders}) for i in sorted(found[primary])]
    return listing


def list_chips(folders: dict[str, Path]) -> FolderListing:
    """The samples of `folders` ({modality: folder}, the model's modalities in order)."""
    files: dict[str, list[Path]] = {}
    for m, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of images")
        files[m] = [f.path for d, fs in walk(folder) for f in fs]
    primary = next(iter(folders))
    if len(folders) > 1 or any(is_ntire_name(p.name) for p in files[primary]):
        return list_ntire(folders, files)
    root = folders[primary]
    images = sorted((p for p in files[primary] if is_image(p.name)),
                    key=lambda p: natural_key(str(p.relative_to(root))))
    if not images:
        raise DataError(f"{root}: no image files (.bmp .jpeg .jpg .png .tif .tiff)")
    return FolderListing(False, [(str(p.relative_to(root)), {primary: p}) for p in images],
                         [p for p in files[primary] if not is_image(p.name)])


def read_member(path: Path, prep: Preprocess, modality: str) -> np.ndarray:
    """uint8 [C,H,W] of one file, read exactly as the build read the training chips."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    chip = read_chip(path, data, prep.size_range, prep.expected[modality], prep.spec)
    return chip[None] if chip.ndim == 2 else np.ascontiguousarray(chip.transpose(2, 0, 1))


def load_chips(files: list[dict[str, Path]], size: int, channels: list[int],
               prep: Preprocess | None = None) -> torch.Tensor:
    """uint8 [B,C,S,S] of samples given as {modality: file} (modalities in the model's order)."""
    out = np.empty((len(files), sum(channels), size, size), dtype=np.uint8)
    windows: dict = {}
    for k, sample in enumerate(files):
        p = prep or Preprocess(ChipSpec(), {m: ExpectedMode("gray" if c == 1 else "rgb", "as the model takes")
                                            for m, c in zip(sample, channels)}, DEFAULT_SIZE_RANGE)
        chip_into(out[k], [read_member(path, p, m) for m, path in sample.items()], size, windows)
    return torch.from_numpy(out)
