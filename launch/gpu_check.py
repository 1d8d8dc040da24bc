"""The Python half of launch/gpu_check.sh (stdlib + torch only, so that it runs wherever the
check does):

  python launch/gpu_check.py compare-runs REF RUN --out R.json (--exact | --tolerance T)
      a run stopped by a signal and resumed, against an uninterrupted one: final metrics and
      every stage's weights; --exact asks for identical bits, --tolerance for test (else val)
      balanced accuracy within T. Exit 1 when it does not hold.
  python launch/gpu_check.py machine WORK
      imports what the project imports (a missing package fails, named) and notes the versions.
  python launch/gpu_check.py summary WORK OUT [--print STEP]
      WORK/steps.tsv and the steps' outputs -> OUT/summary.md and OUT/summary.json: each step
      `ok`, `skipped (why)` or `FAILED (why)`, and every number measured so far.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
from pathlib import Path

METRICS = ("top1", "balanced_acc")


def final_metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())["final"]


def weight_difference(ref: Path, run: Path) -> tuple[float, int]:
    """Largest |difference| over every tensor of every stage's model.pt, and tensors compared."""
    import torch

    worst, count = 0.0, 0
    for a in sorted((ref / "stages").glob("*/model.pt")):
        b = run / "stages" / a.parent.name / "model.pt"
        sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        if sorted(sa) != sorted(sb):
            raise ValueError(f"{b}: other tensors than {a}")
        for key, ta in sa.items():
            tb = sb[key]
            if torch.is_tensor(ta):
                diff = (ta.double() - tb.double()).abs().max().item() if ta.numel() else 0.0
                worst, count = max(worst, diff), count + 1
    return worst, count


def compare_runs(ref: Path, run: Path, exact: bool, tolerance: float) -> dict:
    a, b = final_metrics(ref), final_metrics(run)
    judged = "test" if "test" in a else "val"
    rows = [{"split": s, "metric": m, "uninterrupted": a[s][m], "resumed": b[s][m],
             "difference": abs(a[s][m] - b[s][m])}
            for s in ("val", "test") if s in a and s in b for m in METRICS]
    worst_weight, tensors = weight_difference(ref, run)
    identical = worst_weight == 0.0 and all(r["difference"] == 0.0 for r in rows) and a == b
    worst = max((r["difference"] for r in rows if r["split"] == judged), default=0.0)
    ok = identical if exact else worst <= tolerance
    return {"mode": "exact" if exact else "tolerance", "tolerance": None if exact else tolerance,
            "judged_split": judged, "rows": rows, "max_weight_difference": worst_weight,
            "tensors_compared": tensors, "bit_identical": identical, "ok": ok}


def compare_main(a: argparse.Namespace) -> int:
    result = compare_runs(Path(a.ref), Path(a.run), a.exact, a.tolerance)
    Path(a.out).write_text(json.dumps(result, indent=1))
    for line in resume_lines(result):
        print(line)
    return 0 if result["ok"] else 1


def resume_lines(r: dict) -> list[str]:
    lines = ["| split | metric | uninterrupted | resumed | difference |", "|---|---|---|---|---|"]
    lines += [f"| {x['split']} | {x['metric']} | {x['uninterrupted']:.4f} | {x['resumed']:.4f} | "
              f"{x['difference']:.4f} |" for x in r["rows"]]
    verdict = ("bit-identical" if r["bit_identical"] else "NOT bit-identical")
    lines += ["", f"Weights: largest difference {r['max_weight_difference']:.3g} over "
                 f"{r['tensors_compared']} tensors; final metrics and weights {verdict}."]
    if r["mode"] == "tolerance":
        lines.append(f"Judged: {r['judged_split']} balanced accuracy within {r['tolerance']}: "
                     f"{'yes' if r['ok'] else 'NO'}.")
    return lines


# -- summary ---------------------------------------------------------------------------------
def read_steps(work: Path) -> list[dict]:
    steps = []
    path = work / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, status, code, seconds, note = (line.split("\t") + [""] * 5)[:5]
        steps.append({"name": name, "status": status, "exit": code, "seconds": seconds, "note": note})
    return steps


