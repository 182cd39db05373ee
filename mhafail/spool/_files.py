"""Durable file operations and open-file-description (OFD) locks.

Every durable write here is: write to a temporary name, fsync the file,
rename, fsync the directory. A crash at any instant leaves either the old
file or the whole new one, never a torn one. Errors are translated into
:class:`~mhafail.errors.SpoolWriteFailed` (disk full, unwritable directory,
I/O error) after removing whatever was half-written.

OFD locks (``F_OFD_SETLK``) belong to an open file, not to a process: two
threads of one process that open the lock file separately exclude each
other, closing any other descriptor of the file does not drop the lock (as
it would with POSIX ``fcntl`` locks), and they work over NFSv4. The kernel
drops them when the process dies, however it dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import struct
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from mhafail._fs import fsync_dir
from mhafail.errors import SpoolWriteFailed

FILE_MODE = 0o640
DIR_MODE = 0o750

# The spool directory's layout (see _spool.py): committed messages, files
# being written, quarantined files, and the suffix of a message's state file.
MSG, TMP, BAD = "msg", "tmp", "bad"
STATE_SUFFIX = ".state"

_FLOCK = "hhqqixxxx"  # struct flock on Linux x86-64/aarch64: type, whence, start, len, pid


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def sync_batch(directory: Path, fds: list[int]) -> None:
    """Make the data of every file in ``fds`` durable, as one fsync each would.

    One ``syncfs(2)`` of the file system holding ``directory`` (Linux: one
    journal commit and one cache flush for the whole batch, and, since
    Linux 5.8, it reports writeback errors) instead of a cache flush per
    file. Falls back to an fsync per file where ``syncfs`` is missing.

    Raises:
        OSError: the flush failed.
    """
    if _SYNCFS is None or len(fds) < 2:
        for fd in fds:
            os.fsync(fd)
        return
    if _SYNCFS(fds[0]) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(directory))


def sync_files(directory: Path, paths: Iterable[Path]) -> None:
    """Make the data of the files ``paths`` (in ``directory``'s file system) durable.

    One ``syncfs(2)`` where there is one (Linux), else an fsync of each
    file; a file that is gone meanwhile is skipped.

    Raises:
        OSError: a flush failed.
    """
    if _SYNCFS is not None:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(directory))
        finally:
            os.close(fd)
        return
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_failed(what: str, exc: OSError) -> SpoolWriteFailed:
    """The error for a failed durable write, with the SMTP reply that fits it."""
    error = SpoolWriteFailed(f"{what}: {exc.strerror or exc}")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        error.smtp_reply = "452 4.3.1 Insufficient system storage, try again later"
    return error


def write_tmp(path: Path, chunks: list[bytes], *, sync: bool = True) -> int:
    """Write ``chunks`` to a new file ``path`` (which must not exist).

    Args:
        path: the new file.
        chunks: its contents.
        sync: fsync and close it (returns -1); else return the open
            descriptor, for the caller to fsync and close.

    Raises:
        OSError: as raised; the partial file has been removed.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    if not sync:
        return fd
    os.close(fd)
    return -1


def replace_durably(path: Path, data: bytes, *, tmp: Path) -> None:
    """Atomically replace ``path`` with ``data`` (tmp, fsync, rename, fsync dir).

    Raises:
        SpoolWriteFailed: nothing changed at ``path``.
    """
    try:
        write_tmp(tmp, [data])
        os.rename(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise write_failed(f"cannot write {path.name}", exc) from exc


class OfdLock:
    """An OFD lock on one file, opened (and created, mode 0640) by this object.

    Args:
        path: the lock file.

    Not thread-safe: use one object per thread (they exclude each other).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)

    @property
    def fd(self) -> int:
        """The descriptor (for reading and writing the file's contents)."""
        return self._fd

    def _set(self, kind: int, *, wait: bool) -> bool:
        cmd = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
        try:
            fcntl.fcntl(self._fd, cmd, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def try_lock(self, *, shared: bool = False) -> bool:
        """Take the lock without waiting; False when another holder conflicts."""
        return self._set(fcntl.F_RDLCK if shared else fcntl.F_WRLCK, wait=False)

    def lock(self, *, shared: bool = False, timeout: float) -> bool:
        """Take the lock, polling up to ``timeout`` seconds; False if it stayed busy.

        Polls rather than blocking in the kernel so that no caller can hang
        behind a holder that is frozen (SIGSTOP) inside its critical section.
        """
        end = time.monotonic() + timeout
        delay = 0.001
        while not self.try_lock(shared=shared):
            if time.monotonic() >= end:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return True

    def unlock(self) -> None:
        """Release the lock (if held)."""
        self._set(fcntl.F_UNLCK, wait=False)

    def read(self, limit: int = 4096) -> bytes:
        """The file's contents (at most ``limit`` bytes)."""
        return os.pread(self._fd, limit, 0)

    def write(self, data: bytes) -> None:
        """Replace the file's contents in place and fsync (hold the lock exclusively).

        In place, not by rename: a rename would give the name a new inode
        and every holder's lock would be on the old one.
        """
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        """Close the file, which releases the lock."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    @contextlib.contextmanager
    def held(self, *, shared: bool = False, timeout: float) -> Iterator[bool]:
        """``with lock.held(timeout=t) as ok:`` holds the lock while ``ok``."""
        ok = self.lock(shared=shared, timeout=timeout)
        try:
            yield ok
        finally:
            if ok:
                self.unlock()
