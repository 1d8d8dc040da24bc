"""Where a run's scalars go besides RUN/history.jsonl (`run.log_with`): Accelerate's trackers.

tensorboard (default; RUN/tb/), csv (RUN/scalars.csv: step,key,value; no extra package),
wandb (the wandb package, its own login and project) or none.
"""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from accelerate.tracking import GeneralTracker

from trainer.errors import ConfigError

LOGGERS = ("tensorboard", "csv", "wandb", "none")


class CsvTracker(GeneralTracker):
    """RUN/scalars.csv, one row per scalar: step, key (e.g. train/loss, val/top1), value. Rows
    are appended, so a resumed run repeats the steps between its checkpoint and the stop."""

    name = "csv"
    requires_logging_directory = False

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.path = Path(run_dir) / "scalars.csv"

    @property
    def tracker(self):
        return self.path

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        new = not self.path.is_file()
        with open(self.path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["step", "key", "value"])
            w.writerows([step, k, v] for k, v in values.items())


def log_with(choice: str, run_dir: Path) -> list | None:
    """Accelerate's `log_with` for the recipe's choice (ConfigError where wandb is missing)."""
    if choice == "none":
        return None
    if choice == "csv":
        return [CsvTracker(run_dir)]
    if choice == "wandb" and importlib.util.find_spec("wandb") is None:
        raise ConfigError("run.log_with: wandb needs the wandb package (pip install wandb); "
                          "or use tensorboard, csv or none")
    return [choice]


def project_name(choice: str, recipe: str) -> str:
    """TensorBoard's folder inside RUN (RUN/tb), or the project name of the other trackers."""
    return "tb" if choice == "tensorboard" else f"sar-{Path(recipe).stem}"
