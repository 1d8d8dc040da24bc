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

import torch

from shards.atomic import atomic_path, fsync_dir, fsync_file, write_atomic, write_json
from trainer.errors import TrainingError
from trainer.models import build_model
from trainer.train.tensor_files import (check_rng_restored, first_line, load_tensors, storage_errors,
                                        unloadable_file, why_not_loaded)

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


def save(accelerator, run_dir: Path, progress: dict[str, Any], model: torch.nn.Module | None = None) -> None:
    """Collective: every rank must call it. With `model`, every rank also saves its own
    BatchNorm statistics: without DDP's buffer broadcast they differ between ranks until the
    end-of-epoch average, and `save_state` keeps only the main process's model."""
    root = checkpoint_dir(run_dir)
    tmp, last, old = root / TMP, root / LAST, root / OLD
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    with storage_errors(tmp, "cannot write the checkpoint"):
        accelerator.save_state(str(tmp))
        if model is not None and accelerator.num_processes > 1:
            torch.save(_bn_buffers(model), tmp / f"bn-rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_atomic(tmp / "progress.json", json.dumps(progress, indent=1))
        _fsync_tree(tmp)  # the state files must be on disk before the rename publishes them
        if last.exists():
            shutil.rmtree(old, ignore_errors=True)
            last.rename(old)
        tmp.rename(last)
        fsync_dir(root)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def check_compatible(progress: dict, expected: dict, folder: Path) -> None:
    """Refuse a checkpoint whose model does not match the one built for the run."""
    for key, want in expected.items():
        got = progress.get("model_signature", {}).get(key)
        if got != want:
            raise TrainingError(f"{folder}: checkpoint is from another model ({key}: checkpoint has "
                                f"{got!r}, this run builds {want!r})")


def load(accelerator, folder: Path, model: torch.nn.Module | None = None) -> None:
    """Load a checkpoint; TrainingError naming the file that is refused (a pickle of other
    objects, damaged), or the folder when it is from another model; the random states must
    be restored (Accelerate would only log it)."""
    try:
        accelerator.load_state(str(folder))
    except Exception as e:
        bad = unloadable_file(folder)
        if bad is not None:
            raise TrainingError(f"{bad[0]}: checkpoint file refused ({why_not_loaded(bad[1])})") from None
        if not isinstance(e, (RuntimeError, KeyError, ValueError)):
            raise
        raise TrainingError(f"{folder}: cannot load checkpoint into this model: "
                            f"{first_line(e)}") from None
    check_rng_restored(folder, accelerator.process_index)
    own = folder / f"bn-rank{accelerator.process_index}.pt"
    if model is not None and accelerator.num_processes > 1 and own.is_file():
        # map to the CPU: load_state_dict copies into the buffers wherever they live ("cpu:0",
        # what a CPU rank calls its device, is no map_location torch knows)
        model.load_state_dict(load_tensors(own, map_location="cpu"), strict=False)


def _bn_buffers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()
            if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}


def model_signature(model, cfg_model: dict, head_classes: list[int]) -> dict:
    return {"model": dict(cfg_model), "head_classes": list(head_classes),
            "num_params": sum(p.numel() for p in model.parameters())}


def save_weights(model, path: Path) -> None:
    """A model's state dict (on the CPU) to `path`, atomically: best epoch and stage weights."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with storage_errors(path, "cannot write the weights"), atomic_path(path) as tmp:
        torch.save(state, tmp)


def mark_done(run_dir: Path) -> None:
    """Record that the run finished: the same command run again just prints its table."""
    folder = checkpoint_dir(run_dir) / LAST
    progress = read_progress(run_dir) if folder.is_dir() else None
    write_json(folder / "progress.json", {**(progress or {}), "done": True})


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # files before their folders
        if path.is_file():
            fsync_file(path)
        else:
            fsync_dir(path)
    fsync_dir(folder)


def card_path(folder: Path) -> Path:
    """A stage's model card (classes, input size, normalisation, TTA views, classifiers);
    run folders written before it had its name call it head.json."""
    card = Path(folder) / "card.json"
    return card if card.is_file() or not (Path(folder) / "head.json").is_file() else Path(folder) / "head.json"


def load_weights(folder: Path) -> tuple[torch.nn.Module, dict]:
    """The model saved after a stage (RUN/stages/<i>-<name>/model.pt + card.json), in eval mode.
    The head adopts the saved class list, so a stage that trained a subset head loads too."""
    try:
        info = json.loads(card_path(folder).read_text())
    except (OSError, ValueError) as e:
        raise TrainingError(f"{card_path(folder)}: missing or unreadable ({e})") from None
    model = build_model(info["model"], info["num_classes"])
    state = load_tensors(folder / "model.pt")  # refused pickle, damaged, NaN: one line
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise TrainingError(f"{folder / 'model.pt'}: weights are from another model: "
                            f"{str(e).splitlines()[0]}") from None
    return model.eval(), info
