"""Errors the trainer raises for bad input; CLIs print them as `error: <message>` and exit 2."""
from __future__ import annotations

from shards.errors import DataError


class ConfigError(ValueError):
    """A recipe, override or argument is invalid (the message says which key and why)."""


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, incompatible checkpoint, ...)."""


USER_ERRORS = (ConfigError, DataError, TrainingError)   # reported as one line, exit 2 (shards.errors.exit_on_error)
