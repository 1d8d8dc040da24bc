"""What a chip is made of: its pixel mode (8-bit grayscale or RGB), size and per-channel sums.

A split holds chips of one mode per modality: the mode comes from `--mode gray|rgb` or, with
`auto`, from the first chip (`detect_mode`). Every chip is then decoded once (`inspect_chip`)
and must have that mode; a chip of another mode is an error naming the file.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shards.errors import DataError

DEFAULT_SIZE_RANGE = (16, 256)
MODES = ("gray", "rgb", "auto")
CHANNELS = {"gray": 1, "rgb": 3}          # mode -> channel count
PIL_MODE = {"L": "gray", "RGB": "rgb"}    # the PIL modes accepted, and what they are
_WANT = {"gray": "8-bit grayscale", "rgb": "8-bit RGB"}


@dataclass(frozen=True)
class ExpectedMode:
    """The mode every chip of one modality must have, and why (for error messages)."""
    mode: str                  # gray | rgb
    why: str = ""              # e.g. "--mode rgb" or "the split's mode, from its first chip SAR_1.png"

    @property
    def channels(self) -> int:
        return CHANNELS[self.mode]


GRAY = ExpectedMode("gray")


@dataclass(frozen=True)
class ChipInfo:
    height: int
    width: int
    channels: int
    sums: list[int]            # per channel: sum of pixel values
    squares: list[int]         # per channel: sum of squared pixel values


def describe_mode(mode: str) -> str:
    """A PIL mode in words, for error messages."""
    if mode == "L":
        return "grayscale image (mode L)"
    if mode.startswith("I") or mode == "F":
        return "16-bit image"
    if mode == "1":
        return "1-bit image"
    return f"colour image (mode {mode})"


def check_mode(path: Path, mode: str, expected: ExpectedMode = GRAY) -> None:
    """DataError naming `path` unless the PIL `mode` is the expected one."""
    if PIL_MODE.get(mode) == expected.mode:
        return
    why = f" ({expected.why})" if expected.why else ""
    raise DataError(f"{path}: {describe_mode(mode)}, expected {_WANT[expected.mode]}{why}")


def detect_mode(path: Path) -> str:
    """gray or rgb, from the PNG header of `path`; DataError for anything else."""
    try:
        with Image.open(path) as im:
            fmt, mode = im.format, im.mode
    except OSError as e:
        raise DataError(f"{path}: cannot read as an image ({type(e).__name__}: {e})") from None
    if fmt != "PNG":
        raise DataError(f"{path}: not a PNG (found {fmt})")
    if mode not in PIL_MODE:
        raise DataError(f"{path}: {describe_mode(mode)}, expected 8-bit grayscale or 8-bit RGB")
    return PIL_MODE[mode]


def expected_mode(option: str, first: Path) -> ExpectedMode:
    """The mode of a modality: `option` (gray | rgb), or with auto that of its first chip."""
    if option == "auto":
        return ExpectedMode(detect_mode(first), f"the split's mode, from its first chip {first.name}")
    if option not in CHANNELS:
        raise ValueError(f"mode must be one of {MODES}, got {option!r}")
    expected = ExpectedMode(option, f"--mode {option}")
    try:
        with Image.open(first) as im:
            check_mode(first, im.mode, expected)
    except OSError:
        pass                   # unreadable: reported with the file's name when it is packed
    return expected


def inspect_chip(path: Path, data: bytes, size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
                 expected: ExpectedMode = GRAY) -> ChipInfo:
    """Validate one PNG (its bytes `data`, read from `path`) by decoding it completely."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise DataError(f"{path}: not a PNG (found {im.format})")
            check_mode(path, im.mode, expected)
            im.verify()  # walks every chunk and checks its CRC, including the pixel data
        with Image.open(io.BytesIO(data)) as im:
            pixels = np.asarray(im)  # full decode: catches truncated or corrupt streams
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        raise DataError(f"{path}: corrupt or truncated PNG ({type(e).__name__}: {e})") from None
    h, w = pixels.shape[:2]
    lo, hi = size_range
    if not (lo <= h <= hi and lo <= w <= hi):
        raise DataError(f"{path}: image size {h}x{w} (HxW) outside the accepted "
                        f"{lo}..{hi} px per side")
    flat = pixels.reshape(h * w, -1).astype(np.int64)
    return ChipInfo(h, w, flat.shape[1], [int(x) for x in flat.sum(axis=0)],
                    [int(x) for x in np.einsum("ij,ij->j", flat, flat)])


def inspect_png(path: Path, data: bytes,
                size_range: tuple[int, int] = DEFAULT_SIZE_RANGE) -> tuple[int, int, int, int]:
    """A grayscale chip: (height, width, sum of pixels, sum of squared pixels)."""
    info = inspect_chip(path, data, size_range, GRAY)
    return info.height, info.width, info.sums[0], info.squares[0]


def channel_stats(n: int, sums: list[int], squares: list[int]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of x/255 from exact integer sums over n pixels (order-free)."""
    if n == 0:
        return [0.0] * len(sums), [0.0] * len(sums)
    means = [s / n / 255 for s in sums]
    stds = [math.sqrt(max(sq * n - s * s, 0)) / n / 255 for s, sq in zip(sums, squares)]
    return means, stds
