"""`python -m trainer report RUN`: figures and a markdown page for one run folder.

Writes RUN/report/*.png and RUN/report/report.md (which embeds them), from RUN/config.yaml,
RUN/metrics.json, RUN/history.jsonl and the per-stage weights in RUN/stages/<i>-<name>/. Parts
whose inputs are missing (no history, no validation split, no post-hoc classifiers, no weights)
are skipped with a note in report.md instead of failing the whole report.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml

from shards.atomic import write_atomic
from shards.errors import DataError, exit_on_error
from shards.index import ClassIndex
from trainer.commands import latency, plots
from trainer.commands.cli import report_parser
from trainer.train.checkpoint import load_weights
from trainer.commands.embedding import section_features
from trainer.errors import USER_ERRORS, ConfigError
from trainer.commands.report_ood import section_ood
from trainer.summary import headline

GROUPS = ("head", "middle", "tail")
PAPER_GROUPS = ("many", "medium", "few")
DEFAULT_TTA_VIEWS = 3  # Li, Tan & Pan (NTIRE 2021) evaluate with 3 TTA views


@dataclass
class RunFolder:
    root: Path
    config: dict
    metrics: dict
    history: list[dict]
    stage_dirs: dict[int, Path]      # stage index -> RUN/stages/<i>-<name>
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return [str(c) for c in self.metrics["classes"]]

    def final_eval(self, split: str = "val") -> dict | None:
        return (self.metrics.get("final") or {}).get(split)

    def stage_names(self) -> dict[int, str]:
        return stage_names(self)


def load_run(path: Path | str) -> RunFolder:
    """Read a run folder; ConfigError naming the path if it is not one or a file is unreadable."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a run folder (no such directory)")
    for name in ("config.yaml", "metrics.json"):
        if not (root / name).is_file():
            raise ConfigError(f"{root}: not a run folder (missing {name})")
    try:
        config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{root / 'config.yaml'}: not valid YAML ({e})") from None
    metrics = _read_json(root / "metrics.json")
    if not isinstance(metrics, dict) or "classes" not in metrics:
        raise ConfigError(f"{root / 'metrics.json'}: no 'classes' list (not a trainer metrics file)")
    run = RunFolder(root, config, metrics, [], _stage_dirs(root))
    hist = root / "history.jsonl"
    if hist.is_file():
        for n, line in enumerate(hist.read_text().splitlines(), 1):
            if line.strip():
                try:
                    run.history.append(json.loads(line))
                except json.JSONDecodeError:
                    # A run killed mid-write can leave a torn last line: keep what is readable.
                    run.notes.append(f"history.jsonl line {n} is not JSON; ignored")
    return run


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _stage_dirs(root: Path) -> dict[int, Path]:
    out = {}
    if (root / "stages").is_dir():
        for d in (root / "stages").iterdir():
            head = d.name.split("-", 1)[0]
            if d.is_dir() and head.isdigit() and (d / "model.pt").is_file():
                out[int(head)] = d
    return dict(sorted(out.items()))


def stage_names(run: RunFolder) -> dict[int, str]:
    names = {i: s.get("name", f"stage{i}") for i, s in enumerate(run.metrics.get("stages") or [])}
    for i, s in enumerate(run.config.get("stages") or []):
        if isinstance(s, dict):
            names.setdefault(i, s.get("name", f"stage{i}"))
    return names


def class_counts(run: RunFolder) -> list[int] | None:
    """Training count per class: metrics.json `class_counts`, else the shards' index.json."""
    if run.metrics.get("class_counts"):
        return [int(c) for c in run.metrics["class_counts"]]
    shards = (run.config.get("data") or {}).get("shards")
    if shards:
        try:
            return [int(c) for c in ClassIndex.load(shards).split("train").class_counts()]
        except Exception as e:  # noqa: BLE001 - the shards may have moved since training
            run.notes.append(f"training counts unavailable ({e}); classes shown in label order")
    return None


def class_labels(run: RunFolder) -> list[str]:
    """The class folder names; '0 sedan'-style labels only where numbered classes come with
    display names in the data (metrics.json `class_names`, or the shards' build record)."""
    classes = run.classes
    names = run.metrics.get("class_names") or shard_display_names(run)
    if names and len(names) == len(classes) and classes == [str(i) for i in range(len(classes))]:
        return [f"{c} {n}" for c, n in zip(classes, names)]
    return classes


