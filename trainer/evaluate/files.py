"""The result files of a finished run: RUN/metrics.json (indented, the contract) and
RUN/metrics_per_class.csv (one row per class: name, train count, groups, and the accuracy of
every split and classifier in metrics.json), for a spreadsheet or pandas."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from shards.atomic import write_atomic, write_json

GROUPINGS = {"group": ("head", "middle", "tail"), "shot": ("many", "medium", "few")}


def write_metrics(run_dir: Path, metrics: dict, train_counts) -> None:
    write_json(Path(run_dir) / "metrics.json", metrics, indent=1)
    write_atomic(Path(run_dir) / "metrics_per_class.csv", per_class_csv(metrics, train_counts))


def per_class_columns(metrics: dict) -> dict[str, list]:
    """`<split>_<classifier>` -> per-class accuracies (None: no sample of the class in the split)."""
    out = {}
    for split in ("val", "test"):
        ev = metrics["final"].get(split)
        if ev is None:
            continue
        out[f"{split}_model"] = ev["per_class_acc"]
        for name, sub in sorted((ev.get("classifiers") or {}).items()):
            if isinstance(sub, dict) and "per_class_acc" in sub:
                out[f"{split}_{name}"] = sub["per_class_acc"]
    return out


def per_class_csv(metrics: dict, train_counts) -> str:
    classes = metrics["classes"]
    members = metrics["final"]["val"].get("group_classes") or {}
    columns = per_class_columns(metrics)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class_id", "class", "train_count", *GROUPINGS, *columns])
    for c, name in enumerate(classes):
        groups = [next((g for g in names if c in members.get(g, ())), "") for names in GROUPINGS.values()]
        accs = ["" if col[c] is None else f"{col[c]:.4f}" for col in columns.values()]
        w.writerow([c, name, int(train_counts[c]), *groups, *accs])
    return buf.getvalue()
