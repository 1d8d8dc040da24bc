"""`python -m trainer compare RECIPE... --seeds N [key=value ...]`: recipes side by side.

Each recipe runs with seeds 0..N-1 (as `python -m trainer --config R seed=S run.dir=ROOT/<recipe>-s<S>
<overrides>` subprocesses, one after another), or an existing run is collected when its
metrics.json exists and its config.yaml equals what the command would resolve. Then a table of
mean ± std over seeds of top-1, balanced accuracy and head/middle/tail accuracy is written as
markdown and CSV (one row per recipe, plus one per post-hoc classifier, e.g. `decoupled/crt`),
with a bar chart that has the std as error bars.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

from shards.atomic import write_atomic
from shards.errors import exit_on_error
from trainer.commands import plots
from trainer.commands.cli import compare_parser
from trainer.spec.config import config_differences, load_config, load_run_config, recipe_path
from trainer.errors import USER_ERRORS, ConfigError, TrainingError
from trainer.summary import headline

METRICS = ("top1", "balanced_acc", "head", "middle", "tail")
HEADERS = {"top1": "top-1", "balanced_acc": "balanced acc", "head": "head", "middle": "middle", "tail": "tail"}
# minutes: wall time of the whole run (its post-hoc classifiers included), shown once per recipe
# Keys of the resolved config that may differ between the command and an existing run.
IGNORED_KEYS = ("run.dir",)


def run_dir(root: Path, name: str, seed: int) -> Path:
    return root / f"{name}-s{seed}"


def run_args(seed: int, out: Path, overrides: list[str]) -> list[str]:
    return [f"seed={seed}", f"run.dir={out}", *overrides]


def launch(recipe: Path, seed: int, out: Path, overrides: list[str], log: Path) -> int:
    """Train one run in a subprocess, its output in `log`; returns the exit code."""
    cmd = [sys.executable, "-m", "trainer", "--config", str(recipe), *run_args(seed, out, overrides)]
    with open(log, "w") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode


def ensure_run(recipe: Path, seed: int, root: Path, overrides: list[str]) -> tuple[Path, bool]:
    """The run folder of (recipe, seed), trained now unless a matching finished run exists.
    Returns (folder, trained_now). A folder whose config differs is an error, never overwritten."""
    out = run_dir(root, recipe.stem, seed)
    want = load_config(str(recipe), run_args(seed, out, overrides))
    if (out / "config.yaml").is_file():
        diffs = [d for d in config_differences(want, load_run_config(out))
                 if not d.startswith(IGNORED_KEYS)]
        if diffs:
            raise ConfigError(f"{out}: exists with another config ({'; '.join(diffs[:3])}); "
                              "remove it or pass another --runs-root")
        if (out / "metrics.json").is_file():
            return out, False
    log = root / f"{recipe.stem}-s{seed}.log"
    root.mkdir(parents=True, exist_ok=True)
    print(f"training {recipe.stem} seed {seed} -> {out} (log {log})", file=sys.stderr, flush=True)
    code = launch(recipe, seed, out, overrides, log)
    if code != 0 or not (out / "metrics.json").is_file():
        tail = log.read_text().strip().splitlines()[-1:] if log.is_file() else []
        raise TrainingError(f"{recipe.stem} seed {seed}: training failed (exit {code}); log {log}"
                            + (f": {tail[0]}" if tail else ""))
    return out, True


def read_eval(run: Path, split: str) -> dict:
    path = run / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: unreadable ({e})") from None
    ev = (metrics.get("final") or {}).get(split)
    if not ev:
        raise ConfigError(f"{path}: no final.{split} (splits: {', '.join(metrics.get('final') or {}) or 'none'})")
    return ev


def _wall_s(folder: Path) -> float:
    """Seconds the run took (run.json; runs of this session's first builds kept it in metrics.json)."""
    for name in ("run.json", "metrics.json"):
        path = folder / name
        if path.is_file() and "wall_s" in (record := json.loads(path.read_text())):
            return float(record["wall_s"])
    return math.nan


def collect_rows(runs: dict[str, list[Path]], split: str) -> dict[str, list[dict[str, float]]]:
    """Row name -> one value dict per seed: the recipe's final model, and `recipe/classifier`
    for every post-hoc classifier the runs report."""
    rows: dict[str, list[dict[str, float]]] = {}
    for name, folders in runs.items():
        for folder in folders:
            ev = read_eval(folder, split)
            minutes = _wall_s(folder) / 60
            rows.setdefault(name, []).append({**headline(ev), "minutes": minutes})
            for clf, cev in sorted((ev.get("classifiers") or {}).items()):
                rows.setdefault(f"{name}/{clf}", []).append(headline(cev))
    return rows


def group_note(runs: dict[str, list[Path]], split: str) -> str:
    """Which classes the head/middle/tail columns cover, as the first run defines them."""
    first = next(iter(runs.values()))[0]
    gc = read_eval(first, split).get("group_classes") or {}
    parts = [f"{g} = classes {', '.join(map(str, gc[g])) or 'none'}" for g in METRICS[2:] if g in gc]
    return f"Groups (count-relative, from {first.name}): {'; '.join(parts)}." if parts else ""


def summarise(values: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """metric -> (mean, std) over seeds; std is the sample std (ddof=1), 0 for one seed; NaN
    seeds (an empty group) are left out."""
    out = {}
    for m in (*METRICS, "minutes"):
        v = np.array([x.get(m, math.nan) for x in values], dtype=float)
        v = v[~np.isnan(v)]
        mean = float(v.mean()) if len(v) else math.nan
        std = float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) else math.nan)
        out[m] = (mean, std)
    return out


