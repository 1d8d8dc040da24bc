"""The augmentation spec: exact discrete ops, parameter ranges, fill, noise statistics, errors."""
from __future__ import annotations

import pytest
import torch

from datasets.augment import AugmentSpec, augment, augment_batch, border_median, to_input

S = 56


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_batch(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, S, S), dtype=torch.uint8, generator=gen(seed))


def ramp(n: int, axis: int) -> torch.Tensor:
    """value = 4·column (axis=-1) or 4·row (axis=-2): bilinear warps of it stay exactly linear."""
    pos = torch.arange(S, dtype=torch.uint8) * 4
    img = pos[None, :].expand(S, S) if axis == -1 else pos[:, None].expand(S, S)
    return img.reshape(1, 1, S, S).repeat(n, 1, 1, 1).contiguous()


def test_to_input_centre_crops_and_edge_pads():
    big = torch.arange(60 * 60, dtype=torch.int32).reshape(1, 60, 60).to(torch.uint8)
    assert torch.equal(to_input(big, S), big[:, 2:58, 2:58])
    small = torch.randint(0, 256, (1, 54, 55), dtype=torch.uint8)
    out = to_input(small, S)
    assert out.shape == (1, S, S)
    assert torch.equal(out[:, 1:55, 1:56], small)          # 1 px top/bottom, 1 px left only (floor)
    assert torch.equal(out[:, 0, 1:], small[:, 0]) and torch.equal(out[:, 55, 1:], small[:, 53])
    assert torch.equal(out[:, 1:55, 0], small[:, :, 0])    # replicated edge, no black border
    same = torch.randint(0, 256, (1, S, S), dtype=torch.uint8)
    assert to_input(same, S) is same


def test_identity_spec_equals_to_input():
    img = torch.randint(0, 256, (1, 58, 54), dtype=torch.uint8)
    out = augment(img, AugmentSpec(), S, gen())
    assert out.dtype == torch.float32 and out.shape == (1, S, S)
    assert torch.equal(out, to_input(img, S).float() / 255)


def test_flips_are_exact_and_both_outcomes_occur():
    x = random_batch()
    out = (augment_batch(x, AugmentSpec(hflip=True), gen()) * 255).round().to(torch.uint8)
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same | flipped) and same.any() and flipped.any()
    out = (augment_batch(x, AugmentSpec(vflip=True), gen()) * 255).round().to(torch.uint8)
    flipped = (out == x.flip(-2)).flatten(1).all(1)
    assert torch.all((out == x).flatten(1).all(1) | flipped) and flipped.any()


def test_right_angle_rotation_is_exact_and_uses_all_four():
    x = random_batch()
    out = (augment_batch(x, AugmentSpec(rotate="right"), gen()) * 255).round().to(torch.uint8)
    which = torch.stack([(out == torch.rot90(x, k, (-2, -1))).flatten(1).all(1) for k in range(4)], 1)
    assert torch.all(which.sum(1) == 1)
    assert torch.all(which.any(0))


def test_crop_scale_stays_in_range():
    lo, hi = 0.5, 0.9
    out = augment_batch(ramp(200, -1), AugmentSpec(crop_scale=(lo, hi)), gen()) * 255
    slope = (out[..., 1:] - out[..., :-1]).mean(dim=(1, 2, 3)) / 4   # = side fraction √a
    area = slope ** 2
    assert area.min() >= lo - 1e-3 and area.max() <= hi + 1e-3
    assert area.min() < lo + 0.05 and area.max() > hi - 0.05           # the range is used


@pytest.mark.parametrize("axis", [-1, -2])
def test_translate_is_integer_and_bounded(axis):
    x = ramp(100, axis)
    out = augment_batch(x, AugmentSpec(translate=3), gen()) * 255
    inner = (out - x.float())[..., 8:-8, 8:-8] / -4                     # = shift along `axis`
    shift = inner.mean(dim=(1, 2, 3))
    assert torch.allclose(inner, shift[:, None, None, None].expand_as(inner), atol=1e-3)
    assert torch.allclose(shift, shift.round(), atol=1e-3)
    assert set(shift.round().int().tolist()) == set(range(-3, 4))


def test_free_rotation_fills_corners_with_border_median():
    base = torch.full((32, 1, S, S), 180, dtype=torch.uint8)
    base[:, :, 20:36, 10:46] = 250                                      # a bright "vehicle"
    out = augment_batch(base, AugmentSpec(rotate="free"), gen())
    assert out.min() >= 179.5 / 255                                     # no black wedges
    changed = (out * 255 - base.float()).abs().flatten(1).amax(1) > 10
    assert changed.float().mean() > 0.8                                 # it does rotate
    assert torch.equal(border_median(base), torch.full((32,), 180, dtype=torch.uint8))


def test_speckle_has_mean_one_and_requested_std():
    x = torch.full((16, 1, S, S), 80, dtype=torch.uint8)
    out = augment_batch(x, AugmentSpec(speckle=0.3), gen())
    g = out * 255 / 80
    assert abs(g.mean().item() - 1.0) < 0.01
    assert abs(g.std().item() - 0.3) < 0.01


def test_brightness_and_contrast_ranges():
    x = torch.full((200, 1, S, S), 100, dtype=torch.uint8)
    factor = (augment_batch(x, AugmentSpec(brightness=0.2), gen()) * 255 / 100)[:, 0, 0, 0]
    assert factor.min() >= 0.8 - 1e-5 and factor.max() <= 1.2 + 1e-5
    assert factor.min() < 0.82 and factor.max() > 1.18
    y = random_batch(50) // 2 + 60                                      # no clamping
    out = augment_batch(y, AugmentSpec(contrast=0.3), gen())
    before = y.float() / 255
    assert torch.allclose(out.mean(dim=(1, 2, 3)), before.mean(dim=(1, 2, 3)), atol=1e-5)
    k = out.std(dim=(1, 2, 3)) / before.std(dim=(1, 2, 3))
    assert k.min() >= 0.7 - 1e-4 and k.max() <= 1.3 + 1e-4


def test_strong_spec_is_deterministic_and_in_range():
    spec = AugmentSpec(rotate="free", hflip=True, vflip=True, crop_scale=(0.6, 1.0), translate=4,
                       speckle=0.3, brightness=0.2, contrast=0.2)
    x = random_batch(8)
    a, b = augment_batch(x, spec, gen(5)), augment_batch(x, spec, gen(5))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.equal(a, augment_batch(x, spec, gen(6)))


def test_from_dict_and_validation():
    spec = AugmentSpec.from_dict({"rotate": "right", "crop_scale": [0.5, 1], "translate": 2})
    assert spec.crop_scale == (0.5, 1.0) and spec.rotate == "right"
    assert AugmentSpec.from_dict(None) == AugmentSpec()
    with pytest.raises(ValueError, match=r"unknown key.*'rotation'.*valid keys.*'rotate'"):
        AugmentSpec.from_dict({"rotation": "free"})
    with pytest.raises(ValueError, match="rotate must be one of"):
        AugmentSpec(rotate="diagonal")
    with pytest.raises(ValueError, match="crop_scale"):
        AugmentSpec(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="translate"):
        AugmentSpec(translate=-1)
    with pytest.raises(ValueError, match="speckle"):
        AugmentSpec(speckle=-0.1)
