"""The labels CSV of a flat folder (a test split): which file is which class.

Header `image_id,class_id` (the NTIRE format: `12` means `SAR_12.png`, or a file name; a class
id 0..C-1) or `file,class` (a file name, with or without its extension, and a class name or
id). A row per image of the folder, no more, no less.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path, PurePath
from typing import Protocol

from shards.errors import DataError

HEADERS = (("image_id", "class_id"), ("file", "class"))


class Listed(Protocol):
    key: str
    relative: str
    path: Path


def read_labels(path: Path) -> list[tuple[str, str, int]]:
    """(image, class, line number) of every row of a labels CSV."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read labels CSV ({getattr(e, 'strerror', None) or e})") from None
    reader = csv.reader(io.StringIO(text))
    header = tuple(h.strip() for h in next(reader, []))
    if header not in HEADERS:
        raise DataError(f"{path}: header must be 'image_id,class_id' or 'file,class', "
                        f"found {','.join(header)!r}")
    rows = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != 2:
            raise DataError(f"{path}:{line}: expected 2 fields, found {len(row)}")
        rows.append((row[0].strip(), row[1].strip(), line))
    return rows


def class_of(value: str, classes: list[str] | None, where: str) -> int:
    """A class name or id -> its id."""
    if classes and value in classes:
        return classes.index(value)
    try:
        label = int(value)
    except ValueError:
        known = f" nor one of the classes {classes}" if classes else ""
        raise DataError(f"{where}: class_id {value!r} is not an integer{known}") from None
    if classes is not None and not 0 <= label < len(classes):
        raise DataError(f"{where}: class_id {label} outside 0..{len(classes) - 1}")
    return label


def class_list(rows: list[tuple[str, str, int]], path: Path) -> list[str]:
    """The classes a CSV implies when no shard folder fixes them: ids 0..max, or sorted names."""
    values = [c for _, c, _ in rows]
    if all(v.isdigit() for v in values):
        return [str(i) for i in range(max([int(v) for v in values], default=-1) + 1)]
    if any(v.isdigit() for v in values):
        raise DataError(f"{path}: classes mix numbers and names; use ids 0..C-1 or names only")
    return sorted(set(values))


def resolve_rows(rows: list[tuple[str, str, int]], found: list[Listed], path: Path, raw: Path,
                 classes: list[str] | None, ntire_prefix: str | None) -> tuple[dict[str, int], list[str]]:
    """{key: label} for every listed image, and the class list; DataError naming the CSV line
    or the image when a row has no image or an image no row."""
    classes = list(classes) if classes else class_list(rows, path)
    by_name: dict[str, str | None] = {}
    for im in found:
        for name in {im.relative, im.key, PurePath(im.relative).stem}:
            by_name[name] = None if by_name.get(name, im.key) != im.key else im.key  # None: ambiguous
    labels: dict[str, int] = {}
    for image, value, line in rows:
        where = f"{path}:{line}"
        name = f"{ntire_prefix}{image}" if ntire_prefix and image.isdigit() else image
        if name not in by_name:
            shown = f"{name}.png" if ntire_prefix and name.startswith(ntire_prefix) and "." not in name else name
            raise DataError(f"{where}: image {shown} not found in {raw}")
        key = by_name[name]
        if key is None:
            raise DataError(f"{where}: {image!r} names several files in {raw}; give the file "
                            "name with its extension")
        if key in labels:
            raise DataError(f"{where}: image_id {image} listed twice")
        labels[key] = class_of(value, classes, where)
    for im in found:
        if im.key not in labels:
            raise DataError(f"{im.path}: no label row for this image in {path}")
    return labels, classes


CLASS_NAMES_FILE = "classes.txt"     # RAW/classes.txt: a display name per class, in class order
MANIFEST = "synth.json"              # the synthetic generator's record beside RAW (its "classes")


def display_names(raw: Path, classes: list[str]) -> list[str] | None:
    """Display names the data carries for numbered classes 0..C-1: one per line in
    RAW/classes.txt, or the synthetic set's names (RAW/../synth.json). None when there are
    none (the report then shows the class folder names) or the classes are already names."""
    if classes != [str(i) for i in range(len(classes))]:
        return None
    names = None
    if (raw / CLASS_NAMES_FILE).is_file():
        names = [n.strip() for n in (raw / CLASS_NAMES_FILE).read_text().splitlines() if n.strip()]
        if len(names) != len(classes):
            raise DataError(f"{raw / CLASS_NAMES_FILE}: {len(names)} names for {len(classes)} classes")
    elif (raw.parent / MANIFEST).is_file():
        import json

        try:
            names = json.loads((raw.parent / MANIFEST).read_text()).get("classes")
        except (ValueError, AttributeError):
            return None
        if not isinstance(names, list) or len(names) != len(classes):
            return None
    return [str(n) for n in names] if names else None