def table_markdown(stats: dict[str, dict[str, tuple[float, float]]], counts: dict[str, int],
                   split: str, command: str, note: str = "") -> str:
    head = ["recipe", "seeds", *[HEADERS[m] for m in METRICS], "minutes"]
    lines = [f"Final-model accuracy on `{split}` (%), mean ± std over seeds; minutes of wall time per run.", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, st in stats.items():
        cells = ["–" if math.isnan(st[m][0]) else f"{100 * st[m][0]:.1f} ± {100 * st[m][1]:.1f}" for m in METRICS]
        minutes = st.get("minutes", (math.nan, 0))[0]
        cells.append("" if "/" in name or math.isnan(minutes) else f"{minutes:.1f}")
        lines.append(f"| {name} | {counts[name]} | " + " | ".join(cells) + " |")
    lines += ["", *([note, ""] if note else []), f"Produced by: `{command}`"]
    return "\n".join(lines) + "\n"


def table_csv(stats: dict[str, dict[str, tuple[float, float]]], counts: dict[str, int]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["recipe", "seeds", *[f"{m}_{s}" for m in METRICS for s in ("mean", "std")]])
    for name, st in stats.items():
        w.writerow([name, counts[name], *[repr(st[m][i]) for m in METRICS for i in (0, 1)]])
    return buf.getvalue()



def write_outputs(rows: dict[str, list[dict[str, float]]], out: Path, split: str, command: str,
                  note: str = "") -> list[Path]:
    stats = {name: summarise(vals) for name, vals in rows.items()}
    counts = {name: len(vals) for name, vals in rows.items()}
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compare.md", table_markdown(stats, counts, split, command, note))
    write_atomic(out / "compare.csv", table_csv(stats, counts))
    means = {n: {m: s[m][0] for m in METRICS} for n, s in stats.items()}
    stds = {n: {m: s[m][1] for m in METRICS} for n, s in stats.items()}
    seeds = max(counts.values())
    plots.metric_bars(out / "compare.png", means, METRICS,
                      f"Recipes compared on {split} (mean ± std over {seeds} seed{'s' * (seeds > 1)})",
                      errors=stds, labels=HEADERS)
    return [out / "compare.md", out / "compare.csv", out / "compare.png"]


def split_args(items: list[str]) -> tuple[list[str], list[str]]:
    """Recipes are the arguments without '=', overrides the ones with it."""
    recipes = [x for x in items if "=" not in x]
    overrides = [x for x in items if "=" in x]
    for o in overrides:
        if o.split("=", 1)[0] in ("seed", "run.dir"):
            raise ConfigError(f"override {o!r}: compare sets seed and run.dir itself (use --seeds / --runs-root)")
    if not recipes:
        raise ConfigError("compare: name at least one recipe")
    return recipes, overrides


def main(argv: list[str]) -> int:
    args = compare_parser().parse_intermixed_args(argv)  # overrides may follow the options
    return exit_on_error(lambda: _compare(args, argv), USER_ERRORS)


def _compare(args: argparse.Namespace, argv: list[str]) -> int:
    if args.seeds < 1:
        raise ConfigError(f"--seeds: must be >= 1, got {args.seeds}")
    recipes, overrides = split_args(args.items)
    paths = [recipe_path(r) for r in recipes]
    names = [q.stem for q in paths]
    if len(set(names)) != len(names):
        raise ConfigError(f"compare: recipe names repeat ({', '.join(names)}); run folders would collide")
    runs = {q.stem: [ensure_run(q, s, args.runs_root, overrides)[0]
                     for s in range(args.first_seed, args.first_seed + args.seeds)] for q in paths}
    command = shlex.join(["python", "-m", "trainer", "compare", *argv])
    written = write_outputs(collect_rows(runs, args.split), args.out or args.runs_root, args.split, command,
                            group_note(runs, args.split))
    print((written[0]).read_text(), end="")
    return 0
