"""The NTIRE 2021 SAR track: class names, training counts and the raw folder layout."""
from __future__ import annotations

from os import PathLike

from shards.errors import DataError
from shards.names import ntire_id

CLASS_NAMES: tuple[str, ...] = (
    "sedan", "SUV", "pickup truck", "van", "box truck", "motorcycle",
    "flatbed truck", "bus", "pickup truck with trailer", "semi truck with trailer",
)
NTIRE_TRAIN_COUNTS: tuple[int, ...] = (234209, 28089, 15301, 10655, 1741, 852, 828, 624, 840, 633)
NTIRE_TEST_PER_CLASS = 77          # the dev set: 770 = 10 x 77 chips (believed balanced)

# Raw layout: TRAIN_IMAGES/<class>/SAR_<id>.png, TEST_IMAGES/SAR_<id>.png, TEST_LABELS beside them.
# The optical twin of a chip, where there is one, is EO_<id>.png in the same folder.
TRAIN_IMAGES = "train_images"
TEST_IMAGES = "test_images"
TEST_LABELS = "test_labels.csv"    # header `image_id,class_id` (also the results.csv format)
CHIP_SIDE_RANGE = (54, 60)         # min/max chip side in px, inclusive
# Out-of-distribution chips (vehicles of no class), flat: OOD_IMAGES/SAR_<id>.png; OOD_LIST
# names their ids, one per line (there are no labels).
OOD_IMAGES = "ood_images"
OOD_LIST = "ood_ids.txt"

def is_sar_chip(name: str | PathLike[str]) -> bool:
    """True for `SAR_<digits>.png` (EO chips and anything else are not SAR chips)."""
    return ntire_id(name, "sar") is not None


def image_id(path_or_name: str | PathLike[str]) -> int:
    """The number in `SAR_<id>.png`, as used in results.csv."""
    ident = ntire_id(path_or_name, "sar")
    if ident is None:
        raise DataError(f"{path_or_name}: not a SAR chip name, expected SAR_<id>.png")
    return ident


def is_eo_chip(name: str | PathLike[str]) -> bool:
    """True for `EO_<digits>.png`, the optical twin of `SAR_<digits>.png`."""
    return ntire_id(name, "eo") is not None


def chip_id(path_or_name: str | PathLike[str]) -> int:
    """The number in `SAR_<id>.png` or `EO_<id>.png` (a SAR chip and its twin share it)."""
    ident = ntire_id(path_or_name, "sar")
    ident = ntire_id(path_or_name, "eo") if ident is None else ident
    if ident is None:
        raise DataError(f"{path_or_name}: not a chip name, expected SAR_<id>.png or EO_<id>.png")
    return ident
