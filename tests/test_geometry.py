"""The radar's range axis, read off the chips, and the mirrors that keep it."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.geometry import asymmetry, range_axis, safe_flips
from datasets.stream_spec import StreamSpec, open_split
from datasets.synthetic import make_synthetic
from shards.build import build_shards


@pytest.mark.parametrize("look, axis", [("left", "horizontal"), ("top", "vertical"), ("right", "horizontal")])
def test_range_axis_of_synthetic_radar_chips(tmp_path, look, axis):
    raw = tmp_path / "raw"
    make_synthetic(raw, "mini", seed=0, look=look, counts=(30,) * 10, test_per_class=0)
    build_shards(raw / "train_images", tmp_path / "shards", val_fraction=0.1, seed=0, workers=1, quiet=True)
    data = open_split(tmp_path / "shards", "train", StreamSpec.sequential(8, 56))
    found, (lr, tb) = range_axis(data, 56)
    assert found == axis, (lr, tb)
    keep = safe_flips(found)
    assert keep == ((False, True) if axis == "horizontal" else (True, False))


def test_asymmetry_of_a_symmetric_and_a_shadowed_mean_chip():
    rng = np.random.default_rng(0)
    chips = rng.integers(90, 110, size=(50, 1, 16, 16)).astype(np.uint8)
    chips[:, :, 6:10, 6:10] = 250                   # a bright target in the middle
    lr, tb = asymmetry(chips)
    assert lr < 0.2 and tb < 0.2
    chips[:, :, 6:10, 10:15] = 10                   # its shadow, to the right of it
    lr, tb = asymmetry(chips)
    assert lr > 2 * tb
