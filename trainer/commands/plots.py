"""Figures for `trainer report` and `trainer compare`: one function per figure, each writes one PNG.

Every function takes plain data (lists, numpy arrays, dicts), so it can be tested without a run.
Matplotlib runs on the Agg backend: no display is needed, and nothing here touches pyplot's global
state beyond the figure it creates and closes.
"""
from __future__ import annotations

import textwrap

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from shards.atomic import atomic_path  # noqa: E402

DPI = 110
# Shading of the count-relative groups behind per-class bars.
GROUP_SHADES = {"head": "#dbe9f6", "middle": "#fdebd0", "tail": "#f5d5d5"}


def class_colours(n: int) -> list:
    """Class 0 red (as in Figure 2 of Li, Tan & Pan, NTIRE 2021), the others distinct colours that are not red."""
    tab10 = [c for i, c in enumerate(plt.get_cmap("tab10").colors) if i != 3]  # 3 is red
    tab20 = [c for i, c in enumerate(plt.get_cmap("tab20").colors) if i not in (6, 7)]  # reds
    pool = tab10 + [c for c in tab20 if c not in tab10]
    return [to_rgba("red")] + [pool[(i - 1) % len(pool)] for i in range(1, n)]


def _save(fig, path: Path) -> Path:
    """Write atomically: a reader never sees a half-written PNG."""
    path = Path(path)
    try:
        with atomic_path(path, durable=False) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    finally:
        plt.close(fig)
    return path


