"""Chips straight from raw image folders (`SAR_<id>.png`, `EO_<id>.png`), as `predict` reads a
challenge's test set: paired by id across modalities and decoded exactly as the shards' chips
are (datasets/decode.py), so a prediction sees the pixels the evaluation saw."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from datasets.decode import chip_into, decode_png
from shards.errors import DataError

PREFIX = {"sar": "SAR", "eo": "EO"}


def list_chips(folders: dict[str, Path]) -> list[tuple[int, dict[str, Path]]]:
    """(id, {modality: file}) for every id of the first modality's folder, in id order; each
    other modality must have the same id in its folder (DataError naming the id otherwise)."""
    found = {}
    for m, folder in folders.items():
        if not folder.is_dir():
            raise DataError(f"{folder}: not a folder of {PREFIX[m]}_<id>.png images")
        pattern = re.compile(rf"^{PREFIX[m]}_(\d+)\.png$")
        found[m] = {int(x.group(1)): p for p in folder.iterdir() if (x := pattern.match(p.name))}
    primary, *others = folders
    if not found[primary]:
        raise DataError(f"{folders[primary]}: no {PREFIX[primary]}_<id>.png images")
    for m in others:
        missing = sorted(set(found[primary]) - set(found[m]))
        if missing:
            raise DataError(f"{folders[m]}: no {PREFIX[m]}_{missing[0]}.png for {PREFIX[primary]}_{missing[0]}.png "
                            f"({len(missing)} ids without an {m} partner)")
    return [(i, {m: found[m][i] for m in folders}) for i in sorted(found[primary])]


def load_chips(files: list[dict[str, Path]], size: int, channels: list[int]) -> torch.Tensor:
    """uint8 [B,C,S,S] of samples given as {modality: file} (modalities in the model's order)."""
    out = np.empty((len(files), sum(channels), size, size), dtype=np.uint8)
    windows: dict = {}
    for k, sample in enumerate(files):
        members = []
        for (m, path), c in zip(sample.items(), channels):
            try:
                img = decode_png(torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)).numpy()
            except RuntimeError as e:
                raise DataError(f"{path}: not a readable PNG ({str(e).splitlines()[0]})") from None
            if img.shape[0] != c:
                raise DataError(f"{path}: {img.shape[0]} channel(s), the model takes {c} for {m}")
            members.append(img)
        chip_into(out[k], members, size, windows)
    return torch.from_numpy(out)
