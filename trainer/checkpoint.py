"""Atomic Accelerate checkpoints in RUN/checkpoints/last, with progress.json beside the state.

Every rank writes its part of `accelerator.save_state` (model, optimizer, scaler, its own RNG
states) into a temporary folder; the main process then adds progress.json and swaps the folder
in with renames, so a kill at any moment leaves either the old or the new checkpoint whole.
We name the folder ourselves: Accelerate's automatic naming keeps a counter that `load_state`
does not restore. The data position lives in progress.json (stage, epoch, batch): our stream is
not a DataLoader, so `skip_first_batches` cannot apply and resume uses `set_epoch(epoch, batch)`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from shards.atomic import write_atomic
from trainer.errors import TrainingError

LAST = "last"
TMP = ".tmp-last"
OLD = ".old-last"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None. A crash between the two renames of
    `save` leaves only the old one, which is then still valid."""
    root = checkpoint_dir(run_dir)
    for name in (LAST, OLD):
        if (root / name / "progress.json").is_file():
            return root / name
    return None


def read_progress(run_dir: Path) -> dict | None:
    folder = latest(run_dir)
    if folder is None:
        return None
    try:
        return json.loads((folder / "progress.json").read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{folder / 'progress.json'}: unreadable checkpoint progress: {e}") from None


def save(accelerator, run_dir: Path, progress: dict[str, Any]) -> None:
    """Collective: every rank must call it."""
    root = checkpoint_dir(run_dir)
    tmp, last, old = root / TMP, root / LAST, root / OLD
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_atomic(tmp / "progress.json", json.dumps(progress, indent=1))
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            last.rename(old)
        tmp.rename(last)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def check_compatible(progress: dict, expected: dict, folder: Path) -> None:
    """Refuse a checkpoint whose model does not match the one built for the run."""
    for key, want in expected.items():
        got = progress.get("model_signature", {}).get(key)
        if got != want:
            raise TrainingError(f"{folder}: checkpoint is from another model ({key}: checkpoint has "
                                f"{got!r}, this run builds {want!r})")


def load(accelerator, folder: Path) -> None:
    try:
        accelerator.load_state(str(folder))
    except (RuntimeError, KeyError, ValueError) as e:
        raise TrainingError(f"{folder}: cannot load checkpoint into this model: "
                            f"{str(e).splitlines()[0]}") from None


def model_signature(model, cfg_model: dict, head_classes: list[int]) -> dict:
    return {"model": dict(cfg_model), "head_classes": list(head_classes),
            "num_params": sum(p.numel() for p in model.parameters())}
