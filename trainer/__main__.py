"""`python -m trainer COMMAND …` (or `accelerate launch -m trainer …`); `--help` lists the
commands. The parsers live in trainer/commands/cli.py and need no torch, so `--help`, a usage
error or a bad recipe key answer before the heavy modules load."""
from __future__ import annotations

import sys

from shards.errors import exit_on_error
from trainer.commands import cli
from trainer.errors import USER_ERRORS


def _train(argv: list[str]) -> int:
    a = cli.parse("train", argv)
    from trainer.spec.config import dump_yaml, load_config

    cfg = load_config(a.config, a.overrides)
    if a.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if a.dry_run:
        from trainer.commands.dry_run import dry_run

        return dry_run(cfg)
    from trainer.run import train

    return train(cfg)


def _resume(argv: list[str]) -> int:
    a = cli.parse("resume", argv)
    from trainer.run import resume

    return resume(a.run)


def _evaluate(argv: list[str]) -> int:
    a = cli.parse("evaluate", argv)
    from trainer.commands.predict import evaluate_run

    return evaluate_run(a.run, a.split, as_json=a.json, classifier=a.classifier)


def _predict(argv: list[str]) -> int:
    a = cli.parse("predict", argv)
    from trainer.commands.predict import predict

    return predict(a.run, a.images, a.out, batch_size=a.batch_size, classifier=a.classifier, score=a.score,
                   eo_images=a.eo_images)


def _delegate(name: str, module: str):
    """A command whose module parses its own argv (with the parser from cli): parsed here first,
    so --help and usage errors need no import of the module."""
    def run(argv: list[str]) -> int:
        import importlib

        cli.parse(name, argv)
        return importlib.import_module(module).main(argv)
    return run


def _bench(argv: list[str]) -> int:
    from trainer.commands.bench_args import parse

    parse(argv)   # --help of every mode without torch
    from trainer.commands.bench import main

    return main(argv)


HANDLERS = {"train": _train, "resume": _resume, "evaluate": _evaluate, "predict": _predict, "bench": _bench,
            "report": _delegate("report", "trainer.commands.report"),
            "compare": _delegate("compare", "trainer.commands.compare"),
            "export": _delegate("export", "trainer.commands.export")}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(cli.overview(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] in HANDLERS:
        command, rest = argv[0], argv[1:]
    elif any(a == "--config" or a.startswith("--config=") for a in argv):
        command, rest = "train", argv
    else:
        print(f"error: unknown command {argv[0]!r}\n{cli.overview()}", file=sys.stderr)
        return 2
    return exit_on_error(lambda: HANDLERS[command](rest), USER_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
