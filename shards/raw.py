"""Scan and validate a raw image folder (the NTIRE layout).

Two layouts: `RAW/<class>/SAR_<id>.png` (class folders 0..C-1, or names in sorted order), or a
flat `RAW/SAR_<id>.png` whose labels come from a CSV `image_id,class_id` (the test layout) or
that has no labels at all (an unlabeled split, e.g. out-of-distribution chips).
By default only `SAR_*.png` files count; `EO_*` chips and other files are ignored and counted.
With modalities (`shards/members.py`) the first one's files are the samples and every other
modality's file with the same id in the same folder is its partner (`SAR_12.png` + `EO_12.png`).
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shards.errors import DataError
from shards.members import DEFAULT_MODALITIES, is_chip, prefix
from shards.pixels import DEFAULT_SIZE_RANGE, check_mode, inspect_png  # noqa: F401 (re-exported)

UNLABELED = -1  # the label of every sample of an unlabeled split


@dataclass(frozen=True)
class RawPartner:
    modality: str
    path: Path
    bytes: int  # file size at scan time


@dataclass(frozen=True)
class RawImage:
    path: Path
    key: str  # file stem, e.g. SAR_1234
    label: int
    bytes: int  # file size at scan time
    partners: tuple[RawPartner, ...] = ()  # the other modalities' files, in modality order


@dataclass
class RawListing:
    root: Path
    classes: list[str]
    images: list[RawImage]  # ordered by label, then natural key order
    ignored: list[Path] = field(default_factory=list)  # files of no listed modality
    modalities: tuple[str, ...] = DEFAULT_MODALITIES

    def fingerprint(self) -> str:
        """Hash of what was listed (relative path, size, label): same listing -> same hash."""
        h = hashlib.sha256("\n".join(self.classes).encode())
        for im in self.images:
            h.update(f"\n{im.path.relative_to(self.root)}\t{im.bytes}\t{im.label}".encode())
            for p in im.partners:
                h.update(f"\t{p.modality}:{p.path.relative_to(self.root)}\t{p.bytes}".encode())
        return h.hexdigest()


def natural_key(name: str) -> tuple:
    """SAR_2 before SAR_10: digit runs compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def is_sar(name: str) -> bool:
    return is_chip(name, "sar")


def scan_raw(raw: Path, labels_csv: Path | None = None, classes: list[str] | None = None, *,
             modalities: Sequence[str] = DEFAULT_MODALITIES,
             unlabeled: bool = False) -> RawListing:
    """List a raw folder: class folders, or (with labels_csv, or unlabeled) a flat folder.

    `classes` (from an existing shard folder) fixes the class list a CSV's labels refer to.
    """
    raw, modalities = Path(raw), tuple(modalities)
    if not raw.is_dir():
        raise DataError(f"{raw}: not a folder")
    if labels_csv is not None or unlabeled:
        listing = scan_flat_folder(raw, Path(labels_csv) if labels_csv else None, classes,
                                   modalities)
    else:
        listing = scan_class_folders(raw, modalities)
    check_keys(listing.images)
    return listing


def _entries(folder: Path) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """(sub-folders, files) of a folder, hidden entries skipped, sorted by name."""
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    return [e for e in entries if e.is_dir()], [e for e in entries if not e.is_dir()]


def class_order(raw: Path, names: list[str]) -> list[str]:
    """Folder names 0..C-1 (numeric order) or names (sorted); anything else is an error."""
    numeric = [n for n in names if n.isdigit()]
    if numeric and len(numeric) != len(names):
        others = sorted(set(names) - set(numeric))
        raise DataError(f"{raw}: class folders mix numbers and names ({others[:5]}); "
                        "use 0..C-1 or names only")
    if not numeric:
        return sorted(names)
    nums = sorted(int(n) for n in names)
    if nums != list(range(len(names))) or any(n != str(int(n)) for n in names):
        missing = sorted(set(range(nums[-1] + 1)) - set(nums))
        raise DataError(f"{raw}: numeric class folders must be exactly 0..{len(names) - 1}; "
                        f"found {sorted(names, key=natural_key)}"
                        + (f", missing {missing}" if missing else ""))
    return [str(i) for i in range(len(names))]


def pair_files(folder: Path, files: list[os.DirEntry], modalities: tuple[str, ...],
               label: int) -> tuple[list[RawImage], list[Path]]:
    """The samples of one folder (primary chips in natural order, each with its partners) and
    the files of no listed modality. A chip without its partner is an error naming its id."""
    chips = {m: {f.name[len(prefix(m)):-4]: f for f in files if is_chip(f.name, m)}
             for m in modalities}
    primary, others = modalities[0], modalities[1:]
    images = []
    for ident, f in sorted(chips[primary].items(), key=lambda kv: natural_key(kv[1].name)):
        partners = []
        for m in others:
            g = chips[m].get(ident)
            if g is None:
                raise DataError(f"{f.path}: id {ident} has no {m.upper()} partner "
                                f"({prefix(m)}{ident}.png missing in {folder})")
            partners.append(RawPartner(m, Path(g.path), g.stat().st_size))
        images.append(RawImage(Path(f.path), f.name[:-4], label, f.stat().st_size, tuple(partners)))
    for m in others:
        for ident, g in sorted(chips[m].items(), key=lambda kv: natural_key(kv[1].name)):
            if ident not in chips[primary]:
                raise DataError(f"{g.path}: id {ident} has no {primary.upper()} partner "
                                f"({prefix(primary)}{ident}.png missing in {folder})")
    ignored = [Path(f.path) for f in files if not any(is_chip(f.name, m) for m in modalities)]
    return images, ignored


