"""The GPU augmentation waits for nothing: `augment.apply` (all of augment_batch but the
generator calls) traces whole with torch.compile(fullgraph=True), the CPU-checkable stand-in
for "no host sync" (nonzero(), boolean-mask indexing, .item() or data-dependent loops would
break the graph); the per-channel normalisation likewise. On CUDA, sync debug mode checks it
directly. The speckle sampler keeps its law: Gamma(L, 1/L)."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo

from datasets.augment import (FALLBACK_RATE, AugmentSpec, apply, augment_batch, draw, gamma_draws,
                              gamma_from_draws, gamma_noise, gamma_rounds)
from datasets.stream_spec import Normalizer

S = 24
STRONG = AugmentSpec(rotate="free", hflip=True, vflip=True, crop_scale=(0.6, 1.0), translate=3,
                     speckle=0.3, brightness=0.2, contrast=0.2)
RIGHT = AugmentSpec(rotate="right", hflip=True, speckle=5.0)   # L < 1: the boosted sampler


def batch(n: int = 6, channels: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("spec,channels,sar", [(STRONG, 1, (0, 1)), (RIGHT, 1, (0, 1)), (STRONG, 4, (0, 1)),
                                               (AugmentSpec(), 3, (0, 0))])
def test_apply_traces_as_one_graph_and_matches_eager(spec, channels, sar):
    x = batch(channels=channels)
    draws = draw(spec, tuple(x.shape), torch.Generator().manual_seed(0), sar)
    compiled = torch.compile(apply, fullgraph=True, backend="eager")   # raises on any graph break
    out = compiled(x, spec, draws, sar)
    assert torch.allclose(out, apply(x, spec, draws, sar), atol=1e-6)
    ref = augment_batch(x, spec, torch.Generator().manual_seed(0), sar)
    assert torch.equal(ref, apply(x, spec, draws, sar))               # augment_batch = apply ∘ draw


def test_a_data_dependent_branch_would_be_caught():
    """The check has teeth: the old right-angle rotation (a branch on `sel.any()`, boolean-mask
    indexing) breaks a fullgraph trace."""
    def old_rotate(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        for turns in (1, 2, 3):
            sel = k == turns
            if sel.any():
                x[sel] = torch.rot90(x[sel], turns, (-2, -1))
        return x

    with pytest.raises(Exception, match="(?i)data.dependent|graph break|unsupported"):
        torch.compile(old_rotate, fullgraph=True, backend="eager")(batch(), torch.tensor([0, 1, 2, 3, 1, 0]))


def test_speckle_only_on_its_channels():
    x = torch.full((4, 3, S, S), 100, dtype=torch.uint8)
    out = augment_batch(x, AugmentSpec(speckle=0.5), torch.Generator().manual_seed(0), (1, 2))
    assert torch.equal(out[:, [0, 2]], torch.full((4, 2, S, S), 100 / 255))
    assert out[:, 1].std() > 0.1


def test_per_channel_normalisation_traces_and_makes_its_tensors_once():
    norm = Normalizer((0.2, 0.4, 0.6), (0.1, 0.2, 0.3))
    x = torch.rand(2, 3, S, S)
    first = norm._per_channel(x)
    assert norm._per_channel(x)[0] is first[0]                       # cached, not rebuilt per batch
    out = torch.compile(lambda t: norm.from_unit(t.clone()), fullgraph=True, backend="eager")(x)
    expected = (x - torch.tensor([0.2, 0.4, 0.6])[:, None, None]) / torch.tensor([0.1, 0.2, 0.3])[:, None, None]
    assert torch.allclose(out, expected)
    assert norm == Normalizer((0.2, 0.4, 0.6), (0.1, 0.2, 0.3)) and hash(norm) == hash(Normalizer((0.2, 0.4, 0.6), (0.1, 0.2, 0.3)))


@pytest.mark.parametrize("shape_l", [1 / 25, 1.0, 1 / 0.3 ** 2])
def test_gamma_sampler_matches_torch_gamma(shape_l):
    """Two-sample Kolmogorov–Smirnov distance to torch's own Gamma(L, rate L) sampler (the law
    the old sampler drew from); 0.008 is above the 0.1% critical value (0.0062) at n = 200,000.
    Below 1e-30 both are compared as equal: float32 underflows there (U^(1/L) with L = 1/25, as
    the old sampler did too), and torch clamps its draws at the smallest normal float."""
    n = 200_000
    ours = gamma_noise((n,), shape_l, torch.Generator().manual_seed(0)).double().clamp_min(1e-30).sort().values
    torch.manual_seed(0)
    ref = torch.distributions.Gamma(torch.tensor(shape_l), torch.tensor(shape_l)).sample((n,)).double().clamp_min(1e-30).sort().values
    points = torch.cat([ours, ref])
    ks = (torch.searchsorted(ours, points, right=True) - torch.searchsorted(ref, points, right=True)).abs().max() / n
    assert ks < 0.008, ks
    assert ours.min() >= 0 and abs(ours.mean() - 1) < 5 / shape_l ** 0.5 / n ** 0.5


def test_gamma_takes_the_first_accepted_proposal_and_falls_back_without_one():
    shape_l = 4.0
    d = gamma_draws((5,), shape_l, torch.Generator().manual_seed(0))
    rounds = d["gamma_z"].shape[0]
    d["gamma_z"] = torch.zeros(rounds, 5)                               # v = 1: accepted if u < 1
    d["gamma_z"][1] = 0.5
    d["gamma_u"] = torch.full((rounds, 5), 0.5)
    d["gamma_u"][0, :2] = 1.0                                            # log 1 = 0: rejected (z = 0)
    d["gamma_u"][:, 4] = 1.0                                             # sample 4: no round accepts
    d["gamma_z"][rounds - 1, 4] = 0.3
    out = gamma_from_draws(d, shape_l)
    dd = shape_l - 1 / 3
    c = 1 / (9 * dd) ** 0.5
    assert torch.allclose(out[2:4], torch.full((2,), dd / shape_l))     # round 0, v = 1
    assert torch.allclose(out[:2], torch.full((2,), (1 + c * 0.5) ** 3 * dd / shape_l))   # round 1
    assert torch.allclose(out[4], torch.tensor((1 + c * 0.3) ** 3 * dd / shape_l))       # the last


@pytest.mark.parametrize("speckle", [0.2, 0.3, 1.0, 5.0])
def test_rounds_leave_fewer_fallbacks_than_promised(speckle):
    """The rejection bound behind gamma_rounds, measured: no-acceptance rate < FALLBACK_RATE."""
    import math

    shape_l = 1 / speckle ** 2
    alpha = shape_l + 1 if shape_l < 1 else shape_l
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1_000_000, dtype=torch.float64, generator=g)
    u = torch.rand(1_000_000, dtype=torch.float64, generator=g)
    dd, c = alpha - 1 / 3, 1 / math.sqrt(9 * (alpha - 1 / 3))
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u) < 0.5 * z * z + dd - dd * v + dd * torch.log(v.clamp_min(1e-300)))
    rejected = 1 - ok.double().mean().item()
    assert rejected < 0.05 / alpha
    assert rejected ** gamma_rounds(shape_l) < FALLBACK_RATE
    assert gamma_rounds(shape_l) == {0.2: 3, 0.3: 3, 1.0: 5, 5.0: 5}[speckle]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_augment_batch_on_cuda_never_syncs():
    x = batch(64).cuda()
    norm = Normalizer((0.3, 0.5), (0.2, 0.1))
    x2 = torch.cat([x, x], 1)
    for spec in (STRONG, RIGHT):
        gen = torch.Generator("cuda").manual_seed(0)
        norm.from_unit(augment_batch(x2, spec, gen, (0, 1)))             # warm-up: caches, kernels
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            norm.from_unit(augment_batch(x2, spec, torch.Generator("cuda").manual_seed(1), (0, 1)))
        finally:
            torch.cuda.set_sync_debug_mode("default")