def per_class_accuracy(path: Path, class_labels: Sequence[str], counts: Sequence[int] | None,
                       series: dict[str, Sequence[float]], groups: dict[str, Sequence[int]] | None,
                       title: str = "Per-class validation accuracy after each stage") -> Path:
    """Grouped bars: one group per class (ordered by training count, largest first), one bar per
    series (stage). Head/middle/tail are shaded behind the bars and named at the top."""
    n = len(class_labels)
    order = list(np.argsort(-np.asarray(counts), kind="stable")) if counts is not None else list(range(n))
    names = list(series)
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(max(8.0, 0.9 * n + 3), 5.0))
    x = np.arange(n)
    if groups:
        pos = {c: i for i, c in enumerate(order)}
        for gname, members in groups.items():
            for c in members:
                if c in pos:
                    ax.axvspan(pos[c] - 0.5, pos[c] + 0.5, color=GROUP_SHADES.get(gname, "#eeeeee"), zorder=0)
        for gname, members in groups.items():
            xs = [pos[c] for c in members if c in pos]
            if xs:
                ax.text(np.mean(xs), 0.99, gname, ha="center", va="top", fontsize=10, fontweight="bold",
                        transform=ax.get_xaxis_transform())
    cmap = plt.get_cmap("viridis")
    for k, name in enumerate(names):
        acc = np.asarray(series[name], dtype=float)
        # Stop short of viridis' pale yellow end, which vanishes on the shaded background.
        colour = cmap(0.85 * k / max(len(names) - 1, 1)) if len(names) > 1 else cmap(0.3)
        ax.bar(x - 0.4 + width * (k + 0.5), 100 * acc[order], width, label=name, color=colour, zorder=2)
    # Wrap long class names ("8 pickup truck with trailer") so neighbouring labels never overlap.
    ticks = [textwrap.fill(class_labels[c], 14) + (f"\n(n={counts[c]})" if counts is not None else "")
             for c in order]
    ax.set_xticks(x, ticks, fontsize=8, rotation=30 if n > 12 else 0)
    ax.set_xlim(-0.5, n - 0.5)
    ax.set_ylim(0, 115)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel("accuracy (%)")
    ax.set_xlabel("class (ordered by training count)")
    ax.set_title(title, pad=22)
    ax.grid(axis="y", alpha=0.3, zorder=1)
    ax.legend(title="after stage", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def confusion_matrix(path: Path, class_labels: Sequence[str], confusion: np.ndarray,
                     title: str = "Confusion matrix of the final model (row-normalised)",
                     split: str = "validation") -> Path:
    """Rows = true class, normalised so each row sums to 1; every cell annotated."""
    cm = np.asarray(confusion, dtype=float)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(class_labels)
    side = max(5.0, 0.6 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7 if n > 10 else 8,
                    color="white" if norm[i, j] > 0.55 else "black")
    ax.set_xticks(range(n), class_labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), [f"{c} (n={int(r)})" for c, r in zip(class_labels, rows[:, 0])], fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel(f"true class ({split} count)")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    return _save(fig, path)


def feature_projection(path: Path, panels: list[tuple[str, np.ndarray, np.ndarray]],
                       class_labels: Sequence[str], method: str = "PCA") -> Path:
    """Figure 2 of Li, Tan & Pan (NTIRE 2021): one scatter panel per stage of 2-D projected features, class 0 red.

    panels: (title, points [N, 2], labels [N]). The legend sits outside the panels."""
    colours = class_colours(len(class_labels))
    k = len(panels)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k + 1.8, 4.4), squeeze=False)
    for ax, (title, pts, labels) in zip(axes[0], panels):
        # Draw class 0 last so the red points are not hidden under the many other classes' points.
        for c in sorted(set(labels.tolist()), key=lambda c: (c == 0, c)):
            sel = labels == c
            ax.scatter(pts[sel, 0], pts[sel, 1], s=7 if len(labels) > 400 else 18, alpha=0.7,
                       color=colours[c], linewidths=0,
                       label=class_labels[c])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(f"{method} 1")
        ax.set_ylabel(f"{method} 2")
        ax.tick_params(labelsize=7)
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours[c], label=class_labels[c])
               for c in range(len(class_labels))]
    fig.legend(handles=handles, title="class", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(f"Penultimate-layer features of validation chips after each stage ({method}; class 0 red)")
    fig.tight_layout()
    return _save(fig, path)


def training_curves(path: Path, history: list[dict], stage_names: dict[int, str]) -> Path:
    """Loss, learning rate and validation accuracy against the global step, with dashed vertical
    lines at the stage boundaries; lines are broken between stages (each stage is its own run
    of the optimizer and schedule)."""
    xs = global_steps(history)
    fig, axes = plt.subplots(3, 1, figsize=(10, 8.5), sharex=True)
    curves = [  # (panel, key, kind, style, colour, label, scale)
        (0, "loss", "train", "-", "tab:blue", "train loss", 1),
        (0, "loss", "val", "o-", "tab:orange", "val loss", 1),
        (1, "lr", "train", "-", "tab:green", "learning rate", 1),
        (2, "balanced_acc", "val", "o-", "tab:blue", "val balanced accuracy", 100),
        (2, "top1", "val", "s--", "grey", "val top-1", 100),
    ]
    for panel, key, kind, style, colour, label, scale in curves:
        ax, first = axes[panel], True
        for stage in sorted({r.get("stage") for r in history}, key=str):
            pts = [(x, r[key]) for x, r in zip(xs, history) if r.get("stage") == stage
                   and r.get("kind") == kind and isinstance(r.get(key), (int, float))]
            if pts:
                px, py = np.array(pts, dtype=float).T
                # Short runs log few points: mark them, or a one-point stage would be invisible.
                marker = {} if "o" in style or "s" in style or len(px) > 40 else {"marker": "."}
                ax.plot(px, scale * py, style, ms=4, lw=1.2, color=colour, label=label if first else None,
                        **marker)
                first = False
    for ax, ylabel in zip(axes, ["loss", "learning rate", "val accuracy (%)"]):
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    bounds = stage_starts(history, xs)
    for ax in axes:
        for x0 in bounds.values():
            ax.axvline(x0, color="black", ls="--", lw=0.8, alpha=0.6)
    for s, x0 in bounds.items():
        axes[0].text(x0, 1.02, f" {s}: {stage_names.get(s, '')}", transform=axes[0].get_xaxis_transform(),
                     fontsize=8, ha="left", va="bottom")
    axes[-1].set_xlabel("optimizer step (global, across stages)")
    fig.suptitle("Training curves per stage (dashed lines: stage starts)", y=1.0)
    fig.tight_layout()
    return _save(fig, path)


def global_steps(history: list[dict]) -> list[float]:
    """A monotone x for every history record: `global_step` (or `step`) if it keeps growing across
    stages, otherwise offset by where the previous stages ended; else `epoch`."""
    xs: list[float] = []
    offset, stage_max, current = 0.0, 0.0, None
    for r in history:
        stage = r.get("stage")
        raw = r.get("global_step", r.get("step", r.get("epoch", len(xs))))
        raw = float(raw) if isinstance(raw, (int, float)) else float(len(xs))
        if stage != current:
            if current is not None and raw + offset < stage_max:
                offset = stage_max  # this stage restarted its own step count
            current = stage
        x = raw + offset
        stage_max = max(stage_max, x)
        xs.append(x)
    return xs


def stage_starts(history: list[dict], xs: list[float]) -> dict[int, float]:
    """Where each stage begins: where the previous stage's records end (records are logged after
    their step, so a stage's first record is not its start); stage 0 starts at 0."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for x, r in zip(xs, history):
        s = r.get("stage")
        if isinstance(s, int):
            first[s] = min(first.get(s, x), x)
            last[s] = max(last.get(s, x), x)
    starts, prev_end = {}, None
    for s in sorted(first):
        starts[s] = min(0.0, first[s]) if prev_end is None else prev_end
        prev_end = last[s]
    return starts


def tau_curve(path: Path, curve: Sequence[Sequence[float]], chosen: float | None,
              metric: str = "balanced accuracy") -> Path:
    """τ-normalisation search: validation score against τ, the chosen τ marked."""
    arr = np.asarray(curve, dtype=float)
    order = np.argsort(arr[:, 0])
    tau, score = arr[order, 0], arr[order, 1]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(tau, 100 * score, "o-", ms=3, label="validation")
    if chosen is not None:
        best = score[np.argmin(np.abs(tau - chosen))]
        ax.axvline(chosen, color="red", ls="--", lw=1)
        ax.plot([chosen], [100 * best], "r*", ms=12, label=f"chosen τ = {chosen:g}")
    ax.set_xlabel("τ (weight norm exponent)")
    ax.set_ylabel(f"val {metric} (%)")
    ax.set_title("τ-normalisation: search on the validation split")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def metric_bars(path: Path, rows: dict[str, dict[str, float]], metrics: Sequence[str], title: str,
                errors: dict[str, dict[str, float]] | None = None, ylabel: str = "accuracy (%)",
                labels: dict[str, str] | None = None) -> Path:
    """Grouped bars: one group per row (classifier or recipe), one bar per metric, optional error
    bars (std over seeds). Values are fractions 0..1 and drawn as %; NaN bars are left out."""
    names = list(rows)
    width = 0.8 / len(metrics)
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(7.0, 1.3 * len(names) * max(1, len(metrics) / 3) + 2.5), 4.8))
    x = np.arange(len(names))
    top = 100.0
    for k, m in enumerate(metrics):
        vals = np.array([rows[n].get(m, np.nan) for n in names], dtype=float) * 100
        err = None
        if errors is not None:
            err = np.array([errors[n].get(m, 0.0) for n in names], dtype=float) * 100
        ax.bar(x - 0.4 + width * (k + 0.5), vals, width, yerr=err, capsize=3 if err is not None else 0,
               label=(labels or {}).get(m, m), color=cmap(k % 10), zorder=2)
        top = max(top, np.nanmax(np.append(vals + (err if err is not None else 0), 0)))
    ax.set_xticks(x, names, rotation=20 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, top + 5)  # room for error bars that reach past 100 %
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3, zorder=1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    return _save(fig, path)


def score_histograms(path: Path, known: dict[str, np.ndarray], unknown: dict[str, np.ndarray],
                     aurocs: dict[str, float]) -> Path:
    """One panel per OOD score: histograms of known (in-distribution) and unknown chips."""
    kinds = list(known)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        both = np.concatenate([known[kind], unknown[kind]])
        bins = np.linspace(both.min(), both.max() + 1e-9, 40)
        ax.hist(known[kind], bins=bins, alpha=0.6, density=True, label="known classes", color="tab:blue")
        ax.hist(unknown[kind], bins=bins, alpha=0.6, density=True, label="unknown (ood)", color="tab:red")
        ax.set_title(f"{kind}: AUROC {aurocs[kind]:.3f}")
        ax.set_xlabel("score (higher = more likely known)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)
