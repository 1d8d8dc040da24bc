"""Errors the trainer raises for bad input; CLIs print them as `error: <message>` and exit 2."""
from __future__ import annotations


class ConfigError(ValueError):
    """A recipe, override or argument is invalid (the message says which key and why)."""


class TrainingError(RuntimeError):
    """Training cannot go on (NaN loss, incompatible checkpoint, ...)."""
