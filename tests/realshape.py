"""A small SAR set shaped as public real SAR sets ship (written with PIL/numpy, nothing renamed):
named class folders, serial-number sub-folders in some classes, original file names that repeat
across classes, chips of 128–193 px whose size differs by class, and a flat test folder of the
same kind of files with a CSV `file,class` of class names.

Each class shows a bright target of its own shape at the chip centre over speckle, so that a
centre crop of 56 px keeps the label and chip size alone would also predict it (as in real
sets, where resizing would leak it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# class -> (chip side, sub-folders or None, target half-height, half-width)
CLASSES = {
    "2S1": (158, None, 4, 14),
    "BMP2": (128, ("SN_9563", "SN_9566"), 14, 4),
    "T72": (193, ("SN_132",), 9, 9),
    "ZSU_23_4": (171, None, 3, 3),
}
FORMATS = {"jpeg": ("JPEG", ".jpeg"), "png": ("PNG", ".png"), "bmp": ("BMP", ".bmp"),
           "tiff16": ("TIFF", ".tif"), "float": ("TIFF", ".tiff")}


def chip(name: str, rng: np.random.Generator, kind: str = "jpeg") -> np.ndarray:
    """One chip of class `name` as the format `kind` stores it (uint8, uint16 or float32)."""
    side, _, hh, hw = CLASSES[name]
    amp = rng.gamma(2.0, 0.05, size=(side, side))          # speckled clutter, amplitude
    c = side // 2 + rng.integers(-2, 3, size=2)
    amp[c[0] - hh:c[0] + hh, c[1] - hw:c[1] + hw] += rng.gamma(4.0, 0.15, size=(2 * hh, 2 * hw))
    if kind == "float":
        return amp.astype(np.float32)
    if kind == "tiff16":
        return np.clip(amp * 4000, 0, 65535).astype(np.uint16)
    return np.clip(amp * 255, 0, 255).astype(np.uint8)


def save(path: Path, pixels: np.ndarray, kind: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS[kind][0]
    Image.fromarray(pixels).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def write_train(root: Path, per_class: int = 8, kind: str = "jpeg", seed: int = 0,
                classes: tuple[str, ...] = tuple(CLASSES)) -> Path:
    """root/<class>[/<serial>]/HB<n><ext>; names restart in each class, so they repeat."""
    rng = np.random.default_rng(seed)
    ext = FORMATS[kind][1]
    for name in classes:
        subs = CLASSES[name][1] or ("",)
        for i in range(per_class):
            folder = root / name / subs[i % len(subs)]
            save(folder / f"HB{19377 + i}{ext}", chip(name, rng, kind), kind)
    return root


def write_flat_test(folder: Path, csv: Path, per_class: int = 3, kind: str = "jpeg",
                    seed: int = 1) -> dict[str, str]:
    """A flat folder of chips with their original-style names, and a CSV `file,class` of class
    names; returns {file name: class name}."""
    rng = np.random.default_rng(seed)
    ext = FORMATS[kind][1]
    labels = {}
    for k, name in enumerate(CLASSES):
        for i in range(per_class):
            file = f"HB{k}{i:04d}{ext}"
            save(folder / file, chip(name, rng, kind), kind)
            labels[file] = name
    csv.write_text("file,class\n" + "".join(f"{f},{c}\n" for f, c in labels.items()))
    return labels
