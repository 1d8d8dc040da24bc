"""Run folders: a fresh dated folder by default, run.dir to choose, explicit resume, and a
moved or copied run folder that still resumes."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from trainer.__main__ import main
from trainer.spec.config import config_differences, fresh_run_dir, load_config
from trainer_helpers import TINY, build_tiny


def test_default_run_folder_is_fresh_and_dated(tmp_path):
    now = time.mktime((2026, 12, 5, 6, 30, 1, 0, 0, -1))
    first = fresh_run_dir("joint_mini", tmp_path, now)
    assert first == tmp_path / "joint_mini" / "20261205-063001"
    first.mkdir(parents=True)
    assert fresh_run_dir("joint_mini", tmp_path, now) == tmp_path / "joint_mini" / "20261205-063001-2"


def test_run_dir_and_log_every_are_not_recipe_differences():
    a = load_config("joint_mini", ["data.shards=/x", "run.dir=/a"])
    b = load_config("joint_mini", ["data.shards=/x", "run.dir=/b", "run.log_every=7"])
    assert config_differences(a, b) == []
    c = load_config("joint_mini", ["data.shards=/x", "run.dir=/a", "optim.lr=0.3"])
    assert config_differences(a, c) == ["optim.lr: 0.1 != 0.3"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("folders")
    shards = build_tiny(root, with_test=False)
    run = root / "run"
    assert main(["--config", "joint_mini", f"data.shards={shards}", f"run.dir={run}", *TINY,
                 "stages.0.epochs=1"]) == 0
    return shards, run


@pytest.mark.slow
def test_copied_run_folder_resumes(finished, tmp_path, capsys):
    shards, run = finished
    copy = tmp_path / "moved"
    shutil.copytree(run, copy)
    capsys.readouterr()
    assert main(["resume", str(copy)]) == 0
    assert "already finished" in capsys.readouterr().err
    # the same command with the new run.dir continues too
    assert main(["--config", "joint_mini", f"data.shards={shards}", f"run.dir={copy}", *TINY,
                 "stages.0.epochs=1", "run.log_every=5"]) == 0
    assert "already finished" in capsys.readouterr().err


@pytest.mark.slow
def test_without_run_dir_each_run_gets_its_own_folder(finished, tmp_path, monkeypatch):
    shards, _ = finished
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["--config", "joint_mini", f"data.shards={shards}", *TINY, "stages.0.epochs=1"]) == 0
    runs = sorted((tmp_path / "runs" / "joint_mini").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)


@pytest.mark.slow
def test_two_processes_agree_on_rank_zeros_run_folder(finished, tmp_path):
    from test_launch_accelerate import HOOKED, RECIPE, TINY as LAUNCH_TINY, launch

    shards, _ = finished
    run = tmp_path / "run"
    launch("cpu_2proc.yaml", [HOOKED, "--rank-dirs"], "--config", RECIPE, f"data.shards={shards}",
           f"run.dir={run}", *LAUNCH_TINY)
    assert (tmp_path / "run-rank0" / "metrics.json").is_file()
    assert not (tmp_path / "run-rank1").exists()


@pytest.mark.slow
@pytest.mark.parametrize("logger", ["csv", "none"])
def test_loggers_csv_and_none(finished, tmp_path, logger):
    import csv

    shards, _ = finished
    run = tmp_path / "run"
    assert main(["--config", "joint_mini", f"data.shards={shards}", f"run.dir={run}", *TINY,
                 "stages.0.epochs=2", f"run.log_with={logger}"]) == 0
    assert not (run / "tb").exists()
    if logger == "csv":
        rows = list(csv.DictReader((run / "scalars.csv").open()))
        assert {"train/loss", "val/top1", "val/balanced_acc"} <= {r["key"] for r in rows}
        assert all(float(r["value"]) == float(r["value"]) for r in rows)
    else:
        assert not (run / "scalars.csv").exists()


def test_wandb_without_the_package_is_one_clear_error(monkeypatch, tmp_path):
    import importlib.util

    from trainer.errors import ConfigError
    from trainer.trackers import log_with

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        log_with("wandb", tmp_path)
