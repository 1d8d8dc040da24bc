"""Chip file names, in one place: the NTIRE names (`SAR_<id>.png`, `EO_<id>.png`), the image
extensions a raw folder may hold, natural order, and the sample key derived from a file.

Two kinds of raw folder: the NTIRE layout, whose chips are named `<PREFIX><id>.png` (the key is
the file stem, `SAR_12`, and results.csv uses the id), and any other folder of images
(ImageFolder's convention: any names, any depth), whose key is derived from the path relative to
the raw folder (`BMP2/SN_9563/HB19377.jpeg` -> `BMP2_SN_9563_HB19377`). A key names tar members
(`<key>.png`) and lines of DALI `.idx` files: it holds only letters, digits, `_` and `-`.
"""
from __future__ import annotations

import hashlib
import re
from os import PathLike
from pathlib import PurePath

MODALITY_PREFIX = {"sar": "SAR_", "eo": "EO_"}   # modality -> file name prefix in a raw folder
# Extension (lower case) -> the format its content must have (PIL's name).
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF",
                 ".bmp": "BMP"}
_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_UNSAFE_RUN = re.compile(r"[^A-Za-z0-9_-]+")
_CHIP = {m: re.compile(rf"{p}(\d+)\.png") for m, p in MODALITY_PREFIX.items()}


def prefix(modality: str) -> str:
    return MODALITY_PREFIX[modality]


def is_chip(name: str, modality: str) -> bool:
    """`SAR_*.png` for sar, `EO_*.png` for eo (the NTIRE layout)."""
    return name.startswith(MODALITY_PREFIX[modality]) and name.endswith(".png")


def is_ntire_name(name: str) -> bool:
    """A chip named as in the NTIRE layout, of any modality."""
    return any(is_chip(name, m) for m in MODALITY_PREFIX)


def ntire_id(name: str | PathLike[str], modality: str = "sar") -> int | None:
    """The number in `SAR_<digits>.png` (or the modality's prefix), else None."""
    match = _CHIP[modality].fullmatch(PurePath(name).name)
    return int(match.group(1)) if match else None


def is_image(name: str) -> bool:
    """A file whose extension is one of IMAGE_FORMATS (any case)."""
    return PurePath(name).suffix.lower() in IMAGE_FORMATS


def expected_format(name: str | PathLike[str]) -> str | None:
    return IMAGE_FORMATS.get(PurePath(name).suffix.lower())


def natural_key(name: str) -> tuple:
    """SAR_2 before SAR_10: digit runs compare as numbers."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name))


def is_safe_key(key: str) -> bool:
    """Letters, digits, `_` and `-` only: no dot (WebDataset splits there), no whitespace or
    slash (tar member names, DALI index lines)."""
    return _SAFE.fullmatch(key) is not None


def path_key(relative: str) -> str:
    """A safe key from a path relative to the raw folder, extension dropped:
    `BMP2/SN_9563/HB19377.jpeg` -> `BMP2_SN_9563_HB19377`."""
    stem = str(PurePath(relative).with_suffix(""))
    return _UNSAFE_RUN.sub("_", stem).strip("_") or "chip"


def unique_keys(relatives: list[str]) -> list[str]:
    """`path_key` of each path; paths whose keys coincide (`a b.png`, `a_b.png`, `x.png`,
    `x.jpg`) get a suffix from a hash of their whole relative path, so keys are unique and a
    given path always gets the same key within the same listing."""
    keys = [path_key(r) for r in relatives]
    count: dict[str, int] = {}
    for k in keys:
        count[k] = count.get(k, 0) + 1
    return [k if count[k] == 1 else f"{k}-{hashlib.sha1(r.encode()).hexdigest()[:8]}"
            for k, r in zip(keys, relatives)]
