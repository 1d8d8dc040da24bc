"""The one way this project writes a file: to a temporary name beside it, flushed to disk, then
renamed over the target, so a reader (or a crash) never sees a half-written file. A storage
error (full disk, read-only folder) comes out as one `StorageError` line naming the target.

`atomic_path` is the mechanism (for writers that want a path: `torch.save`, `fig.savefig`);
`write_atomic` and `write_json` are the common cases built on it. Shard tars and the
checkpoint folder swap have their own mechanisms (a restartable build; a folder rename).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shards.errors import storage_error

_UMASK = os.umask(0)
os.umask(_UMASK)


def fsync_dir(folder: Path | str) -> None:
    """Make a rename inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path | str) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextmanager
def atomic_path(path: Path | str, *, durable: bool = True) -> Iterator[Path]:
    """Yield a hidden temporary path in the target's folder; on a clean exit, fsync it (when
    `durable`), give it the usual file mode and rename it over `path`. On an error the
    temporary file is removed and the target is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise storage_error(e, path, "cannot write") from None
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            fsync_file(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except OSError as e:  # a full disk or a read-only folder: one line naming the file
        tmp.unlink(missing_ok=True)
        raise storage_error(e, path, "cannot write") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_atomic(path: Path | str, data: str | bytes, *, durable: bool = True) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path, durable=durable) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: Path | str, obj: Any, *, indent: int | None = None, durable: bool = True) -> None:
    """`obj` as JSON (plus a final newline) to `path` atomically."""
    write_atomic(path, json.dumps(obj, indent=indent) + "\n", durable=durable)
