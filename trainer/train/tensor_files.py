"""Tensor files read and written with one clear error each: a pickle `weights_only` refuses, a
damaged file, weights that are not finite, random states a resume could not restore, a full
disk. Every message names the file; the CLIs print it as `error: ...` and exit 2."""
from __future__ import annotations

import pickle
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from shards.errors import StorageError, storage_error
from trainer.errors import TrainingError


def first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch colours its messages
    return text.splitlines()[0] if text else type(e).__name__


def why_not_loaded(e: BaseException) -> str:
    """A torch.load failure in a few words: what `weights_only` refused, or the error."""
    if isinstance(e, FileNotFoundError):
        return "the file is missing"
    if isinstance(e, pickle.UnpicklingError):
        m = re.search(r"GLOBAL ([\w.]+)", str(e))
        return ("a pickle weights_only loading refuses: " +
                (f"it references {m.group(1)}" if m else "not a plain tensor file"))
    return f"{type(e).__name__}: {first_line(e)}"


def load_tensors(path: Path, map_location: Any = "cpu", *, finite: bool = True) -> Any:
    """`torch.load(path, weights_only=True)`; TrainingError naming the file when it is
    missing, refused (a pickle of other objects), damaged, or (`finite`) holds NaN or inf."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: missing") from None
    except Exception as e:  # UnpicklingError, RuntimeError (not a zip), EOFError ...
        raise TrainingError(f"{path}: cannot be loaded as weights ({why_not_loaded(e)})") from None
    if finite:
        check_finite(state, path)
    return state


def check_finite(state: Any, path: Path) -> None:
    """TrainingError naming `path` and the first tensor holding NaN or inf."""
    items = state.items() if isinstance(state, dict) else []
    for key, value in items:
        if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
            raise TrainingError(f"{path}: weights hold NaN or infinite values ({key}); the run "
                                "diverged or the file is damaged")


def unloadable_file(folder: Path) -> tuple[Path, BaseException] | None:
    """The first pickle file of an Accelerate checkpoint folder that does not load on its own
    (as `load_state` loads it), with the error; None when they all load."""
    from accelerate.utils import load
    from safetensors.torch import load_file

    for path in sorted(folder.iterdir()):
        try:
            if path.suffix in (".bin", ".pkl", ".pt"):
                load(path, map_location="cpu")
            elif path.suffix == ".safetensors":
                load_file(path)
        except Exception as e:
            return path, e
    return None


def check_rng_restored(folder: Path, process_index: int) -> None:
    """Accelerate's `load_state` only logs (at info level) when it cannot restore the random
    states; an exact resume needs them, so compare what is now set with the file."""
    from accelerate.utils import load

    path = folder / f"random_states_{process_index}.pkl"
    try:
        states = load(path)
    except Exception as e:
        raise TrainingError(f"{path}: random states cannot be loaded ({why_not_loaded(e)}); "
                            "the run cannot be resumed exactly") from None
    try:
        same = (torch.equal(torch.get_rng_state(), states["torch_manual_seed"])
                and random.getstate() == states["random_state"])
        if same and torch.cuda.is_available():
            saved = states["torch_cuda_manual_seed"]
            same = all(torch.equal(a, b) for a, b in zip(torch.cuda.get_rng_state_all(), saved))
    except (KeyError, TypeError, RuntimeError) as e:
        raise TrainingError(f"{path}: random states incomplete ({type(e).__name__}: "
                            f"{first_line(e)}); saved on other hardware?") from None
    if not same:
        raise TrainingError(f"{path}: random states were not restored; the run cannot be "
                            "resumed exactly")


@contextmanager
def storage_errors(path: Path, what: str) -> Iterator[None]:
    """A full disk or read-only folder while writing tensors: one StorageError naming `path`
    (torch.save reports a failed write as a RuntimeError of its zip writer)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as e:
        raise storage_error(e, path, what) from None
    except RuntimeError as e:
        if "PytorchStreamWriter failed" not in str(e) and "write failed" not in str(e):
            raise
        raise StorageError(f"{path}: {what}: the write failed ({first_line(e)}); "
                           "is the disk full?") from None
