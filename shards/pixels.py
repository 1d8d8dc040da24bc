"""What a chip is made of: format, pixel mode and depth, size, and per-channel sums.

A split holds chips of one mode per modality: 8-bit RGB, or single-channel grayscale of one
depth (8-bit, 16-bit or float32). The mode comes from `--mode gray|rgb` or, with `auto`, from
the first chip (`detect_mode`); the depth always from the first chip. Every chip is read the same
way (`read_chip`): its header first (format matching the extension, one frame, size within the
accepted range, before any pixel is decoded), then one full decode, then the recorded intensity
mapping and size policy (`shards/chips.py`) to the stored 8-bit chip. `trainer predict` calls
the same function, so it is as strict as the build and sees the same pixels.
"""
from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shards.chips import ChipSpec, fit_size, png_bytes, to_uint8
from shards.errors import DataError
from shards.names import IMAGE_FORMATS, expected_format

DEFAULT_SIZE_RANGE = (16, 256)
MODES = ("gray", "rgb", "auto")
CHANNELS = {"gray": 1, "rgb": 3}          # mode -> channel count
# The PIL modes accepted -> (mode, depth).
PIL_MODE = {"L": ("gray", "8-bit"), "RGB": ("rgb", "8-bit"), "I;16": ("gray", "16-bit"),
            "I;16B": ("gray", "16-bit"), "I;16L": ("gray", "16-bit"), "I": ("gray", "16-bit"),
            "F": ("gray", "float32")}
FORMATS = sorted(set(IMAGE_FORMATS.values()))


@dataclass(frozen=True)
class ExpectedMode:
    """The mode (and depth) every chip of one modality must have, and why (for messages)."""
    mode: str                  # gray | rgb
    why: str = ""              # e.g. "--mode rgb" or "the split's mode, from its first chip SAR_1.png"
    depth: str = "8-bit"       # 8-bit | 16-bit | float32 (rgb: 8-bit only)

    @property
    def channels(self) -> int:
        return CHANNELS[self.mode]

    def describe(self) -> str:
        return f"{self.depth} grayscale" if self.mode == "gray" else "8-bit RGB"


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
    if mode.startswith("I"):
        return "16-bit image" if mode.startswith("I;16") or mode == "I" else f"integer image (mode {mode})"
    if mode == "F":
        return "float32 image"
    if mode == "1":
        return "1-bit image"
    return f"colour image (mode {mode})"


def check_mode(path: Path, mode: str, expected: ExpectedMode = GRAY) -> None:
    """DataError naming `path` unless the PIL `mode` is the expected mode and depth."""
    if PIL_MODE.get(mode) == (expected.mode, expected.depth):
        return
    why = f" ({expected.why})" if expected.why else ""
    raise DataError(f"{path}: {describe_mode(mode)}, expected {expected.describe()}{why}")


def open_header(path: Path, data: bytes | None = None) -> Image.Image:
    """The image at `path` (or its bytes), header read, nothing decoded; DataError unless it is
    one frame of the format its extension names."""
    want = expected_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data) if data is not None else path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read as an image ({type(e).__name__}: {e})") from None
    if want is None:
        raise DataError(f"{path}: not an image file (extension not one of "
                        f"{', '.join(sorted(IMAGE_FORMATS))})")
    if im.format != want:
        raise DataError(f"{path}: not a {want} (found {im.format})")
    if getattr(im, "n_frames", 1) != 1:
        raise DataError(f"{path}: {im.n_frames} frames; expected one image per file")
    return im


def detect_mode(path: Path) -> tuple[str, str]:
    """(gray or rgb, depth), from the header of `path`; DataError for anything else."""
    with open_header(path) as im:
        mode = im.mode
    if mode not in PIL_MODE:
        raise DataError(f"{path}: {describe_mode(mode)}, expected 8-bit grayscale or 8-bit RGB "
                        "(or 16-bit or float32 grayscale)")
    return PIL_MODE[mode]


def expected_mode(option: str, first: Path) -> ExpectedMode:
    """The mode of a modality: `option` (gray | rgb), or with auto that of its first chip; the
    depth is the first chip's."""
    if option not in (*CHANNELS, "auto"):
        raise ValueError(f"mode must be one of {MODES}, got {option!r}")
    try:
        mode, depth = detect_mode(first)
    except DataError:
        if option == "auto":
            raise
        return ExpectedMode(option, f"--mode {option}")  # reported by name when it is packed
    if option == "auto":
        return ExpectedMode(mode, f"the split's mode, from its first chip {first.name}", depth)
    expected = ExpectedMode(option, f"--mode {option}", depth if option == "gray" else "8-bit")
    with open_header(first) as im:
        check_mode(first, im.mode, expected)
    return expected


def decode(path: Path, data: bytes, size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
           expected: ExpectedMode = GRAY) -> np.ndarray:
    """The pixels of one image file (its bytes `data`): header checks, then one full decode."""
    im = open_header(path, data)
    fmt = im.format
    check_mode(path, im.mode, expected)
    w, h = im.size
    lo, hi = size_range
    if not (lo <= h <= hi and lo <= w <= hi):
        raise DataError(f"{path}: image size {h}x{w} (HxW) outside the accepted "
                        f"{lo}..{hi} px per side")
    try:
        if fmt == "PNG":
            im.verify()  # walks every chunk and checks its CRC, including the pixel data
            im = Image.open(io.BytesIO(data))
        with im:
            pixels = np.asarray(im)  # full decode: catches truncated or corrupt streams
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib errors...
        raise DataError(f"{path}: corrupt or truncated {fmt} ({type(e).__name__}: {e})") from None
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise DataError(f"{path}: {int((~np.isfinite(pixels)).sum())} non-finite pixel values")
    return pixels


def read_chip(path: Path, data: bytes, size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
              expected: ExpectedMode = GRAY, spec: ChipSpec = ChipSpec()) -> np.ndarray:
    """The stored chip of one image file: uint8 [H,W] (gray) or [H,W,3] (rgb)."""
    pixels = decode(path, data, size_range, expected)
    mapping = spec.mapping(expected.depth)
    try:
        chip = to_uint8(pixels, expected.depth, mapping)
    except ValueError as e:
        raise DataError(f"{path}: {e} (intensity {spec.intensity} -> {mapping})") from None
    return fit_size(chip, spec.size_policy, spec.chip_size)


def chip_bytes(path: Path, data: bytes, size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
               expected: ExpectedMode = GRAY, spec: ChipSpec = ChipSpec()) -> tuple[bytes, ChipInfo]:
    """The PNG to store for one image file, and its info. An 8-bit PNG that needs no change is
    stored as it is (byte for byte); anything else is re-encoded after the mapping."""
    chip = read_chip(path, data, size_range, expected, spec)
    unchanged = (expected_format(path) == "PNG" and expected.depth == "8-bit"
                 and spec.mapping("8-bit") == "linear" and spec.chip_size is None)
    return (data if unchanged else png_bytes(chip)), chip_info(chip)


def chip_info(chip: np.ndarray) -> ChipInfo:
    h, w = chip.shape[:2]
    flat = chip.reshape(h * w, -1).astype(np.int64)
    return ChipInfo(h, w, flat.shape[1], [int(x) for x in flat.sum(axis=0)],
                    [int(x) for x in np.einsum("ij,ij->j", flat, flat)])


def inspect_chip(path: Path, data: bytes, size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
                 expected: ExpectedMode = GRAY) -> ChipInfo:
    """Validate one 8-bit image (its bytes `data`, read from `path`) by decoding it completely."""
    return chip_info(read_chip(path, data, size_range, expected))


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
