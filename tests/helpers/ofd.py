"""Probe an OFD lock from a test (on pytest's pythonpath)."""

from __future__ import annotations

import fcntl
import struct

FLOCK = struct.Struct("hh4xqqi4x")
"""``struct flock`` on Linux x86-64: type, whence, start, len, pid."""


def try_ofd(fd: int) -> bool:
    """Try a non-blocking whole-file OFD write lock; release it at once; say if it was granted."""
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK.pack(fcntl.F_WRLCK, 0, 0, 0, 0))
    except BlockingIOError:
        return False
    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, FLOCK.pack(fcntl.F_UNLCK, 0, 0, 0, 0))
    return True