def shard_display_names(run: RunFolder) -> list[str] | None:
    shards = (run.config.get("data") or {}).get("shards")
    try:
        index = ClassIndex.load(shards) if shards else None
    except DataError:
        return None
    builds = (index.source.get("builds") or []) if index else []
    return next((b["class_names"] for b in builds if "train" in b.get("splits", []) and b.get("class_names")), None)


def shown_split(run: RunFolder) -> str:
    """The split of the per-class and confusion figures: test when the run has it (more chips
    per class than val), else val."""
    return "test" if (run.final_eval("test") or {}).get("per_class_acc") else "val"


def eval_group_classes(ev: dict | None, which=GROUPS) -> dict[str, list[int]]:
    """The classes of each group, as one EVAL recorded them."""
    gc = (ev or {}).get("group_classes") or {}
    return {g: [int(c) for c in gc[g]] for g in which if g in gc}


def _pct(x) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) and not math.isnan(x) else "–"


def summary_table(run: RunFolder) -> list[str]:
    cols = ["top1", "balanced_acc", *GROUPS, *PAPER_GROUPS]
    rows = [(f"{i}: {s.get('name', '')}", s.get("val")) for i, s in enumerate(run.metrics.get("stages") or [])]
    for split in ("val", "test"):
        if run.final_eval(split):
            rows.append((f"final ({split})", run.final_eval(split)))
    lines = ["| after | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, ev in rows:
        ev = ev or {}
        vals = [ev.get(c, (ev.get("groups") or {}).get(c)) for c in cols]
        lines.append(f"| {name} | " + " | ".join(_pct(v) for v in vals) + " |")
    return lines + ["", "Accuracies in %; head/middle/tail are count-relative groups, many/medium/few "
                        "the paper's absolute thresholds (groups with no classes show –)."]


def section_per_class(run: RunFolder, out: Path, labels: list[str], counts) -> list[str]:
    split = shown_split(run)
    if split == "test":
        series = {"final": run.final_eval("test")["per_class_acc"]}
        what = f"test split ({run.final_eval('test').get('num_samples', '?')} chips): accuracy per class of the final model"
    else:
        series = {f"{i}: {s.get('name', '')}": s["val"]["per_class_acc"]
                  for i, s in enumerate(run.metrics.get("stages") or []) if (s.get("val") or {}).get("per_class_acc")}
        final = (run.final_eval() or {}).get("per_class_acc")
        if final and (not series or list(series.values())[-1] != final):
            series["final"] = final
        what = "validation split: accuracy per class after each stage"
    if not series:
        return ["_Skipped: metrics.json has no per-class validation accuracy._"]
    plots.per_class_accuracy(out / "per_class_accuracy.png", labels, counts, series,
                             eval_group_classes(run.final_eval(split)),
                             *(["Per-class test accuracy of the final model"] if split == "test" else []))
    return ["![per-class accuracy](per_class_accuracy.png)", "",
            f"Bars: {what}; classes ordered by training count; shading marks the head / middle / "
            "tail groups."]


def section_confusion(run: RunFolder, out: Path, labels: list[str]) -> list[str]:
    split = shown_split(run)
    cm = (run.final_eval(split) or {}).get("confusion")
    if not cm:
        return [f"_Skipped: metrics.json has no `final.{split}.confusion`._"]
    words = {"val": "validation"}.get(split, split)
    plots.confusion_matrix(out / "confusion_matrix.png", labels, np.asarray(cm),
                           f"Confusion matrix of the final model, {words} split (row-normalised)", words)
    return ["![confusion matrix](confusion_matrix.png)", "",
            f"On the {split} split ({int(np.asarray(cm).sum())} chips); rows: true class, columns: predicted."]


def section_curves(run: RunFolder, out: Path) -> list[str]:
    if not run.history:
        return ["_Skipped: no history.jsonl (or it is empty)._"]
    plots.training_curves(out / "training_curves.png", run.history, stage_names(run))
    return ["![training curves](training_curves.png)"]


def section_classifiers(run: RunFolder, out: Path) -> list[str]:
    ev = run.final_eval() or {}
    clfs = ev.get("classifiers") or {}
    if not clfs:
        for s in reversed(run.metrics.get("stages") or []):
            clfs = (s.get("val") or {}).get("classifiers") or {}
            if clfs:
                ev = s["val"]
                break
    if not clfs:
        return ["_Skipped: no post-hoc classifiers in this run._"]
    rows = {"base model": _flat(ev), **{name: _flat(c) for name, c in clfs.items()}}
    metrics = ["top1", "balanced_acc", *[g for g in GROUPS if any(g in r for r in rows.values())]]
    plots.metric_bars(out / "classifiers.png", rows, metrics, "Post-hoc classifiers on validation",
                      labels={"top1": "top-1", "balanced_acc": "balanced acc"})
    lines = ["![post-hoc classifiers](classifiers.png)", "",
             "| classifier | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 1) + "|"]
    lines += [f"| {n} | " + " | ".join(_pct(r.get(m)) for m in metrics) + " |" for n, r in rows.items()]
    for name, c in clfs.items():
        if c.get("tau_curve"):
            plots.tau_curve(out / "tau_curve.png", c["tau_curve"], c.get("tau"))
            lines += ["", f"![τ search ({name})](tau_curve.png)"]
            break
    else:
        lines += ["", "_No τ search curve stored (`classifiers.<tau-norm>.tau_curve`)._"]
    return lines


def _flat(ev: dict) -> dict[str, float]:
    """The EVAL's headline numbers that are present (no NaN for empty groups)."""
    return {k: v for k, v in headline(ev).items() if not math.isnan(v)}


# ---- features and inference need the models and the data stream -----------------------------

def report_tta_views(config: dict) -> int:
    """The run's TTA views (data.tta), or the paper's 3 when the run evaluates without TTA, so
    the report always shows the cost of TTA next to the plain forward pass."""
    views = (config.get("data") or {}).get("tta")
    return views if isinstance(views, int) and views > 1 else DEFAULT_TTA_VIEWS


def section_inference(run: RunFolder, out: Path, device, large_batch: int, repeats: int) -> list[str]:
    if not run.stage_dirs:
        return ["_Skipped: no stage weights to measure._"]
    last = list(run.stage_dirs.values())[-1]
    try:
        model, info = load_weights(last)
    except Exception as e:  # noqa: BLE001
        return [f"_Skipped: could not load {last / 'model.pt'} ({e})._"]
    size = int(info["input_size"])
    fig = latency.measure(model, size, device=device, large_batch=large_batch,
                            tta_views=report_tta_views(run.config), repeats=repeats)
    fig["model_file"] = str(last / "model.pt")
    fig["model_file_bytes"] = (last / "model.pt").stat().st_size
    write_atomic(out / "inference.json", json.dumps(fig, indent=2))
    return [f"Model after the last stage ({last.name}); `model.pt` on disk: "
            f"{fig['model_file_bytes'] / 2**20:.2f} MiB.", "", latency.to_markdown(fig)]



def write_report(run: RunFolder, *, features: bool = True, inference: bool = True,
                 max_per_class: int = 200, large_batch: int = 256, repeats: int = 10,
                 device: str | None = None) -> Path:
    out = run.root / "report"
    out.mkdir(exist_ok=True)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    labels = class_labels(run)
    counts = class_counts(run)
    model = run.config.get("model") or {}
    md = [f"# Report: {run.root.name}", "",
          f"Run folder `{run.root}`; model `{model.get('name', model.get('arch', '?'))}`; stages: "
          + ", ".join(f"{i}: {n}" for i, n in stage_names(run).items()) + ".", "",
          "## Accuracy after each stage", "", *summary_table(run), "",
          f"## Per-class accuracy ({shown_split(run)} split)", "", *section_per_class(run, out, labels, counts), "",
          f"## Confusion matrix (final model, {shown_split(run)} split)", "",
          *section_confusion(run, out, labels), "",
          "## Features after each stage (as Figure 2 of Li, Tan & Pan, NTIRE 2021)", ""]
    md += section_features(run, out, labels, max_per_class) if features else ["_Skipped (--no-features)._"]
    md += ["", "## Training curves", "", *section_curves(run, out), "",
           "## Post-hoc classifiers", "", *section_classifiers(run, out), "",
           "## Inference", ""]
    md += section_inference(run, out, dev, large_batch, repeats) if inference else ["_Skipped (--no-inference)._"]
    md += ["", "## Out-of-distribution scores", "", *section_ood(run, out)]
    if run.notes:
        md += ["", "## Notes", "", *[f"- {n}" for n in run.notes]]
    write_atomic(out / "report.md", "\n".join(md) + "\n")
    return out / "report.md"


def main(argv: list[str]) -> int:
    args = report_parser().parse_args(argv)
    return exit_on_error(lambda: _report(args), USER_ERRORS)


def _report(args: argparse.Namespace) -> int:
    path = write_report(load_run(args.run), features=not args.no_features, inference=not args.no_inference,
                        max_per_class=args.max_per_class, large_batch=args.large_batch,
                        repeats=args.repeats, device=args.device)
    print(path)
    return 0
