"""Scan and validate a raw image folder.

Two layouts: class folders `RAW/<class>/...` (names 0..C-1, or any names taken in sorted order;
images at any depth below them, as in torchvision's ImageFolder), or a flat `RAW/` whose
labels come from a CSV (the test layout) or that has no labels at all (an unlabeled split).
Two kinds of names (`shards/names.py`): in the NTIRE layout (some file is named `SAR_*.png` or
`EO_*.png`, or `--modalities` is given) only the chips of the listed modalities count, keyed by
their stem, and every other modality's file with the same id in the same folder is a partner
(`SAR_12.png` + `EO_12.png`); otherwise every PNG, JPEG, TIFF or BMP file is a sample, keyed by
its path relative to RAW. Other files are ignored and counted.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from shards.errors import DataError
from shards.labels import CLASS_NAMES_FILE, read_labels, resolve_rows
from shards.members import DEFAULT_MODALITIES
from shards.names import (IMAGE_FORMATS, is_chip, is_image, is_ntire_name, is_safe_key,
                          natural_key, prefix, unique_keys)

UNLABELED = -1  # the label of every sample of an unlabeled split


@dataclass(frozen=True)
class RawPartner:
    modality: str
    path: Path
    bytes: int  # file size at scan time


@dataclass(frozen=True)
class RawImage:
    path: Path
    key: str  # SAR_1234 (NTIRE layout), or derived from the relative path
    label: int
    bytes: int  # file size at scan time
    partners: tuple[RawPartner, ...] = ()  # the other modalities' files, in modality order
    relative: str = ""  # path relative to the raw folder, as found


@dataclass
class RawListing:
    root: Path
    classes: list[str]
    images: list[RawImage]  # ordered by label, then natural order
    ignored: list[Path] = field(default_factory=list)  # files that are not samples
    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    ntire: bool = True  # NTIRE names (SAR_<id>.png) or any image files

    def fingerprint(self) -> str:
        """Hash of what was listed (relative path, size, label): same listing -> same hash."""
        h = hashlib.sha256("\n".join(self.classes).encode())
        for im in self.images:
            h.update(f"\n{im.path.relative_to(self.root)}\t{im.bytes}\t{im.label}".encode())
            for p in im.partners:
                h.update(f"\t{p.modality}:{p.path.relative_to(self.root)}\t{p.bytes}".encode())
        return h.hexdigest()

    def what(self) -> str:
        """What counts as a sample here, for messages: `SAR_*.png` or `image files (...)`."""
        if self.ntire:
            return " or ".join(f"{prefix(m)}*.png" for m in self.modalities)
        return "image files (" + ", ".join(sorted(IMAGE_FORMATS)) + ")"


@dataclass(frozen=True)
class FileEntry:
    path: Path
    name: str
    bytes: int


def is_sar(name: str) -> bool:
    return is_chip(name, "sar")


def scan_raw(raw: Path, labels_csv: Path | None = None, classes: list[str] | None = None, *,
             modalities: Sequence[str] = DEFAULT_MODALITIES,
             unlabeled: bool = False, ntire: bool | None = None) -> RawListing:
    """List a raw folder: class folders, or (with labels_csv, or unlabeled) a flat folder.

    `classes` (from an existing shard folder) fixes the class list a CSV's labels refer to.
    `ntire` forces the kind of names (default: decided from the names found).
    """
    raw, modalities = Path(raw), tuple(modalities)
    if not raw.is_dir():
        raise DataError(f"{raw}: not a folder")
    if labels_csv is not None or unlabeled:
        listing = scan_flat_folder(raw, Path(labels_csv) if labels_csv else None, classes,
                                   modalities, ntire)
    else:
        listing = scan_class_folders(raw, modalities, ntire)
    check_keys(listing.images)
    return listing


def _entries(folder: Path) -> tuple[list[Path], list[FileEntry]]:
    """(sub-folders, files) of a folder, hidden entries skipped, sorted by name; a dangling
    symbolic link is an error naming it."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list folder ({e.strerror})") from None
    dirs, files = [], []
    for e in entries:
        try:
            if e.is_dir():
                dirs.append(Path(e.path))
            else:
                files.append(FileEntry(Path(e.path), e.name, e.stat().st_size))
        except OSError as err:
            what = "dangling symbolic link" if e.is_symlink() else "unreadable entry"
            raise DataError(f"{e.path}: {what} ({err.strerror})") from None
    return dirs, files


