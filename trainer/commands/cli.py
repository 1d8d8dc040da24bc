"""The command-line parsers of `python -m trainer`, without torch: `--help` and a usage error
answer at once, before a command imports its heavy modules. Each command module parses its
argv with the parser built here, so the options have one home.

Every command that works on a run takes the run folder either way: `report RUN` or
`report --run RUN` (the same for resume, evaluate, predict and export).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from trainer.posthoc.names import classifier_names

SCORES = ("msp", "energy", "max_logit")   # trainer/evaluate/ood.py; higher = more likely a known class
MODEL = "model"


class RunParser(argparse.ArgumentParser):
    """A parser whose commands take the run folder as `RUN` or `--run RUN`."""

    def add_run(self, help: str = "run folder (holds config.yaml)") -> None:
        self.add_argument("run", nargs="?", type=Path, metavar="RUN", help=f"{help}; or --run RUN")
        self.add_argument("--run", dest="run_option", type=Path, metavar="RUN", help=argparse.SUPPRESS)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        a = super().parse_args(args, namespace)
        if hasattr(a, "run_option"):
            if a.run is not None and a.run_option is not None and a.run != a.run_option:
                self.error(f"two run folders given ({a.run} and --run {a.run_option}); give one")
            a.run = a.run if a.run is not None else a.run_option
            del a.run_option
            if a.run is None:
                self.error("the run folder is required: RUN or --run RUN")
        return a


def classifier_help() -> str:
    return ("model (the final stage's head, default) or a post-hoc classifier the run fitted: "
            + ", ".join(classifier_names()))


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer [train]", description=(
        "Train a recipe. The run folder is run.dir, by default a new runs/<recipe>/<YYYYmmdd-HHMMSS>; "
        "the same run.dir again continues that run."))
    p.add_argument("--config", required=True, metavar="RECIPE",
                   help="recipe file or built-in name (joint, two_stage, decoupled, three_stage, each also *_mini)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe (YAML) and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="check the recipe and the shards, print the start banner with every stage's length, "
                        "train nothing")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. data.shards=OUT stages.0.epochs=2 run.dir=runs/mine")
    return p


def resume_parser() -> RunParser:
    p = RunParser(prog="python -m trainer resume",
                  description="Continue a run from its last checkpoint, with the recipe it was started with.")
    p.add_run("run folder (holds config.yaml and checkpoints/)")
    return p


def evaluate_parser() -> RunParser:
    p = RunParser(prog="python -m trainer evaluate",
                  description="Evaluate a finished run's final model on a split of its shards.")
    p.add_run()
    p.add_argument("--split", default="val", help="val (default), test, or another split of the shards")
    p.add_argument("--json", action="store_true", help="print the whole evaluation as JSON")
    p.add_argument("--classifier", default=MODEL, help=classifier_help())
    return p


def predict_parser() -> RunParser:
    p = RunParser(prog="python -m trainer predict",
                  description="Classify a folder of chips with a finished run; writes a CSV.")
    p.add_run()
    p.add_argument("--images", required=True, help="folder of SAR_<id>.png (EO_<id>.png for an EO-only model)")
    p.add_argument("--eo-images", default=None, help="SAR+EO model: folder of EO_<id>.png (default: --images)")
    p.add_argument("--out", required=True, help="results CSV (image_id,class_id)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classifier", default=MODEL, help=classifier_help())
    p.add_argument("--score", choices=SCORES, default=None,
                   help="add a score column: how likely the chip is a known class (higher = more)")
    return p


def export_parser() -> RunParser:
    p = RunParser(prog="python -m trainer export", description=(
        "Write a self-contained model: uint8 chips [B, C, S, S] in; class id and score out "
        "(normalisation, classifier and TTA inside)."))
    p.add_run()
    p.add_argument("--classifier", default=MODEL, help=classifier_help())
    p.add_argument("--format", default="onnx", choices=["onnx", "torchscript"],
                   help="onnx (default; torch.export-based exporter) or torchscript")
    p.add_argument("--score", default="msp", choices=SCORES, help="the confidence score (default msp)")
    p.add_argument("--out", type=Path, default=None, help="file to write (default RUN/export/model-NAME.onnx|.pt)")
    return p


def report_parser() -> RunParser:
    p = RunParser(prog="python -m trainer report",
                  description="Write RUN/report/*.png and RUN/report/report.md for a run folder.")
    p.add_run("run folder (holds config.yaml and metrics.json)")
    p.add_argument("--max-per-class", type=int, default=200, help="validation chips per class in the feature plots")
    p.add_argument("--no-features", action="store_true", help="skip the feature projections")
    p.add_argument("--no-inference", action="store_true", help="skip the size/latency measurement")
    p.add_argument("--large-batch", type=int, default=256, help="the large batch for the latency figures")
    p.add_argument("--repeats", type=int, default=10, help="timed repeats per latency figure (median)")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda if available)")
    return p


def compare_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m trainer compare",
                                description="Run (or collect) recipes over seeds; write a mean ± std table.")
    p.add_argument("items", nargs="+", metavar="RECIPE|key=value",
                   help="recipe files or built-in names, then dotted overrides for every run")
    p.add_argument("--seeds", type=int, required=True, help="number of seeds per recipe (0..N-1)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--runs-root", type=Path, default=Path("runs/compare"), help="where the runs live")
    p.add_argument("--out", type=Path, default=None, help="where the table goes (default: --runs-root)")
    p.add_argument("--split", default="val", choices=["val", "test"], help="which final evaluation to tabulate")
    return p


COMMANDS = {   # name -> (parser, one line for `python -m trainer --help`)
    "train": (train_parser, "train a recipe (the default when --config is given)"),
    "resume": (resume_parser, "continue a run from its last checkpoint"),
    "evaluate": (evaluate_parser, "evaluate a finished run on a split"),
    "predict": (predict_parser, "classify a folder of chips into a CSV"),
    "export": (export_parser, "write a self-contained ONNX or TorchScript model"),
    "report": (report_parser, "a markdown report with plots"),
    "compare": (compare_parser, "recipes over seeds, a mean ± std table"),
    "bench": (None, "the trainer against plain PyTorch (e2e | step | gpu | latency)"),
}


def parse(name: str, argv: list[str]) -> argparse.Namespace:
    """Parse a command's argv (not bench: trainer/commands/bench_args.py); options may follow
    the overrides of train and compare."""
    parser = COMMANDS[name][0]()
    return parser.parse_intermixed_args(argv) if name in ("train", "compare") else parser.parse_args(argv)


def overview() -> str:
    lines = ["usage: python -m trainer COMMAND [options]   (python -m trainer COMMAND --help for each)",
             "       python -m trainer --config RECIPE [key=value ...]   (train)", "", "commands:"]
    lines += [f"  {name:<9} {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "examples:",
              "  python -m trainer --config joint_mini data.shards=data/mini/shards",
              "  python -m trainer --config joint_mini data.shards=data/mini/shards --dry-run",
              "  python -m trainer report runs/joint_mini/20261205-063001",
              "  python -m trainer predict RUN --images DIR --out results.csv",
              "  python -m trainer export RUN"]
    return "\n".join(lines)
