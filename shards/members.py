"""Modalities and the members of a sample in a tar shard.

A split has one or more modalities (`sar`, `eo`), in order; the first is the *primary* one. A
sample is one WebDataset key with one member per modality plus the label:
`<key>.png` (primary, as in single-modality shards), `<key>.<modality>.png` for the others,
and `<key>.cls`. The key is the primary file's stem (`SAR_12`); its partners are the files of
the other modalities with the same id in the same folder (`EO_12.png`). In the index, the
primary member keeps the plain per-sample columns (`offset`, `size`, `crc32`, `height`,
`width`); another member's columns carry its modality as a prefix (`eo_offset`, ...).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shards.names import MODALITY_PREFIX

DEFAULT_MODALITIES = ("sar",)
# Per-sample columns of one member -> numpy dtype.
MEMBER_FIELDS = {"offset": np.int64, "size": np.int64, "crc32": np.uint32,
                 "height": np.int32, "width": np.int32}


def parse_modalities(value: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """`"sar,eo"` or `["sar", "eo"]` -> ("sar", "eo"); None stays None. ValueError when unknown."""
    if value is None:
        return None
    names = [m.strip().lower() for m in (value.split(",") if isinstance(value, str) else value)]
    unknown = [m for m in names if m not in MODALITY_PREFIX]
    if not names or unknown:
        raise ValueError(f"modalities must be a comma-separated list of {sorted(MODALITY_PREFIX)}, "
                         f"got {value!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"modality listed twice in {value!r}")
    return tuple(names)


def member_ext(modalities: Sequence[str], modality: str) -> str:
    """Extension of a modality's member in the tar: `png` for the primary, `eo.png` for eo."""
    return "png" if modality == modalities[0] else f"{modality}.png"


def column_name(modalities: Sequence[str], modality: str, name: str) -> str:
    """Index column of a member field: `offset` for the primary, `eo_offset` for eo."""
    return name if modality == modalities[0] else f"{modality}_{name}"