def walk(top: Path, seen: dict[tuple[int, int], Path] | None = None) -> list[tuple[Path, list[FileEntry]]]:
    """(folder, its files) for `top` and every folder below it, in sorted order; a folder
    reached twice (a symbolic link loop, or two links to one folder) is an error naming it."""
    seen = {} if seen is None else seen
    try:
        st = top.stat()
    except OSError as e:
        raise DataError(f"{top}: cannot read folder ({e.strerror})") from None
    ident = (st.st_dev, st.st_ino)
    if ident in seen:
        kind = "symbolic link loop" if seen[ident] in top.parents or seen[ident] == top else "folder listed twice"
        raise DataError(f"{top}: {kind} (the same folder as {seen[ident]}); "
                        "every image must be reachable one way only")
    seen[ident] = top
    dirs, files = _entries(top)
    out = [(top, files)]
    for d in dirs:
        out += walk(d, seen)
    return out


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


def pair_files(folder: Path, files: list[FileEntry], modalities: tuple[str, ...],
               label: int, root: Path) -> tuple[list[RawImage], list[Path]]:
    """NTIRE names: the samples of one folder (primary chips in natural order, each with its
    partners) and the files of no listed modality. A chip without its partner is an error."""
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
            partners.append(RawPartner(m, g.path, g.bytes))
        images.append(RawImage(f.path, f.name[:-4], label, f.bytes, tuple(partners),
                               str(f.path.relative_to(root))))
    for m in others:
        for ident, g in sorted(chips[m].items(), key=lambda kv: natural_key(kv[1].name)):
            if ident not in chips[primary]:
                raise DataError(f"{g.path}: id {ident} has no {primary.upper()} partner "
                                f"({prefix(primary)}{ident}.png missing in {folder})")
    ignored = [f.path for f in files if not any(is_chip(f.name, m) for m in modalities)]
    return images, ignored


def any_files(folder: Path, files: list[FileEntry], label: int, root: Path) -> tuple[list[RawImage], list[Path]]:
    """Any names: every image file of one folder is a sample (its key is set later)."""
    images = [RawImage(f.path, "", label, f.bytes, (), str(f.path.relative_to(root)))
              for f in sorted(files, key=lambda f: natural_key(f.name)) if is_image(f.name)]
    return images, [f.path for f in files if not is_image(f.name)]


def collect(folders: list[tuple[Path, list[FileEntry]]], label: int, root: Path, ntire: bool,
            modalities: tuple[str, ...]) -> tuple[list[RawImage], list[Path]]:
    images: list[RawImage] = []
    ignored: list[Path] = []
    for folder, files in folders:
        found, skipped = (pair_files(folder, files, modalities, label, root) if ntire
                          else any_files(folder, files, label, root))
        images += found
        ignored += skipped
    return images, ignored


def decide_ntire(folders: list[tuple[Path, list[FileEntry]]], modalities: tuple[str, ...],
                 ntire: bool | None) -> bool:
    if ntire is not None:
        return ntire
    return modalities != DEFAULT_MODALITIES or any(is_ntire_name(f.name) for _, fs in folders for f in fs)


def with_keys(images: list[RawImage], ntire: bool) -> list[RawImage]:
    """Any names: a safe key from each relative path, unique within the listing."""
    if ntire:
        return images
    keys = unique_keys([im.relative for im in images])
    return [RawImage(im.path, k, im.label, im.bytes, im.partners, im.relative) for im, k in zip(images, keys)]


