"""`python -m shards build | verify | stats`: class-pure WebDataset shards and their index.json
(layout: docs/architecture.md, "Shards on disk")."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from shards.chips import INTENSITIES, SIZE_POLICIES, ChipSpec
from shards.errors import DataError, exit_on_error
from shards.index import ClassIndex, SplitIndex
from shards.names import prefix
from shards.pixels import DEFAULT_SIZE_RANGE


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return exit_on_error(lambda: args.func(args))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m shards", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="raw folder -> WebDataset shards + index.json")
    b.add_argument("raw", type=Path, help="RAW/<class>/[any sub-folders/]<images>, or a flat "
                   "folder with --labels (PNG, JPEG, TIFF or BMP; 8-bit, 16-bit or float32)")
    b.add_argument("out", type=Path, help="shard folder to write: OUT/index.json and OUT/<split>/*.tar "
                   "(created; a rerun into the same OUT finishes or adds a split)")
    b.add_argument("--val-fraction", type=fraction, default=0.1, help="per class (default 0.1)")
    b.add_argument("--seed", type=int, default=0, help="seed of the train/val split (default 0): the same "
                   "seed gives the same split")
    b.add_argument("--split", help="write only this split (e.g. test) into OUT")
    b.add_argument("--labels", type=Path, help="CSV for a flat RAW folder: image_id,class_id "
                   "(NTIRE ids) or file,class (file names, class names or ids)")
    b.add_argument("--intensity", choices=INTENSITIES, default=None,
                   help="how pixel values become the stored 8-bit chip: linear, percentile (1..99 "
                        "per chip), db (20 log10, then percentile); auto (default): linear for "
                        "8-bit, percentile for 16-bit, db for float32 chips")
    b.add_argument("--size-policy", choices=SIZE_POLICIES, default=None,
                   help="with --chip-size: crop (default; centre crop / edge pad), pad (zeros) or "
                        "resize (lets chip size leak the label where it differs by class)")
    b.add_argument("--chip-size", type=positive, default=None, metavar="N",
                   help="store every chip at NxN by the size policy (default: their own size; "
                        "training and predict centre-crop to the input size)")
    b.add_argument("--shard-size", type=positive, default=1000, help="max samples per shard")
    b.add_argument("--workers", type=positive, default=None, help="processes (default: cores)")
    b.add_argument("--no-dali-index", dest="dali_index", action="store_false",
                   help="do not write DALI .idx files beside the shards")
    b.add_argument("--size-range", type=positive, nargs=2, metavar=("MIN", "MAX"),
                   default=list(DEFAULT_SIZE_RANGE), help="accepted px per side (default 16 256)")
    b.add_argument("--modalities", type=modalities_option, default=None, metavar="M[,M]",
                   help="sar, eo or sar,eo: one tar member per modality, paired by id "
                        "(SAR_<id>.png + EO_<id>.png); default: those of the splits already in "
                        "OUT, else sar (EO_*.png ignored)")
    b.add_argument("--mode", type=mode_option, default="auto", metavar="gray|rgb|auto",
                   help="pixel mode of the chips, or one per modality (gray,rgb); auto (default): "
                        "that of the first chip. A chip of another mode is an error")
    b.add_argument("--unlabeled", "--labels-none", dest="unlabeled", action="store_true",
                   help="with --split NAME: a flat folder of chips of no class (e.g. ood), "
                        "stored with label -1, added to an existing OUT")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_build)
    v = sub.add_parser("verify", help="re-read every shard and check it against the index")
    v.add_argument("out", type=Path, help="shard folder (holds index.json)")
    v.set_defaults(func=cmd_verify)
    s = sub.add_parser("stats", help="per-split, per-class counts")
    s.add_argument("out", type=Path, help="shard folder (holds index.json)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_stats)
    return p


def fraction(text: str) -> float:
    x = float(text)
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return x


def modalities_option(text: str) -> tuple[str, ...]:
    from shards.members import parse_modalities

    try:
        return parse_modalities(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def mode_option(text: str) -> str:
    from shards.pixels import MODES

    if not all(m.strip().lower() in MODES for m in text.split(",")):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(MODES)}, or one per "
                                         f"modality separated by commas, got {text!r}")
    return text


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return n


def cmd_build(args: argparse.Namespace) -> int:
    from shards.build import build_shards  # imports webdataset (and torch): only when building

    if args.size_range[0] > args.size_range[1]:
        raise DataError(f"--size-range: MIN {args.size_range[0]} > MAX {args.size_range[1]}")
    if args.unlabeled and (not args.split or args.labels):
        raise DataError("--unlabeled: needs --split NAME (not train or val) and no --labels")
    start = time.perf_counter()
    index = build_shards(args.raw, args.out, val_fraction=args.val_fraction, seed=args.seed,
                         split=args.split, labels_csv=args.labels, shard_size=args.shard_size,
                         workers=args.workers, dali_index=args.dali_index,
                         size_range=tuple(args.size_range), quiet=args.quiet,
                         modalities=args.modalities, mode=args.mode, unlabeled=args.unlabeled,
                         intensity=args.intensity, size_policy=args.size_policy,
                         chip_size=args.chip_size)
    seconds = time.perf_counter() - start
    last = index.source["builds"][-1]
    print(f"{args.out}: {last['images']} images from {last['raw']} in {seconds:.1f} s")
    for name in last["splits"]:
        s = index.splits[name]
        print(f"  {name}: {len(s)} samples in {len(s.shards)} shards"
              + ("" if s.modalities == ["sar"] and s.channels == 1 else f" ({describe(s)})")
              + ("" if s.labeled else ", unlabeled"))
    chip = ChipSpec.from_json(last.get("chip"))
    for m, depth in (last.get("depths") or {}).items():
        print(f"  {m}: {depth} {last['modes'][m]} chips; {chip.describe(depth)}")
    if last["ignored_files"]:
        kinds = (" or ".join(f"{prefix(m)}*.png" for m in index.splits[last["splits"][0]].modalities)
                 if last.get("names", "ntire") == "ntire" else "image files (.bmp .jpeg .jpg .png .tif .tiff)")
        print(f"  ignored {last['ignored_files']} files that are not {kinds} "
              f"(e.g. {', '.join(last['ignored_examples'])})")
    return 0


def describe(s: SplitIndex) -> str:
    """`sar 1 ch + eo 3 ch`."""
    return " + ".join(f"{m} {s.stats(m).channels} ch" for m in s.modalities)


def cmd_verify(args: argparse.Namespace) -> int:
    from shards.verify import verify

    r = verify(args.out)
    print(f"{args.out}: OK, {r.samples} samples in {r.shards} shards ({r.bytes / 1e6:.1f} MB) "
          f"and {r.dali_indexes} DALI index files in {r.splits} splits match the index"
          + ("" if r.sealed else "; the index has no checksum of its own (written by an older "
             "builder: a rebuild into a new folder adds one)"))
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    index = ClassIndex.load(args.out)
    stats = collect_stats(index)
    if args.json:
        print(json.dumps(stats, indent=1))
    else:
        print(format_stats(stats))
    return 0


def collect_stats(index: ClassIndex) -> dict[str, Any]:
    splits = {}
    for name, s in index.splits.items():
        splits[name] = {"num_samples": len(s), "class_counts": s.class_counts().tolist(),
                        "shards": len(s.shards), "pixel_mean": s.pixel_mean,
                        "pixel_std": s.pixel_std, "image_sizes": s.image_sizes,
                        "height": [int(s.height.min()), int(s.height.max())] if len(s) else [],
                        "width": [int(s.width.min()), int(s.width.max())] if len(s) else [],
                        "modalities": list(s.modalities), "channels": s.channels,
                        "pixel_mean_c": list(s.pixel_mean_c), "pixel_std_c": list(s.pixel_std_c),
                        "labeled": s.labeled, "unlabeled": s.num_unlabeled,
                        "modality_stats": {m: s.stats(m).to_json() for m in s.modalities}}
    return {"root": str(index.root), "classes": index.classes, "splits": splits}


def format_stats(stats: dict[str, Any]) -> str:
    names = list(stats["splits"])
    unlabeled = any(stats["splits"][n]["unlabeled"] for n in names)
    width = max([len(c) for c in stats["classes"]] + [8 if unlabeled else 5])
    rows = [f"{'class':<{width}} " + " ".join(f"{n:>8}" for n in names)]
    for c, cls in enumerate(stats["classes"]):
        rows.append(f"{cls:<{width}} " + " ".join(
            f"{stats['splits'][n]['class_counts'][c]:>8}" for n in names))
    if unlabeled:
        rows.append(f"{'no class':<{width}} " + " ".join(
            f"{stats['splits'][n]['unlabeled']:>8}" for n in names))
    rows.append(f"{'total':<{width}} " + " ".join(
        f"{stats['splits'][n]['num_samples']:>8}" for n in names))
    for n in names:
        s = stats["splits"][n]
        if not s["num_samples"]:
            continue
        common = max(s["image_sizes"].items(), key=lambda kv: kv[1])
        rows.append(f"{n}: {s['shards']} shards; height {s['height'][0]}-{s['height'][1]} px, "
                    f"width {s['width'][0]}-{s['width'][1]} px, {len(s['image_sizes'])} sizes "
                    f"(most common {common[0]}: {common[1]}); pixel mean {s['pixel_mean']:.4f} "
                    f"std {s['pixel_std']:.4f}; " + modality_summary(s))
    return "\n".join(rows)


def modality_summary(s: dict[str, Any]) -> str:
    """`sar: 1 channel` or `sar: 1 channel, eo: 3 channels (mean 0.41/0.40/0.38)`."""
    parts = []
    for m in s["modalities"]:
        ms = s["modality_stats"][m]
        text = f"{m}: {ms['channels']} channel{'s' if ms['channels'] > 1 else ''}"
        if ms["channels"] > 1 or m != s["modalities"][0]:
            text += " (mean " + "/".join(f"{x:.3f}" for x in ms["pixel_mean_c"]) + ")"
        parts.append(text)
    return ", ".join(parts) + ("" if s["labeled"] else "; unlabeled")


if __name__ == "__main__":
    sys.exit(main())