def status_text(step: dict, log: Path) -> str:
    """ok | skipped (why) | FAILED (why): the why is the step's note, else its log's last error."""
    if step["status"] == "ok":
        return "ok"
    if step["status"] == "skipped":
        return f"skipped ({step['note'] or 'no reason given'})"
    first = f"timed out after {step['seconds']} s" if step["status"] == "timeout" else f"exit {step['exit']}"
    why = "; ".join(w for w in (last_error(log) or first, step["note"]) if w)
    if step["status"] == "timeout" and not why.startswith("timed out"):
        why = f"{first}; {why}"
    return f"FAILED ({why})"


def last_error(log: Path) -> str:
    if not log.is_file():
        return ""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.search(r"(Error|error:|FAILED|failed|Traceback|not |cannot)", ln) and not ln.startswith("{"):
            return ln[:300]
    return ""


def json_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def bench_section(work: Path) -> tuple[list[str], list[dict]]:
    rows = json_lines(work / "logs" / "bench_eager.log") + json_lines(work / "logs" / "bench_compiled.log")
    md = ["| batch | compile | trainer images/s | bare loop images/s | GFLOP/image | TFLOP/s | MFU (of bf16 peak) |",
          "|---|---|---|---|---|---|---|"]
    for r in rows:
        bare = f"{r['bare_images_per_s']:,.0f}" if r.get("bare_images_per_s") else "not run"
        mfu = f"{100 * r['mfu']:.1f}% of {r['peak_bf16_tflops']:.0f}" if r.get("mfu") is not None else "n/a"
        md.append(f"| {r['batch']} | {r['compile']} | {r['trainer_images_per_s']:,.0f} | {bare} | "
                  f"{r['train_gflops_per_image']:.2f} | {r['achieved_tflops']:.1f} | {mfu} |")
    return (md if rows else []), rows


def loader_section(work: Path) -> tuple[list[str], dict]:
    log = work / "logs" / "loaders.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    rates = {m.group(1).strip(): float(m.group(2)) for m in re.finditer(r"(?m)^(.+?):\s+([\d.]+) images/s", text)}
    keep = [ln for ln in text.splitlines() if re.search(r"images/s|^ratio |^stage-3|^resident:|^dali", ln)]
    return (["```", *keep, "```"] if keep else []), rates


def resume_section(work: Path, only: str | None = None) -> tuple[list[str], dict]:
    md, data = [], {}
    for name, title in (("resume_det", "speed.deterministic: true, stopped by SIGUSR2 and resumed"),
                        ("resume_nondet", "default speed settings (cuDNN autotuning), stopped and resumed"),
                        ("resume_dali", "DALI loader, speed.deterministic: true, stopped and resumed")):
        path = work / "results" / f"{name}.json"
        if path.is_file() and only in (None, name):
            data[name] = r = json.loads(path.read_text())
            stop = (work / "results" / f"{name}.stop").read_text().strip() if (work / "results" / f"{name}.stop").is_file() else ""
            md += [f"**{title}** {stop}", "", *resume_lines(r), ""]
    return md, data


def latency_section(work: Path) -> tuple[list[str], dict | None]:
    rows = json_lines(work / "logs" / "latency.log")
    if not rows:
        return [], None
    fig = rows[-1]
    md = [f"{fig['model']['name']}-{fig['model']['depth']} {fig['model']['width']}d, untrained weights, "
          f"{fig['input_size']} px, fp32, {fig['device']}; TTA = {fig['tta_views']} views.", "",
          "| batch | TTA views | ms per chip | chips/s |", "|---|---|---|---|"]
    for key, sec in fig["latency_s_per_chip"].items():
        views = key.split("_tta")[1] if "_tta" in key else "1"
        md.append(f"| {key.split('_')[1]} | {views} | {1000 * sec:.3f} | {1 / sec:,.0f} |")
    return md, fig


