"""One writer per folder: a build holds `OUT/.lock`, a training run holds `RUN/.lock`.

The lock is an exclusive `flock` on the file, held for the writer's whole lifetime; the file
also records who holds it (pid, host, command, start time) so that a second writer can say
whom it is waiting for. The kernel drops a flock when its process dies, even by SIGKILL, so a
lock left by a killed writer is free: the next writer takes it over (and says so) without any
guessing from pids. A clean exit removes the file.

Removing a lock file races with a writer that has just opened it; so after locking, a writer
checks that the path still names the file it locked, and starts again if not.
Where the file system has no flock at all, the record alone decides (a live pid on this host,
or any other host, counts as a holder): weaker, and said so in the busy message.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from shards.errors import DataError, storage_error

LOCK_NAME = ".lock"
_RETRIES = 20


class Busy(DataError):
    """Another live process holds the folder."""


def note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


@contextmanager
def hold(folder: Path | str, command: str,
         on_stale: Callable[[str], None] = note) -> Iterator[dict[str, Any]]:
    """Hold `folder/.lock` while the block runs (creating `folder`); Busy naming the holder
    when another live process has it. Yields the record written into the lock file."""
    folder = Path(folder)
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(e, folder, "cannot create the folder") from None
    fd, stale = _acquire(path)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        _write_record(fd, path, record)
        if stale:
            on_stale(f"{path}: taking over the lock left by {describe(stale)} "
                     "(that process is gone)")
        yield record
    finally:
        _release(fd, path)


def read_holder(path: Path) -> dict[str, Any] | None:
    """The record in a lock file, or None when it is absent, empty or unreadable."""
    try:
        return _parse(path.read_bytes())
    except OSError:
        return None


def describe(rec: dict[str, Any] | None) -> str:
    if not rec:
        return "a process that has not recorded itself yet"
    return (f"{rec.get('command', '?')} (pid {rec.get('pid', '?')} on {rec.get('host', '?')}, "
            f"since {rec.get('since', '?')})")


def _acquire(path: Path) -> tuple[int, dict[str, Any] | None]:
    """(fd holding the lock, the record a dead holder left or None)."""
    for _ in range(_RETRIES):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise storage_error(e, path, "cannot create the lock file") from None
        try:
            if not _lock(fd, path):
                raise Busy(f"{path.parent}: in use by {describe(_read(fd))}; wait for it to end or "
                           f"use another folder (lock file {path})")
            if _same_file(fd, path):
                return fd, _read(fd)
        except BaseException:
            _close_quietly(fd)
            raise
        os.close(fd)  # the holder removed the file as we opened it: lock the new one
    raise Busy(f"{path}: lock file keeps changing; another writer is starting and stopping")


def _lock(fd: int, path: Path) -> bool:
    """True when we got the lock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise storage_error(e, path, "cannot lock") from None
    left = _read(fd)  # no flock on this file system: trust the record
    return left is None or not _maybe_alive(left)


def _read(fd: int) -> dict[str, Any] | None:
    return _parse(os.pread(fd, 1 << 16, 0))


def _maybe_alive(rec: dict[str, Any]) -> bool:
    if rec.get("host") != socket.gethostname():
        return True  # cannot look at another host's processes
    try:
        os.kill(int(rec.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (OSError, ValueError, TypeError):
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


def _write_record(fd: int, path: Path, record: dict[str, Any]) -> None:
    data = (json.dumps(record) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
    except OSError as e:
        raise storage_error(e, path, "cannot write the lock file") from None


def _release(fd: int, path: Path) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()  # while still locked: a waiting opener then retries on a new file
    except OSError:
        pass  # a lock file left behind is free anyway once fd is closed
    finally:
        _close_quietly(fd)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        rec = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None
