"""Whole-file exclusive locks that interoperate with the C libjlog.

libjlog takes ``F_SETLKW``/``F_WRLCK`` POSIX record locks on whole files.
On Linux we take open-file-description locks (``F_OFD_SETLKW``) instead:
they conflict with POSIX locks of other processes, so C and Python
processes exclude each other, but unlike POSIX locks they belong to the
open file description, not the process. That matters twice: two writers
in one process (two descriptors) exclude each other, and closing some other
descriptor of the same file does not silently drop our lock (the classic
POSIX-lock trap). Threads sharing one descriptor are not excluded by either
kind, so every object that shares a descriptor also holds a thread lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import struct
from collections.abc import Iterator
from typing import Final

from mhafail.errors import JlogError

# struct flock on LP64 Linux: short l_type, short l_whence, (pad), off_t
# l_start, off_t l_len, pid_t l_pid, (pad). l_pid must be 0 for OFD locks.
_FLOCK: Final = struct.Struct("hh4xqqi4x")
OFD_SETLKW: Final[int | None] = getattr(fcntl, "F_OFD_SETLKW", None)
LOCK_BYTES: Final = _FLOCK.pack(fcntl.F_WRLCK, 0, 0, 0, 0)
UNLOCK_BYTES: Final = _FLOCK.pack(fcntl.F_UNLCK, 0, 0, 0, 0)


def lock(fd: int) -> None:
    """Block until ``fd``'s file is exclusively locked by this descriptor.

    Raises:
        JlogError: the kernel refused the lock (e.g. a file system without locks).
    """
    try:
        if OFD_SETLKW is not None:
            fcntl.fcntl(fd, OFD_SETLKW, LOCK_BYTES)
        else:  # pragma: no cover - non-Linux fallback: classic POSIX record lock
            fcntl.lockf(fd, fcntl.LOCK_EX)
    except OSError as exc:
        raise JlogError(f"cannot lock jlog file: {exc}") from exc


def unlock(fd: int) -> None:
    """Release the lock :func:`lock` took on ``fd``."""
    if OFD_SETLKW is not None:
        fcntl.fcntl(fd, OFD_SETLKW, UNLOCK_BYTES)
    else:  # pragma: no cover - non-Linux fallback
        fcntl.lockf(fd, fcntl.LOCK_UN)


@contextlib.contextmanager
def locked(fd: int) -> Iterator[None]:
    """Hold the exclusive lock on ``fd``'s file for the ``with`` block."""
    lock(fd)
    try:
        yield
    finally:
        unlock(fd)
