"""The one error type for bad input in `shards` and `datasets`, and how every command reports one."""
from __future__ import annotations

import sys
from collections.abc import Callable


class DataError(ValueError):
    """Bad input data; the message starts with the offending file path and says what is wrong."""


def exit_on_error(command: Callable[[], int], errors: tuple[type[Exception], ...] = (DataError,)) -> int:
    """Run a command-line command: an expected error (bad input, a bad recipe) is one line
    `error: <message>` on stderr and exit code 2, never a traceback. Every CLI goes through here."""
    try:
        return command()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