def scan_class_folders(raw: Path, modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> RawListing:
    dirs, files = _entries(raw)
    first = prefix(modalities[0])
    if not dirs:
        raise DataError(f"{raw}: no class folders (expected RAW/<class>/{first}*.png; "
                        "for a flat folder of labelled images pass a labels CSV)")
    stray = [f for f in files if f.name.lower().endswith(".png")]
    if stray:
        raise DataError(f"{stray[0].path}: image directly in {raw}, next to class folders; "
                        "every image must sit in a class folder")
    classes = class_order(raw, [d.name for d in dirs])
    listing = RawListing(root=raw, classes=classes, images=[],
                         ignored=[Path(f.path) for f in files], modalities=modalities)
    for label, name in enumerate(classes):
        subdirs, files = _entries(raw / name)
        images, ignored = pair_files(raw / name, files, modalities, label)
        listing.ignored += [Path(e.path) for e in subdirs] + ignored
        if not images:
            raise DataError(f"{raw / name}: empty class folder (no {first}*.png files)")
        listing.images += images
    return listing


def scan_flat_folder(raw: Path, labels_csv: Path | None, classes: list[str] | None,
                     modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> RawListing:
    """A flat folder labelled by a CSV, or (labels_csv None) an unlabeled one."""
    dirs, files = _entries(raw)
    first = prefix(modalities[0])
    if dirs:
        raise DataError(f"{dirs[0].path}: sub-folder in {raw}; with a labels CSV or without labels "
                        f"the images must sit directly in the folder (RAW/{first}<id>.png)")
    found, ignored = pair_files(raw, files, modalities, UNLABELED)
    if labels_csv is None:
        if not found:
            raise DataError(f"{raw}: no {first}*.png images")
        return RawListing(root=raw, classes=list(classes or []), images=found, ignored=ignored,
                          modalities=modalities)
    by_key = {im.key: im for im in found}
    rows = read_labels(labels_csv, first)
    num_classes = len(classes) if classes else max([lab for lab, _ in rows.values()], default=-1) + 1
    for key, (label, line) in rows.items():
        if not 0 <= label < num_classes:
            raise DataError(f"{labels_csv}:{line}: class_id {label} outside 0..{num_classes - 1}")
        if key not in by_key:
            raise DataError(f"{labels_csv}:{line}: image {key}.png not found in {raw}")
    for im in found:
        if im.key not in rows:
            raise DataError(f"{im.path}: no label row for this image in {labels_csv}")
    order = sorted(by_key, key=lambda k: (rows[k][0], natural_key(k)))
    images = [RawImage(by_key[k].path, k, rows[k][0], by_key[k].bytes, by_key[k].partners)
              for k in order]
    if not images:
        raise DataError(f"{raw}: no {first}*.png images")
    return RawListing(root=raw, classes=list(classes) if classes else
                      [str(i) for i in range(num_classes)], images=images, ignored=ignored,
                      modalities=modalities)


def scan_labelled_folder(raw: Path, labels_csv: Path, classes: list[str] | None) -> RawListing:
    """A flat folder of SAR chips labelled by a CSV (kept for callers of the old name)."""
    return scan_flat_folder(raw, labels_csv, classes)


def read_labels(path: Path, key_prefix: str = "SAR_") -> dict[str, tuple[int, int]]:
    """CSV `image_id,class_id` -> {key: (label, line number)}. image_id is `12` (the key is then
    `<key_prefix>12`) or a key such as `SAR_12`."""
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read labels CSV ({e.strerror})") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if header != ["image_id", "class_id"]:
        raise DataError(f"{path}: header must be 'image_id,class_id', found {','.join(header)!r}")
    rows: dict[str, tuple[int, int]] = {}
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 2:
            raise DataError(f"{path}:{line}: expected 2 fields, found {len(row)}")
        image_id, class_id = (x.strip() for x in row)
        key = f"{key_prefix}{image_id}" if image_id.isdigit() else image_id.removesuffix(".png")
        try:
            label = int(class_id)
        except ValueError:
            raise DataError(f"{path}:{line}: class_id {class_id!r} is not an integer") from None
        if key in rows:
            raise DataError(f"{path}:{line}: image_id {image_id} listed twice")
        rows[key] = (label, line)
    return rows


def check_keys(images: list[RawImage]) -> None:
    """Keys name tar members (`<key>.png`): unique, and without a dot (WebDataset splits there)."""
    seen: dict[str, Path] = {}
    for im in images:
        if "." in im.key:
            raise DataError(f"{im.path}: file name has a dot before .png; WebDataset keys "
                            "cannot contain dots")
        if im.key in seen:
            raise DataError(f"{im.path}: same name as {seen[im.key]}; keys (file stems) "
                            "must be unique")
        seen[im.key] = im.path
