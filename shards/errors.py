"""The one error type for bad input in `shards` and `datasets`, its kind for a storage that
cannot be written (read-only, full, no permission), and how every command reports them: one line,
exit 2."""
from __future__ import annotations

import errno
import re
import sys
from collections.abc import Callable
from pathlib import Path

# OSErrors that say something about the environment (not a bug): reported in one line.
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
                  errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted", errno.EIO: "input/output error"}


class DataError(ValueError):
    """Bad input data; the message starts with the offending file path and says what is wrong."""


class StorageError(DataError):
    """A file or folder cannot be written or read for a reason of the storage, not the data."""


def storage_error(e: OSError, path: Path | str, what: str) -> Exception:
    """`e` as one line naming `path` when it is a storage problem, else `e` itself (a bug)."""
    if e.errno not in STORAGE_ERRNOS:
        return e
    return StorageError(f"{path}: {what}: {STORAGE_ERRNOS[e.errno]}")


def printable(text: object) -> str:
    """`text` with control characters (a newline in a file name, or anything else Python's
    `splitlines` breaks on: C1 controls, U+2028/U+2029) escaped: messages stay one line."""
    return re.sub(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]", lambda m: ascii(m.group())[1:-1], str(text))


def exit_on_error(command: Callable[[], int], errors: tuple[type[Exception], ...] = (DataError,)) -> int:
    """Run a command-line command: an expected error (bad input, a bad recipe, a full disk) is one
    line `error: <message>` on stderr (control characters escaped) and exit code 2, never a
    traceback. Every CLI goes through here."""
    try:
        return command()
    except errors as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 2
