"""What a split is made of: its modalities and the pixel mode (channel count) of each.

Resolved once per build, before any shard is written: the modalities from `--modalities`
(or, for a split added to an existing shard folder, those of its splits), the mode of each from
`--mode` or from its first chip. A split added to an existing folder must match its splits.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shards.errors import DataError
from shards.chips import ChipSpec
from shards.index import INDEX_NAME, ClassIndex
from shards.members import DEFAULT_MODALITIES, parse_modalities
from shards.names import prefix
from shards.pixels import DEFAULT_SIZE_RANGE, GRAY, MODES, ExpectedMode, expected_mode


@dataclass(frozen=True)
class Layout:
    """The modalities of a split (first = primary) and the mode every chip of each must have."""

    modalities: tuple[str, ...] = DEFAULT_MODALITIES
    modes: tuple[ExpectedMode, ...] = (GRAY,)
    spec: ChipSpec = ChipSpec()  # intensity mapping and size policy (shards/chips.py)

    @property
    def channels(self) -> dict[str, int]:
        return {m: e.channels for m, e in zip(self.modalities, self.modes)}

    def record(self) -> dict[str, object]:
        """For the build record in index.json."""
        return {"modalities": list(self.modalities),
                "modes": {m: e.mode for m, e in zip(self.modalities, self.modes)},
                "depths": {m: e.depth for m, e in zip(self.modalities, self.modes)},
                "chip": self.spec.to_json(self.modes[0].depth)}


DEFAULT_LAYOUT = Layout()


def resolve_modalities(option: str | Sequence[str] | None,
                       existing: ClassIndex | None) -> tuple[str, ...]:
    """`option`, else the modalities of the existing splits, else sar only."""
    parsed = parse_modalities(option)
    if parsed is not None:
        return parsed
    if existing is not None and existing.splits:
        return tuple(next(iter(existing.splits.values())).modalities)
    return DEFAULT_MODALITIES


def parse_modes(option: str | Sequence[str], modalities: tuple[str, ...]) -> tuple[str, ...]:
    """`gray`, `rgb`, `auto`, or one of them per modality (`gray,rgb`)."""
    names = option.split(",") if isinstance(option, str) else list(option)
    names = [n.strip().lower() for n in names]
    if len(names) == 1:
        names *= len(modalities)
    if len(names) != len(modalities) or any(n not in MODES for n in names):
        raise ValueError(f"mode must be one of {MODES}, or one per modality "
                         f"({','.join(modalities)}), got {option!r}")
    return tuple(names)


def resolve_layout(images: Sequence, modalities: tuple[str, ...],
                   mode: str | Sequence[str] = "auto", raw: Path | None = None,
                   spec: ChipSpec = ChipSpec()) -> Layout:
    """The layout of a split whose first sample is `images[0]` (a RawImage) from folder `raw`."""
    try:
        modes = parse_modes(mode, modalities)
    except ValueError as e:
        raise DataError(f"{raw}: {e}") from None
    if not images:
        return Layout(modalities, tuple(GRAY for _ in modalities), spec)
    first = images[0]
    paths = [first.path] + [p.path for p in first.partners]
    return Layout(modalities, tuple(expected_mode(o, p) for o, p in zip(modes, paths)), spec)


def check_modalities(existing: ClassIndex | None, raw: Path, modalities: Sequence[str]) -> None:
    """A split added to `existing` must have its modalities; DataError naming `raw` otherwise."""
    if existing is None or not existing.splits:
        return
    name, other = next(iter(existing.splits.items()))
    if list(modalities) != list(other.modalities):
        raise DataError(f"{raw}: modalities {list(modalities)} differ from those of split "
                        f"{name!r} in {existing.root / INDEX_NAME}: {other.modalities}")


def check_matches_existing(existing: ClassIndex | None, raw: Path, layout: Layout) -> None:
    """A split added to `existing` must have its modalities and channel counts; DataError
    naming the raw folder otherwise."""
    check_modalities(existing, raw, layout.modalities)
    if existing is None or not existing.splits:
        return
    name, other = next(iter(existing.splits.items()))
    where = existing.root / INDEX_NAME
    for m, e in zip(layout.modalities, layout.modes):
        have = other.stats(m).channels
        if e.channels != have:
            raise DataError(f"{raw}: {prefix(m)}*.png chips have {e.channels} channel(s) ({e.mode}, "
                            f"{e.why}), split {name!r} in {where} has {have}; "
                            "every split of a shard folder needs the same channel count")


def split_record(index: ClassIndex, split: str) -> dict:
    """The build record (index.json `source.builds[i]`) that wrote `split`; {} if none."""
    return next((b for b in index.source.get("builds", []) if split in b.get("splits", [])), {})


def index_spec(index: ClassIndex | None) -> ChipSpec | None:
    """The chip spec the splits of `index` were built with (None: no index)."""
    if index is None or not index.splits:
        return None
    return ChipSpec.from_json(split_record(index, next(iter(index.splits))).get("chip"))


def resolve_spec(intensity: str | None, size_policy: str | None, chip_size: int | None,
                 existing: ClassIndex | None, raw: Path) -> ChipSpec:
    """The options given, else those of the splits already in `existing`, else the defaults; a
    split added to `existing` must be prepared as its splits were (DataError naming `raw`)."""
    have = index_spec(existing)
    base = have or ChipSpec()
    try:
        spec = ChipSpec(intensity or base.intensity, size_policy or base.size_policy,
                        chip_size if chip_size is not None or size_policy else base.chip_size)
    except ValueError as e:
        raise DataError(f"{raw}: {e}") from None
    if have is not None and spec != have:
        raise DataError(f"{raw}: chips prepared as {spec.to_json()} but the splits in "
                        f"{existing.root / INDEX_NAME} were prepared as {have.to_json()}; every "
                        "split of a shard folder is prepared the same way")
    return spec


def preprocess_record(index: ClassIndex, split: str = "train") -> dict:
    """What `predict` needs to turn a raw file into the chip the model was trained on."""
    rec = split_record(index, split)
    s = index.split(split)
    spec = ChipSpec.from_json(rec.get("chip"))
    modes = rec.get("modes") or {m: ("gray" if s.stats(m).channels == 1 else "rgb") for m in s.modalities}
    depths = rec.get("depths") or {m: "8-bit" for m in s.modalities}
    return {**spec.to_json(depths[s.modalities[0]]), "modes": modes, "depths": depths,
            "size_range": rec.get("size_range") or list(DEFAULT_SIZE_RANGE)}