def tests_section(work: Path, name: str) -> tuple[list[str], str | None]:
    log = work / "logs" / f"{name}.log"
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    last = next((ln for ln in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|error)", ln)), None)
    skips = [ln for ln in lines if ln.startswith("SKIPPED")][:8]
    return ([f"`{last}`", *[f"- {s}" for s in skips]] if last else []), last


def machine(work: Path) -> dict:
    info_file = work / "results" / "machine.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info.setdefault("host", platform.node())
    return info


def summary_main(a: argparse.Namespace) -> int:
    work, out = Path(a.work), Path(a.out)
    phase, smoke = os.environ.get("PHASE", "core"), os.environ.get("SMOKE") == "1"
    steps = read_steps(work)
    for s in steps:
        s["status_text"] = status_text(s, work / "logs" / f"{s['name']}.log")
    info = machine(work)
    md = [f"# GPU check, {phase} phase" + (" (--cpu-smoke: tiny sizes on the CPU)" if smoke else ""), "",
          "- machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
          f"- budget {os.environ.get('BUDGET', '?')} s, {os.environ.get('ELAPSED', '?')} s used so far; "
          "logs: logs.tar.gz beside this file", "",
          "| step | status | seconds | notes |", "|---|---|---|---|"]
    md += [f"| {s['name']} | {s['status_text']} | {s['seconds']} | {s['note'] if s['status'] == 'ok' else ''} |"
           for s in steps]
    results: dict = {}
    sections = [("Training throughput and MFU: Shake-Shake-26 2x32d, 56 px, bf16", bench_section(work), "bench"),
                ("Loader throughput, stage-3 augmentation (`python -m datasets bench`)", loader_section(work), "loaders"),
                ("Preemption and resume", resume_section(work), "resume"),
                ("Inference latency", latency_section(work), "latency"),
                ("GPU tests", tests_section(work, "gpu_tests"), "gpu_tests"),
                ("DALI tests", tests_section(work, "dali_tests"), "dali_tests")]
    for title, (lines, data), key in sections:
        if lines:
            md += ["", f"## {title}", "", *lines]
            results[key] = data
    out.mkdir(parents=True, exist_ok=True)
    summary = {"phase": phase, "smoke": smoke, "machine": info, "budget_s": os.environ.get("BUDGET"),
               "elapsed_s": os.environ.get("ELAPSED"), "steps": steps, "results": results}
    for name, text in (("summary.md", "\n".join(md) + "\n"), ("summary.json", json.dumps(summary, indent=1))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(out / name)
    if a.print:   # the step just finished, and its numbers, on stdout as soon as they exist
        row = next((s for s in steps if s["name"] == a.print), None)
        print(f"   {a.print}: {row['status_text'] if row else 'not run'} ({row['seconds'] if row else 0} s)")
        key = next((k for k in ("bench", "loaders", "latency", "gpu_tests", "dali_tests") if a.print.startswith(k)), None)
        lines = next((ln for _, (ln, _), k in sections if k == key), [])
        if a.print.startswith("resume"):
            lines = resume_section(work, only=a.print)[0]
        print("\n".join(("   " + ln).rstrip() for ln in lines))
    return 0


def machine_main(a: argparse.Namespace) -> int:
    """Import what the project imports (a missing one fails here, named), note the versions."""
    import accelerate, braceexpand, numpy, PIL, torch, torchvision, webdataset, yaml  # noqa: F401, E401
    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none",
            "cpus": os.cpu_count(), "webdataset": getattr(webdataset, "__version__", "?")}
    (Path(a.work) / "results" / "machine.json").write_text(json.dumps(info))
    print(info)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python launch/gpu_check.py")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare-runs")
    c.add_argument("ref")
    c.add_argument("run")
    c.add_argument("--out", required=True)
    c.add_argument("--exact", action="store_true")
    c.add_argument("--tolerance", type=float, default=0.0)
    s = sub.add_parser("summary")
    s.add_argument("work")
    s.add_argument("out")
    s.add_argument("--print", help="also print this step's status and numbers")
    m = sub.add_parser("machine")
    m.add_argument("work")
    a = p.parse_args(argv)
    return {"compare-runs": compare_main, "summary": summary_main, "machine": machine_main}[a.command](a)


if __name__ == "__main__":
    sys.exit(main())
