"""`python -m trainer …` (or `accelerate launch -m trainer …`).

  train      --config RECIPE [key=value …]   (the default when --config is given)
  resume     RUN
  evaluate   --run RUN [--split val|test] [--classifier NAME]
  predict    --run RUN --images DIR --out results.csv [--classifier NAME]
  bench      [options]                       trainer overhead vs a bare PyTorch loop
  export     --run RUN [--classifier NAME] --format onnx|torchscript [--score msp|energy|max_logit]
  report     RUN [options]                   a markdown report with plots
  compare    RECIPE … --seeds N              recipes over seeds, a mean ± std table
"""
from __future__ import annotations

import argparse
import sys

from shards.errors import exit_on_error
from trainer.errors import USER_ERRORS



def classifier_help() -> str:
    from trainer.posthoc.registry import table

    return ("model (the final stage's head, default) or a post-hoc classifier the run fitted: "
            + ", ".join(table()))

USAGE = ("usage: python -m trainer [train] --config RECIPE [key=value ...]\n"
         "       python -m trainer {resume RUN | evaluate --run RUN [--split S] | "
         "predict --run RUN --images DIR --out CSV | export --run RUN | bench | report ... | compare ...}")


def _train(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer train")
    p.add_argument("--config", required=True, help="recipe file or built-in name (joint, three_stage_mini, …)")
    p.add_argument("overrides", nargs="*", help="dotted key=value, e.g. data.shards=OUT stages.0.epochs=2")
    a = p.parse_args(argv)
    from trainer.spec.config import load_config
    from trainer.run import train

    return train(load_config(a.config, a.overrides))


def _resume(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer resume")
    p.add_argument("run", help="run folder (holds config.yaml and checkpoints/)")
    a = p.parse_args(argv)
    from trainer.run import resume

    return resume(a.run)


def _evaluate(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer evaluate")
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val", help="val (default) or test")
    p.add_argument("--json", action="store_true", help="print the EVAL dict as JSON")
    p.add_argument("--classifier", default="model", help=classifier_help())
    a = p.parse_args(argv)
    from trainer.commands.predict import evaluate_run

    return evaluate_run(a.run, a.split, as_json=a.json, classifier=a.classifier)


def _predict(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer predict")
    p.add_argument("--run", required=True)
    p.add_argument("--images", required=True, help="folder of SAR_<id>.png (EO_<id>.png for an EO-only model)")
    p.add_argument("--eo-images", default=None, help="SAR+EO model: folder of EO_<id>.png (default: --images)")
    p.add_argument("--out", required=True, help="results.csv (image_id,class_id)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--classifier", default="model", help=classifier_help())
    p.add_argument("--score", choices=["msp", "energy", "max_logit"], default=None,
                   help="add a score column: how likely the chip is a known class (higher = more)")
    a = p.parse_args(argv)
    from trainer.commands.predict import predict

    return predict(a.run, a.images, a.out, batch_size=a.batch_size, classifier=a.classifier, score=a.score,
                   eo_images=a.eo_images)


def _bench(argv: list[str]) -> int:
    from trainer.commands.bench import main

    return main(argv)


def _delegate(module: str):
    def run(argv: list[str]) -> int:
        import importlib

        return importlib.import_module(module).main(argv)
    return run


HANDLERS = {"train": _train, "resume": _resume, "evaluate": _evaluate, "predict": _predict,
            "bench": _bench, "report": _delegate("trainer.commands.report"), "compare": _delegate("trainer.commands.compare"),
            "export": _delegate("trainer.commands.export")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n" + (__doc__ or ""))
        return 0 if argv else 2
    if argv[0] in HANDLERS:
        command, rest = argv[0], argv[1:]
    elif any(a == "--config" or a.startswith("--config=") for a in argv):
        command, rest = "train", argv
    else:
        print(f"error: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
        return 2
    return exit_on_error(lambda: HANDLERS[command](rest), USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
