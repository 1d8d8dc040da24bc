"""The command line answers fast: --help of every command and a bad recipe key come before
torch loads; --print-config and --dry-run; one convention for the run folder argument."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from trainer.commands import cli
from trainer_helpers import PYTHON, REPO, build_tiny

HELP = [["--help"], *([c, "--help"] for c in cli.COMMANDS), ["bench", "step", "--help"],
        ["bench", "gpu", "--help"], ["bench", "latency", "--help"]]
NO_TORCH = """
import sys
from trainer.__main__ import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
assert "torch" not in sys.modules and "accelerate" not in sys.modules, "heavy modules imported"
sys.exit(code)
"""


def run_light(args: list[str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    r = subprocess.run([PYTHON, "-c", NO_TORCH, *args], capture_output=True, text=True, env=env,
                       cwd=cwd or REPO, timeout=60)
    return r, time.perf_counter() - start


@pytest.mark.parametrize("args", HELP, ids=" ".join)
def test_help_answers_without_torch(args):
    r, seconds = run_light(args)
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and "→" not in r.stdout and "trainer.commands" not in r.stdout
    assert seconds < 4, f"{args}: {seconds:.1f} s"


def test_a_typo_in_the_recipe_answers_without_torch():
    for key, valid in (("optim.lrr=1", "valid keys at optim: lr,"), ("posthoc.crtt.lr=1", "crt, logit_adjust"),
                       ("stages.0.samplr.kind=class", "did you mean 'sampler'")):
        r, seconds = run_light(["--config", "joint_mini", "data.shards=/nowhere", key])
        assert r.returncode == 2 and valid in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert seconds < 4


def test_usage_errors_are_one_line_and_exit_2():
    r, _ = run_light(["report"])
    assert r.returncode == 2 and "the run folder is required: RUN or --run RUN" in r.stderr
    r, _ = run_light(["report", "a", "--run", "b"])
    assert r.returncode == 2 and "two run folders given" in r.stderr


@pytest.mark.parametrize("command", ["resume", "evaluate", "report", "export"])
def test_run_folder_positional_or_option(command):
    parser = cli.COMMANDS[command][0]()
    assert parser.parse_args(["R"]).run == Path("R")
    assert parser.parse_args(["--run", "R"]).run == Path("R")
    p = cli.predict_parser()
    assert p.parse_args(["R", "--images", "I", "--out", "o.csv"]).run == Path("R")
    assert p.parse_args(["--run", "R", "--images", "I", "--out", "o.csv"]).run == Path("R")


def test_cli_lists_agree_with_the_code():
    from trainer.evaluate.ood import SCORES
    from trainer.posthoc.registry import table

    assert tuple(cli.SCORES) == tuple(SCORES)
    assert list(cli.classifier_names()) == list(table())


def test_print_config_is_the_resolved_recipe(capsys):
    from trainer.__main__ import main

    assert main(["--config", "joint_mini", "data.shards=/x", "optim.lr=0.3", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["optim"]["lr"] == 0.3 and cfg["posthoc"]["crt"]["lr"] > 0


@pytest.mark.slow
def test_dry_run_prints_every_stage_and_writes_nothing(tmp_path):
    shards = build_tiny(tmp_path / "data", with_test=False)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([PYTHON, "-m", "trainer", "--config", "two_stage_mini", f"data.shards={shards}",
                        "stages.1.epochs=3", "--dry-run"], capture_output=True, text=True, env=env, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "stages: " in r.stdout and "dry run: recipe and shards check out" in r.stdout
    assert "(3 ep ×" in r.stdout
    assert not (tmp_path / "runs").exists()
    other = subprocess.run([PYTHON, "-m", "trainer", "--config", "two_stage_mini", f"data.shards={shards}",
                            "--dry-run"], capture_output=True, text=True, env={**env, "RANK": "1", "WORLD_SIZE": "2"},
                           cwd=tmp_path, timeout=300)
    assert other.returncode == 0 and other.stdout == "", other.stdout   # under a launcher, rank 0 alone prints
    bad = subprocess.run([PYTHON, "-m", "trainer", "--config", "joint_mini", f"data.shards={tmp_path / 'none'}",
                          "--dry-run"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 2 and "error:" in bad.stderr


def test_launcher_precision_is_refused_when_it_differs_from_the_recipe(monkeypatch):
    from trainer.errors import ConfigError
    from trainer.preflight import check_launcher_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    check_launcher_precision("auto", "no")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")   # launch/accelerate/*.yaml: the recipe decides
    check_launcher_precision("bf16", "bf16")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    check_launcher_precision("auto", "bf16")                  # the same: nothing to refuse
    with pytest.raises(ConfigError, match="the recipe decides the precision .*optim.precision=bf16"):
        check_launcher_precision("auto", "no")
