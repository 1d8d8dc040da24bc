"""Vehicle models for the synthetic SAR chips: one top-down shape function per class.

A model is a list of segments (extent along the vehicle, width, height, roof gain, material:
hood, cab, bed, box, trailer) plus point scatterers (corners, rims, wheels, roof gear). Lengths
are metres measured back from the nose; the renderer (`datasets.synth_render`) centres the
vehicle. Dimensions are drawn per instance, so the size-based classes overlap. The material
(`MATERIALS`) only colours the optical twin; the radar ignores it.
`ood_model` gives vehicle-like shapes of no class (tracked vehicle, farm tractor, boat on a
trailer) for out-of-distribution chips.
"""
from __future__ import annotations

import numpy as np

# Segment materials (column 5 of a model's segments), for the colours of the optical twin.
BODY, GLASS, TYRE, CARGO, HULL, DARK, DECK, ARMOUR = range(8)
MATERIALS = ("body", "glass", "tyre", "cargo", "hull", "dark", "deck", "armour")
OOD_KINDS = ("tracked", "tractor", "boat_trailer")


class _Parts:
    """Collects segments and point scatterers; point amplitudes get one exponential draw each
    (Swerling-like fluctuation) when the model is finished."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.segs: list[tuple[float, ...]] = []   # a, b, half width, height, gain, material
        self.pts: list[tuple[np.ndarray, np.ndarray, float, np.ndarray | float]] = []  # d, v, z, mean amp

    def seg(self, a: float, b: float, width: float, height: float, gain: float,
            material: int = BODY) -> None:
        self.segs.append((a, b, width / 2, height, gain, material))

    def point(self, d, v, z, amp) -> None:
        """Scatterers at distances d from the nose, offsets v from the axis, height z (d and v
        broadcast against each other; z and amp are scalars or match them)."""
        d, v = np.asarray(d, float).ravel(), np.asarray(v, float).ravel()
        n = max(d.size, v.size) if d.size and v.size else 0
        self.pts.append((d if d.size == n else np.repeat(d, n), v if v.size == n else np.repeat(v, n), z, amp))

    def rim(self, a: float, b: float, width: float, z: float, step: float, amp: float,
            ends: bool = True) -> None:
        """Line scatterers along the long edges (and optionally the ends) of a segment, plus
        four strong corners."""
        rng, hw = self.rng, width / 2
        d = np.arange(a + rng.uniform(0, step), b, step)
        ds, vs = [d, d, [a, a, b, b]], [np.full(d.size, -hw), np.full(d.size, hw), [-hw, hw, -hw, hw]]
        if ends:
            v = np.arange(-hw + rng.uniform(0, step), hw, step)
            ds += [np.full(v.size, a), np.full(v.size, b)]
            vs += [v, v]
        amps = np.full(sum(len(x) for x in ds), amp)
        amps[2 * d.size:2 * d.size + 4] = 4 * amp      # the corners
        self.point(np.concatenate(ds), np.concatenate(vs), z, amps)

    def axle(self, d: float, width: float, amp: float, dual: bool = False) -> None:
        d = [d, d, d + 0.5, d + 0.5] if dual else [d, d]
        self.point(d, [-width / 2, width / 2] * (len(d) // 2), 0.4, amp)

    def cross_lines(self, a: float, b: float, width: float, z: float, step: float, amp: float) -> None:
        """Regular cross members (flat decks) or roof ribs: rows of points across the width."""
        d, v = np.meshgrid(np.arange(a + step / 2, b, step),
                           np.linspace(-width / 2, width / 2, max(2, int(width / 0.6))))
        self.point(d, v, z, amp)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, float]:
        """segments [n, 6]: a, b, half width, height, gain, material; points [m, 4]: d, v, z, amp;
        length."""
        rng = self.rng
        segs = np.array(self.segs, float)
        a, b, hw, z = segs[:, :4].T               # scattered glints on every roof (vents, seams, cargo)
        which = np.repeat(np.arange(len(segs)), rng.poisson(0.6 * (b - a) * hw))
        t, s = rng.random((2, which.size))
        self.pts.append((a[which] + t * (b - a)[which], (2 * s - 1) * hw[which], z[which], 8.0))
        sizes = [d.size for d, *_ in self.pts]
        pts = np.empty((sum(sizes), 4))
        pts[:, 0] = np.concatenate([p[0] for p in self.pts])
        pts[:, 1] = np.concatenate([p[1] for p in self.pts])
        for k in (2, 3):                           # scalars repeated, arrays copied in place
            pts[:, k] = np.repeat([p[k] if np.isscalar(p[k]) else 0.0 for p in self.pts], sizes)
            start = 0
            for p, n in zip(self.pts, sizes):
                if not np.isscalar(p[k]):
                    pts[start:start + n, k] = p[k]
                start += n
        pts[:, 3] *= rng.standard_exponential(pts.shape[0])
        return segs, pts, float(segs[:, 1].max())


def _n(rng: np.random.Generator, mean: float, sd: float, lo: float, hi: float) -> float:
    """A clipped normal draw: per-instance dimensions."""
    return min(max(rng.normal(mean, sd), lo), hi)


def _car(p: _Parts, length: float, width: float, hood: float, cab_end: float, cab_h: float,
         rear_h: float | None) -> None:
    """A passenger-car-like body: hood, cabin and an optional lower rear (trunk)."""
    rng = p.rng
    p.seg(0, hood, width, 0.62 * cab_h, 1.5)
    p.seg(hood, cab_end, width, cab_h, 2.5)
    p.rim(hood, cab_end, width * 0.9, cab_h, 0.7, 2.0)
    if rear_h is not None:
        p.seg(cab_end, length, width, rear_h, 1.5)
    p.rim(0, length, width, 0.8, 0.8, 1.5, ends=True)
    p.axle(0.85 + rng.normal(0, 0.08), width, 25)
    p.axle(length - 1.0 + rng.normal(0, 0.1), width, 25)


def _sedan(p: _Parts) -> None:
    r = p.rng
    L, W = _n(r, 4.75, 0.3, 4.0, 5.4), _n(r, 1.82, 0.06, 1.65, 1.95)
    _car(p, L, W, 1.2 + r.normal(0, 0.1), L * r.uniform(0.68, 0.76), _n(r, 1.45, 0.05, 1.35, 1.55), 1.05)


def _suv(p: _Parts) -> None:
    r = p.rng
    L, W = _n(r, 4.85, 0.3, 4.2, 5.6), _n(r, 1.92, 0.06, 1.75, 2.05)
    _car(p, L, W, 1.1 + r.normal(0, 0.1), L - 0.1, _n(r, 1.75, 0.08, 1.6, 1.95), None)
    if r.random() < 0.4:                                # roof rack
        p.cross_lines(1.6, L - 0.3, W * 0.7, 1.8, 1.2, 1.0)


def _pickup_body(p: _Parts) -> float:
    r = p.rng
    L, W = _n(r, 5.6, 0.35, 4.9, 6.4), _n(r, 1.98, 0.06, 1.8, 2.1)
    hood = 1.35 + r.normal(0, 0.1)
    cab_end = hood + r.choice([1.7, 2.5]) + r.normal(0, 0.1)   # regular or crew cab
    p.seg(0, hood, W, 1.2, 1.5)
    p.seg(hood, cab_end, W, _n(r, 1.85, 0.06, 1.7, 2.0), 2.5)
    p.rim(hood, cab_end, W * 0.9, 1.85, 0.7, 2.0)
    p.seg(cab_end + 0.1, L, W, 1.0, 0.4, DARK)      # open bed: dark floor, bright walls
    p.rim(cab_end + 0.1, L, W, 1.0, 0.5, 3.0)
    p.axle(1.0, W, 25)
    p.axle(L - 1.3, W, 25)
    return L


def _pickup(p: _Parts) -> None:
    _pickup_body(p)


def _van(p: _Parts) -> None:
    r = p.rng
    cargo = r.random() < 0.55
    L = _n(r, 5.9, 0.4, 5.2, 7.0) if cargo else _n(r, 5.1, 0.2, 4.7, 5.5)
    W = _n(r, 2.02, 0.06, 1.9, 2.15)
    H = _n(r, 2.5, 0.2, 2.1, 2.9) if cargo else _n(r, 1.8, 0.06, 1.65, 1.95)
    hood = 0.9 + r.normal(0, 0.1)
    p.seg(0, hood, W, 1.1, 1.5)
    p.seg(hood, L, W, H, 3.0)
    p.rim(hood, L, W, H, 0.6, 2.5)
    p.axle(0.8, W, 25)
    p.axle(L - 1.2, W, 25)


def _box_truck(p: _Parts) -> None:
    r = p.rng
    cab, W = 2.0 + r.normal(0, 0.15), _n(r, 2.35, 0.08, 2.2, 2.5)
    box0, box1 = cab + r.uniform(0.1, 0.3), cab + 0.2 + _n(r, 5.0, 0.8, 3.5, 7.3)
    H = _n(r, 3.3, 0.2, 2.9, 3.7)
    p.seg(0, cab, W * 0.95, 2.6, 2.5)
    p.rim(0.5, cab, W * 0.9, 2.6, 0.7, 2.0)
    p.seg(box0, box1, W, H, 3.5, CARGO)
    p.rim(box0, box1, W, H, 0.6, 3.0)
    p.axle(1.1, W, 30)
    p.axle(box1 - 1.6, W, 35, dual=r.random() < 0.5)


def _motorcycle(p: _Parts) -> None:
    r = p.rng
    L, W = _n(r, 2.15, 0.15, 1.8, 2.5), _n(r, 0.8, 0.08, 0.6, 1.0)
    p.seg(0, L, W, 1.1, 3.0)
    p.point([0.3, L - 0.3], 0, 0.35, 30)                              # wheels
    p.point(L * 0.45, [-0.25, 0.25], 0.6, 25)                         # engine block
    if r.random() < 0.7:                                                # rider
        p.point(L * 0.55, 0, 1.5, 30)


def _cab(p: _Parts, W: float, sleeper: bool = False) -> float:
    r = p.rng
    cab = (3.6 if sleeper else 2.4) + r.normal(0, 0.15)
    p.seg(0, cab, W, _n(r, 3.2 if sleeper else 2.7, 0.15, 2.4, 3.8), 3.0)
    p.rim(0.6, cab, W * 0.95, 2.8, 0.6, 2.5)
    p.axle(1.2, W, 35)
    return cab


def _flatbed(p: _Parts) -> None:
    r = p.rng
    W = _n(r, 2.45, 0.06, 2.3, 2.6)
    cab = _cab(p, W * 0.95)
    a = cab + r.uniform(0.2, 0.5)
    b = a + _n(r, 6.0, 1.0, 4.2, 8.5)
    p.seg(a, b, W, 1.25, 1.0, DECK)
    p.rim(a, b, W, 1.25, 0.5, 3.0)
    p.cross_lines(a, b, W, 1.25, 0.9, 1.5)
    if r.random() < 0.5:                          # some cargo on the deck
        c0 = a + r.uniform(0, 1.5)
        c1 = min(b, c0 + r.uniform(1.0, 4.0))
        p.seg(c0, c1, W * r.uniform(0.6, 0.95), r.uniform(1.8, 3.0), 3.0, CARGO)
        p.rim(c0, c1, W * 0.8, 2.4, 0.6, 2.0)
    p.axle(b - 1.6, W, 35, dual=True)


def _bus(p: _Parts) -> None:
    r = p.rng
    L, W, H = _n(r, 12.0, 0.8, 10.0, 13.7), _n(r, 2.55, 0.04, 2.45, 2.62), _n(r, 3.1, 0.12, 2.8, 3.5)
    p.seg(0, L, W, H, 3.0)
    p.rim(0, L, W, H, 0.8, 2.0)
    for side in (-W / 2, W / 2):                   # window frames: a regular row along both sides
        d = np.arange(1.0, L - 0.8, 1.25)
        p.point(d, side, 2.0, 8)
    for _ in range(r.integers(1, 3)):              # roof AC units
        c = r.uniform(2, L - 3)
        p.seg(c, c + r.uniform(1.5, 2.5), W * 0.7, H + 0.3, 4.0, CARGO)
    p.axle(2.6, W, 35)
    p.axle(L - 3.2, W, 35, dual=r.random() < 0.3)


def _pickup_trailer(p: _Parts) -> None:
    r = p.rng
    L = _pickup_body(p)
    a = L + r.uniform(1.0, 1.8)                     # tongue: a thin line to the hitch
    p.seg(L, a, 0.3, 0.5, 1.0, DECK)
    p.point(np.linspace(L, a, 4), 0, 0.5, 6)
    kind = r.choice(3, p=[0.5, 0.3, 0.2])
    b = a + _n(r, 4.8 if kind != 2 else 6.0, 1.3, 2.5, 8.5)
    W = _n(r, 2.1, 0.15, 1.6, 2.5)
    if kind == 0:        # open utility trailer: low rails, dark floor
        p.seg(a, b, W, 0.8, 0.5, DECK)
        p.rim(a, b, W, 0.8, 0.5, 3.0)
    elif kind == 1:      # enclosed cargo / camper trailer
        p.seg(a, b, W, _n(r, 2.3, 0.3, 1.8, 3.0), 3.0, CARGO)
        p.rim(a, b, W, 2.3, 0.6, 2.5)
    else:                # flat car hauler, sometimes loaded
        p.seg(a, b, W, 0.6, 1.0, DECK)
        p.cross_lines(a, b, W, 0.6, 1.0, 1.2)
        p.rim(a, b, W, 0.6, 0.6, 2.0, ends=False)
    mid = (a + b) / 2 + 0.6
    p.axle(mid, W, 25)
    if b - a > 5:
        p.axle(mid + 0.9, W, 25)


def _semi(p: _Parts) -> None:
    r = p.rng
    W = _n(r, 2.55, 0.04, 2.45, 2.62)
    cab = _cab(p, W * 0.95, sleeper=r.random() < 0.6)
    p.axle(cab + 1.0, W, 35, dual=True)             # drive tandem under the fifth wheel
    a = cab + r.uniform(0.7, 1.4)                   # the gap between cab and trailer
    kind = r.choice(4, p=[0.45, 0.25, 0.18, 0.12])
    length = {0: 16.2, 1: 14.6, 2: 8.6, 3: 14.6}[int(kind)] + r.normal(0, 0.3)
    b = a + length
    if kind == 3:        # flatbed trailer
        p.seg(a, b, W, 1.5, 1.0, DECK)
        p.cross_lines(a, b, W, 1.5, 1.0, 1.5)
        p.rim(a, b, W, 1.5, 0.5, 3.0)
    else:                # dry van: tall box with regular side posts
        H = _n(r, 4.0, 0.1, 3.7, 4.2)
        p.seg(a, b, W, H, 3.5, CARGO)
        p.rim(a, b, W, H, 0.6, 2.0)
        for side in (-W / 2, W / 2):
            d = np.arange(a + 0.3, b, 0.6 * 2)
            p.point(d, side, H * 0.6, 6)
    p.axle(b - 1.5, W, 35, dual=True)
    p.axle(b - 2.8, W, 35, dual=True)


_MODELS = (_sedan, _suv, _pickup, _van, _box_truck, _motorcycle, _flatbed, _bus, _pickup_trailer, _semi)


def vehicle_model(label: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """(segments [n,6]: a, b, half width, height, gain, material; points [m,4]: d, v, z, amp;
    length)."""
    parts = _Parts(rng)
    _MODELS[label](parts)
    return parts.arrays()


def _tracked(p: _Parts) -> None:
    """An armoured tracked vehicle: a wide low hull over two tracks (long, dense rows of road
    wheels and track links), often a turret with a gun pointing past the nose."""
    r = p.rng
    L, W, H = _n(r, 6.8, 0.6, 5.5, 8.0), _n(r, 3.2, 0.15, 2.9, 3.6), _n(r, 1.9, 0.15, 1.6, 2.3)
    p.seg(0, L, W, H, 2.0, ARMOUR)
    p.rim(0, L, W, H, 0.6, 2.5)
    for side in (-1, 1):
        p.point(np.linspace(0.6, L - 0.6, int(r.integers(5, 8))), side * (W / 2 - 0.35), 0.5, 30)
        p.point(np.arange(0.2, L - 0.2, 0.35), side * (W / 2 - 0.05), 0.9, 6)
    if r.random() < 0.6:
        t0 = L * r.uniform(0.3, 0.45)
        t1 = t0 + _n(r, 2.6, 0.3, 2.0, 3.2)
        p.seg(t0, t1, W * 0.6, H + 0.8, 3.0, ARMOUR)
        p.rim(t0, t1, W * 0.6, H + 0.8, 0.6, 2.0)
        p.seg(t0 - r.uniform(2.5, 4.5), t0, 0.25, H + 0.6, 2.0, DARK)     # gun barrel
        p.point(t0 - 0.5, 0, H + 0.6, 15)


def _tractor(p: _Parts) -> None:
    """A farm tractor: narrow hood, tall open cab over a pair of big rear wheels that stand far
    wider than the body, small front wheels."""
    r = p.rng
    L, W = _n(r, 4.2, 0.3, 3.6, 5.0), _n(r, 1.3, 0.1, 1.1, 1.5)
    track = _n(r, 2.3, 0.15, 2.0, 2.6)
    wheel = _n(r, 1.7, 0.15, 1.4, 2.0)                                  # rear tyre diameter
    p.seg(0, L * 0.55, W, 1.6, 2.0)
    p.seg(L - wheel - 0.1, L - 0.1, track + 0.5, wheel, 2.0, TYRE)
    p.seg(L * 0.55, L - 0.3, 1.6, 2.8, 1.5)
    p.rim(L * 0.55, L - 0.3, 1.6, 2.8, 0.5, 2.0)                        # cab pillars and roof edge
    for side in (-1, 1):                                                # tyre lugs: strong rows
        p.point(np.linspace(L - wheel, L - 0.2, 5), side * (track / 2 + 0.1), 0.9, 25)
    p.axle(0.5, W + 0.4, 20)
    if r.random() < 0.5:                                                # implement on the hitch
        p.seg(L + 0.2, L + r.uniform(1.0, 2.2), track * r.uniform(0.9, 1.3), 0.7, 1.5, DECK)


def _boat_trailer(p: _Parts) -> None:
    """A boat on a two-wheel trailer, without a tow vehicle: tongue, a hull that narrows in
    steps to a pointed bow, an optional console with windscreen, an outboard motor."""
    r = p.rng
    tongue = r.uniform(1.2, 2.0)
    L, W, H = _n(r, 6.0, 0.9, 4.0, 8.0), _n(r, 2.2, 0.15, 1.8, 2.5), _n(r, 1.5, 0.2, 1.1, 2.0)
    p.seg(0, tongue, 0.3, 0.5, 1.0, DECK)
    p.point(np.linspace(0, tongue, 4), 0, 0.5, 6)
    for k, frac in enumerate((0.3, 0.55, 0.8)):                         # the bow
        p.seg(tongue + 0.45 * k, tongue + 0.45 * (k + 1), W * frac, H * 0.95, 1.2, HULL)
    p.seg(tongue + 1.35, tongue + L, W, H, 1.2, HULL)
    p.rim(tongue + 1.35, tongue + L, W, H, 0.7, 1.5, ends=False)         # gunwale
    if r.random() < 0.6:
        c = tongue + L * r.uniform(0.35, 0.55)
        p.seg(c, c + 0.8, W * 0.55, H + 0.7, 3.0, GLASS)
    p.seg(tongue + L, tongue + L + 0.6, 0.5, H + 0.4, 3.0, DARK)        # outboard motor
    p.point(tongue + L + 0.3, 0, H, 25)
    p.axle(tongue + L * 0.6, W + 0.2, 25)


_OOD_MODELS = dict(zip(OOD_KINDS, (_tracked, _tractor, _boat_trailer)))


def ood_model(kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Like `vehicle_model`, for a vehicle-like shape of no class (`OOD_KINDS`)."""
    parts = _Parts(rng)
    _OOD_MODELS[kind](parts)
    return parts.arrays()
