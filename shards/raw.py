"""Scan and validate a raw image folder (the NTIRE layout).

Two layouts: `RAW/<class>/SAR_<id>.png` (class folders 0..C-1, or names in sorted order), or a
flat `RAW/SAR_<id>.png` whose labels come from a CSV `image_id,class_id` (the test layout).
Only `SAR_*.png` files count; `EO_*` chips and other files are ignored and counted.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from shards.errors import DataError

DEFAULT_SIZE_RANGE = (16, 256)


@dataclass(frozen=True)
class RawImage:
    path: Path
    key: str  # file stem, e.g. SAR_1234
    label: int
    bytes: int  # file size at scan time


@dataclass
class RawListing:
    root: Path
    classes: list[str]
    images: list[RawImage]  # ordered by label, then natural key order
    ignored: list[Path] = field(default_factory=list)  # files that are not SAR_*.png

    def fingerprint(self) -> str:
        """Hash of what was listed (relative path, size, label): same listing -> same hash."""
        h = hashlib.sha256("\n".join(self.classes).encode())
        for im in self.images:
            h.update(f"\n{im.path.relative_to(self.root)}\t{im.bytes}\t{im.label}".encode())
        return h.hexdigest()


def natural_key(name: str) -> tuple:
    """SAR_2 before SAR_10: digit runs compare as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def is_sar(name: str) -> bool:
    return name.startswith("SAR_") and name.endswith(".png")


def scan_raw(raw: Path, labels_csv: Path | None = None,
             classes: list[str] | None = None) -> RawListing:
    """List a raw folder: class folders, or (with labels_csv) a flat folder labelled by a CSV.

    `classes` (from an existing shard folder) fixes the class list a CSV's labels refer to.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise DataError(f"{raw}: not a folder")
    if labels_csv is not None:
        listing = scan_labelled_folder(raw, Path(labels_csv), classes)
    else:
        listing = scan_class_folders(raw)
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


def scan_class_folders(raw: Path) -> RawListing:
    dirs, files = _entries(raw)
    if not dirs:
        raise DataError(f"{raw}: no class folders (expected RAW/<class>/SAR_*.png; "
                        "for a flat folder of labelled images pass a labels CSV)")
    stray = [f for f in files if f.name.lower().endswith(".png")]
    if stray:
        raise DataError(f"{stray[0].path}: image directly in {raw}, next to class folders; "
                        "every image must sit in a class folder")
    classes = class_order(raw, [d.name for d in dirs])
    listing = RawListing(root=raw, classes=classes, images=[],
                         ignored=[Path(f.path) for f in files])
    for label, name in enumerate(classes):
        subdirs, files = _entries(raw / name)
        sar = [f for f in files if is_sar(f.name)]
        listing.ignored += [Path(e.path) for e in subdirs + files if not is_sar(e.name)]
        if not sar:
            raise DataError(f"{raw / name}: empty class folder (no SAR_*.png files)")
        sar.sort(key=lambda f: natural_key(f.name))
        listing.images += [RawImage(Path(f.path), f.name[:-4], label, f.stat().st_size)
                           for f in sar]
    return listing


def scan_labelled_folder(raw: Path, labels_csv: Path,
                         classes: list[str] | None) -> RawListing:
    dirs, files = _entries(raw)
    if dirs:
        raise DataError(f"{dirs[0].path}: sub-folder in {raw}; with a labels CSV the images "
                        "must sit directly in the folder (RAW/SAR_<id>.png)")
    sar = {f.name[:-4]: f for f in files if is_sar(f.name)}
    rows = read_labels(labels_csv)
    num_classes = len(classes) if classes else max([lab for lab, _ in rows.values()], default=-1) + 1
    for key, (label, line) in rows.items():
        if not 0 <= label < num_classes:
            raise DataError(f"{labels_csv}:{line}: class_id {label} outside 0..{num_classes - 1}")
        if key not in sar:
            raise DataError(f"{labels_csv}:{line}: image {key}.png not found in {raw}")
    for key, f in sar.items():
        if key not in rows:
            raise DataError(f"{f.path}: no label row for this image in {labels_csv}")
    order = sorted(sar, key=lambda k: (rows[k][0], natural_key(k)))
    images = [RawImage(Path(sar[k].path), k, rows[k][0], sar[k].stat().st_size) for k in order]
    if not images:
        raise DataError(f"{raw}: no SAR_*.png images")
    return RawListing(root=raw, classes=list(classes) if classes else
                      [str(i) for i in range(num_classes)], images=images,
                      ignored=[Path(f.path) for f in files if not is_sar(f.name)])


def read_labels(path: Path) -> dict[str, tuple[int, int]]:
    """CSV `image_id,class_id` -> {key: (label, line number)}. image_id is `12` or `SAR_12`."""
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
        key = f"SAR_{image_id}" if image_id.isdigit() else image_id.removesuffix(".png")
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


def inspect_png(path: Path, data: bytes,
                size_range: tuple[int, int] = DEFAULT_SIZE_RANGE) -> tuple[int, int, int, int]:
    """Validate one PNG (its bytes `data`, read from `path`) by decoding it.

    Returns (height, width, sum of pixels, sum of squared pixels).
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise DataError(f"{path}: not a PNG (found {im.format})")
            check_mode(path, im.mode)
            im.verify()  # walks every chunk and checks its CRC, including the pixel data
        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im)  # full decode: catches truncated or corrupt streams
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        raise DataError(f"{path}: corrupt or truncated PNG ({type(e).__name__}: {e})") from None
    h, w = pixels.shape
    lo, hi = size_range
    if not (lo <= h <= hi and lo <= w <= hi):
        raise DataError(f"{path}: image size {h}x{w} (HxW) outside the accepted "
                        f"{lo}..{hi} px per side")
    flat = pixels.ravel().astype(np.int64)
    return h, w, int(flat.sum()), int(flat @ flat)


def check_mode(path: Path, mode: str) -> None:
    if mode == "L":
        return
    if mode.startswith("I") or mode == "F":
        what = "16-bit image"
    elif mode == "1":
        what = "1-bit image"
    else:
        what = f"colour image (mode {mode})"
    raise DataError(f"{path}: {what}, expected 8-bit grayscale")
