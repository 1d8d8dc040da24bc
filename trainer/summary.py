"""What a run says about itself: the start banner (also RUN/run.json) and the results table.

`headline(eval)` is the one reading of an EVAL's headline numbers (top-1, balanced accuracy and
the group accuracies) shared by the printed table, the report and `compare`.
"""
from __future__ import annotations

import math
import os
import platform
import socket
from pathlib import Path

import torch
from accelerate.utils import gather_object

from shards.atomic import write_json
from trainer.streams import sub_dataset

HEADLINE = ("top1", "balanced_acc", "head", "middle", "tail", "many", "medium", "few")


def name_per_class(ev: dict, classes: list[str]) -> dict:
    """Add `per_class` ({class name: accuracy}, beside the `per_class_acc` list) to an EVAL and
    to its post-hoc classifiers' EVALs, so metrics.json reads by class name."""
    acc = ev.get("per_class_acc")
    if isinstance(acc, list) and len(acc) == len(classes):
        ev["per_class"] = dict(zip(classes, acc))
    for sub in (ev.get("classifiers") or {}).values():
        if isinstance(sub, dict):
            name_per_class(sub, classes)
    return ev


def headline(ev: dict | None) -> dict[str, float]:
    """The headline metrics of one EVAL; a missing or null value (an empty group) is NaN."""
    ev = ev or {}
    groups = ev.get("groups") or {}
    out = {}
    for m in HEADLINE:
        v = ev.get(m) if m in ("top1", "balanced_acc") else groups.get(m)
        out[m] = float(v) if isinstance(v, (int, float)) else math.nan
    return out


def print_table(runs: dict[str, dict]) -> None:
    """top1, balanced accuracy and head/middle/tail accuracy of the final model (and post-hoc
    classifiers) per run; AUROC / FPR95 of the OOD scores where the shards have an ood split."""
    header = f"{'run':<22}{'split':<6}{'classifier':<11}{'top1':>7}{'bal_acc':>9}{'head':>7}{'middle':>8}{'tail':>7}"
    print(header)
    print("-" * len(header))
    for name, metrics in runs.items():
        for split in ("val", "test"):
            ev = metrics["final"].get(split)
            if ev is None:
                continue
            for cname, cev in [("model", ev), *sorted((ev.get("classifiers") or {}).items())]:
                h = headline(cev)
                cells = "".join(f"{h[k]:>{w}.3f}" for k, w in (("top1", 7), ("balanced_acc", 9), ("head", 7),
                                                                 ("middle", 8), ("tail", 7)))
                print(f"{name:<22}{split:<6}{cname:<11}{cells}")
        if metrics["final"].get("ood"):
            print(format_ood(name, metrics["final"]["ood"]))


def format_end(run_dir: Path, wall_s: float, resumed: bool) -> str:
    """The last lines of a run: how long it took, where its files are, what to run next."""
    from trainer.train.progress import format_seconds

    run_dir = Path(run_dir)
    files = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                   if not p.name.startswith(".") and p.name != "checkpoints")
    stages = sorted(str(p.relative_to(run_dir)) for p in run_dir.glob("stages/*/model.pt"))
    took = format_seconds(wall_s) + (" (this process, since the resume)" if resumed else "")
    return "\n".join([
        f"finished in {took}; run folder {run_dir}",
        f"  files: {', '.join(files)}",
        f"  weights: {', '.join(stages)}",
        "  next:",
        f"    python -m trainer report {run_dir}",
        f"    python -m trainer predict {run_dir} --images DIR --out results.csv",
        f"    python -m trainer export {run_dir}"])


def format_ood(name: str, ood: dict) -> str:
    lines = [f"{name}: out-of-distribution, {ood['known_split']} (known) vs {ood['num_unknown']} "
             f"{ood['unknown_split']} chips (unknown)"]
    for cname, scores in ood.items():
        if isinstance(scores, dict):
            cells = "  ".join(f"{k} AUROC {v['auroc']:.3f} FPR95 {v['fpr95']:.3f}" for k, v in scores.items())
            lines.append(f"  {cname:<10} {cells}")
    return "\n".join(lines)


def banner(setup, sizes: dict[str, int]) -> dict:
    """Who is running what, where: printed by the main process and written to RUN/run.json.
    Collective (every rank reports its device)."""
    acc = setup.accelerator
    devices = gather_object([f"rank {acc.process_index}: {_device_name(acc.device)}"])
    info = {
        "run_dir": str(setup.run_dir), "recipe": setup.cfg["run"]["recipe"],
        "world_size": acc.num_processes, "devices": list(devices), **_where(),
        "threads": getattr(setup, "threads", ""),
        "precision": acc.mixed_precision, "loader": setup.streams.kind, "split_sizes": sizes,
        **recipe_summary(setup.recipe, setup.cfg, setup.index.split("train").labels),
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
    }
    if acc.is_main_process:
        write_json(Path(setup.run_dir) / "run.json", info, indent=1)
        print(format_banner(info), flush=True)
    return info


def recipe_summary(recipe, cfg: dict, labels) -> dict:
    """What the banner and RUN/run.json say of the resolved recipe (a real run and --dry-run):
    input, model, views, batch, notes, and each stage's length and fixed sub-dataset digest."""
    stages = [{"name": s.name, "length": s.length, "epochs": s.epochs, "steps_per_epoch": s.steps_per_epoch,
               "steps": s.total_steps, "sub_dataset": sub_dataset(labels, s, cfg["seed"])}
              for s in recipe.stages]
    return {"input_size": recipe.input_size, "model": recipe.model, "range_axis": recipe.range_axis,
            "tta_views": list(recipe.tta_views), "global_batch": cfg["data"]["batch_size"],
            "stages": stages, "notes": list(recipe.notes)}


def format_banner(info: dict) -> str:
    stages = "; ".join(f"{s['name']} {s['steps']} steps ({s['epochs']} ep × {s['steps_per_epoch']})"
                       + (f" on sub-dataset {s['sub_dataset']['digest']}" if s.get("sub_dataset") else "")
                       for s in info["stages"])
    sizes = ", ".join(f"{k} {v}" for k, v in info["split_sizes"].items())
    lines = [f"run {info['run_dir']}: {info['world_size']} process(es) on {', '.join(info['devices'])}, "
             f"precision {info['precision']}, loader {info['loader']}",
             f"  model {info['model']['name']} depth {info['model']['depth']} width {info['model']['width']} "
             f"head {info['model']['head']}, input {info['input_size']} px, global batch {info['global_batch']}",
             f"  data: {sizes}; radar range axis {info['range_axis']}; TTA {'+'.join(info['tta_views'])}",
             f"  stages: {stages}"]
    if info.get("threads"):
        lines.insert(1, f"  CPU threads: {info['threads']}")
    lines += [f"  note: {n}" for n in info["notes"]]
    return "\n".join(lines[:1] + [_format_where(info)] + lines[1:])


def _where() -> dict:
    """Collective: each rank's host name, and the rendezvous head (MASTER_ADDR:MASTER_PORT) as
    that rank sees it ("" with one process): what to compare first when nodes do not meet."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT", "")
    head = f"{addr}:{port}" if addr else ""
    got = gather_object([(socket.gethostname(), head)])
    return {"hosts": [h for h, _ in got], "master": [m for _, m in got]}


def _format_where(info: dict) -> str:
    hosts, master = info.get("hosts", []), info.get("master", [])
    return "  hosts: " + ", ".join(f"rank {r} {h}" + (f" (head {m})" if m else "")
                                   for r, (h, m) in enumerate(zip(hosts, master)))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index or 0} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