def scan_class_folders(raw: Path, modalities: tuple[str, ...] = DEFAULT_MODALITIES,
                       ntire: bool | None = None) -> RawListing:
    dirs, files = _entries(raw)
    if not dirs:
        raise DataError(f"{raw}: no class folders (expected RAW/<class>/<images>; "
                        "for a flat folder of labelled images pass a labels CSV)")
    stray = [f for f in files if is_image(f.name)]
    if stray:
        raise DataError(f"{stray[0].path}: image directly in {raw}, next to class folders; "
                        "every image must sit in a class folder")
    classes = class_order(raw, [d.name for d in dirs])
    seen = {}
    trees = [walk(raw / name, seen) for name in classes]
    kind = decide_ntire([x for t in trees for x in t], modalities, ntire)
    listing = RawListing(root=raw, classes=classes, images=[],
                         ignored=[f.path for f in files if f.name != CLASS_NAMES_FILE],
                         modalities=modalities, ntire=kind)
    for label, (name, tree) in enumerate(zip(classes, trees)):
        images, ignored = collect(tree, label, raw, kind, modalities)
        listing.ignored += ignored
        if not images:
            raise DataError(f"{raw / name}: empty class folder (no {listing.what()})")
        listing.images += images
    listing.images = with_keys(listing.images, kind)
    return listing


def scan_flat_folder(raw: Path, labels_csv: Path | None, classes: list[str] | None,
                     modalities: tuple[str, ...] = DEFAULT_MODALITIES,
                     ntire: bool | None = None) -> RawListing:
    """A flat folder labelled by a CSV, or (labels_csv None) an unlabeled one."""
    dirs, files = _entries(raw)
    if dirs:
        raise DataError(f"{dirs[0]}: sub-folder in {raw}; with a labels CSV or without labels "
                        "the images must sit directly in the folder")
    kind = decide_ntire([(raw, files)], modalities, ntire)
    found, ignored = collect([(raw, files)], UNLABELED, raw, kind, modalities)
    found = with_keys(found, kind)
    listing = RawListing(root=raw, classes=list(classes or []), images=found, ignored=ignored,
                         modalities=modalities, ntire=kind)
    if not found:
        raise DataError(f"{raw}: no {listing.what()}")
    if labels_csv is None:
        return listing
    rows = read_labels(labels_csv)
    labels, listing.classes = resolve_rows(rows, found, labels_csv, raw, classes,
                                           prefix(modalities[0]) if kind else None)
    images = [RawImage(im.path, im.key, labels[im.key], im.bytes, im.partners, im.relative) for im in found]
    listing.images = sorted(images, key=lambda im: (im.label, natural_key(im.relative)))
    return listing


def scan_labelled_folder(raw: Path, labels_csv: Path, classes: list[str] | None) -> RawListing:
    """A flat folder of SAR chips labelled by a CSV (kept for callers of the old name)."""
    return scan_flat_folder(raw, labels_csv, classes)


def check_keys(images: list[RawImage]) -> None:
    """Keys name tar members (`<key>.png`): unique, and of letters, digits, `_` and `-` only
    (a dot splits a WebDataset key; whitespace breaks DALI index lines)."""
    seen: dict[str, Path] = {}
    for im in images:
        if "." in im.key:
            raise DataError(f"{im.path}: file name has a dot before .png; WebDataset keys "
                            "cannot contain dots")
        if not is_safe_key(im.key):
            raise DataError(f"{im.path}: file name {im.key!r} holds characters other than letters, "
                            "digits, _ and -; NTIRE chip names are SAR_<id>.png")
        if im.key in seen:
            raise DataError(f"{im.path}: same name as {seen[im.key]}; keys (file stems) "
                            "must be unique")
        seen[im.key] = im.path
