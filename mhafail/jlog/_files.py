"""Small file helpers shared by the jlog modules: whole reads and writes, listings.

Every helper retries short reads and writes, and translates ``OSError``
into :class:`mhafail.errors.JlogError` where the caller cannot do better.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

from mhafail.errors import JlogCorrupt, JlogError, JlogInvalidArgument

from . import _format as fmt
from ._lock import lock, locked, unlock

FILE_MODE: Final = 0o640
DIR_MODE: Final = 0o750


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """Read exactly ``size`` bytes at ``offset`` (fewer only at end of file)."""
    data = os.pread(fd, size, offset)
    if len(data) == size or not data:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = os.pread(fd, size - got, offset + got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset``, retrying short writes from where they stopped."""
    written = os.pwrite(fd, data, offset)
    if written == len(data):
        return
    view = memoryview(data)
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)


def file_size(fd: int) -> int:
    """Return the size of the open file (``lseek`` is cheaper than ``fstat``)."""
    return os.lseek(fd, 0, os.SEEK_END)


def open_rw(path: Path, *, create: bool = False) -> int:
    """Open a jlog file read-write (libjlog opens everything ``O_RDWR``)."""
    flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0)
    return os.open(path, flags, FILE_MODE)


def list_segments(path: Path) -> list[int]:
    """Return the segment ids present in a jlog directory, ascending."""
    logs = []
    with os.scandir(path) as entries:
        for entry in entries:
            log = fmt.parse_segment_name(entry.name)
            if log is not None:
                logs.append(log)
    logs.sort()
    return logs


def list_checkpoint_files(path: Path) -> dict[str, str]:
    """Return ``{subscriber: cp file name}`` for every checkpoint file present."""
    found = {}
    with os.scandir(path) as entries:
        for entry in entries:
            name = fmt.parse_checkpoint_name(entry.name)
            if name is not None:
                found[name] = entry.name
    return found


def checkpoint_logs(path: Path) -> list[int]:
    """The segment of every readable checkpoint (damaged or vanished ones left out)."""
    logs = []
    for filename in list_checkpoint_files(path).values():
        try:
            with open(path / filename, "rb") as f:
                raw = f.read(9)
        except FileNotFoundError:
            continue
        if len(raw) == fmt.CHECKPOINT.size:
            logs.append(fmt.decode_checkpoint(raw).log)
    return logs


def passed_hole(path: Path, after: int) -> bool:
    """Whether some subscriber has read past a hole that ends before segment ``after``.

    libjlog's retention deletes only what every subscriber of the moment
    has read, and leaves a removed subscriber's segments behind, so a hole
    with a subscriber past it is ordinary retention (a subscriber added
    later with BEGIN starts in the orphaned segments below it), not loss.
    """
    return any(log >= after for log in checkpoint_logs(path))


def read_meta_fd(fd: int) -> fmt.Meta:
    """Read and decode the metastore behind ``fd`` (caller holds any lock it needs).

    Raises:
        JlogCorrupt: the metastore is invalid.
    """
    return fmt.decode_meta(pread_all(fd, fmt.META.size + 1, 0))


def write_meta_fd(fd: int, meta: fmt.Meta, *, sync: bool) -> None:
    """Overwrite the metastore behind ``fd`` in place."""
    pwrite_all(fd, fmt.encode_meta(meta), 0)
    if sync:
        os.fsync(fd)


def read_storage_log(fd: int) -> int:
    """Return ``storage_log`` from an open metastore without a lock.

    The field is one aligned u32 that writers replace with a single
    ``pwrite``; libjlog's readers read it from a shared mapping the same way.

    Raises:
        JlogCorrupt: the metastore is shorter than 4 bytes.
    """
    raw = os.pread(fd, 4, 0)
    if len(raw) != 4:
        raise JlogCorrupt("metastore is truncated; run repair()")
    (log,) = fmt.U32.unpack(raw)
    return int(log)


def read_checkpoint(path: Path, filename: str) -> fmt.MessageId | None:
    """Read a subscriber's checkpoint under its lock; ``None`` if the file is gone.

    Raises:
        JlogCorrupt: the checkpoint file is not 8 bytes.
    """
    try:
        fd = open_rw(path / filename)
    except FileNotFoundError:
        return None
    try:
        with locked(fd):
            raw = pread_all(fd, 9, 0)
    finally:
        os.close(fd)
    return fmt.decode_checkpoint(raw)


def unlink_segment(path: Path, log: int) -> bool:
    """Delete a segment and its index; return whether the segment existed."""
    existed = True
    try:
        os.unlink(path / fmt.segment_name(log))
    except FileNotFoundError:
        existed = False
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path / fmt.index_name(log))
    return existed


def ensure_dir(path: Path) -> None:
    """Check that ``path`` is a jlog directory (it has a metastore).

    Raises:
        JlogInvalidArgument: ``path`` is missing, not a directory, or has no metastore.
    """
    if not path.is_dir():
        raise JlogInvalidArgument(f"{path} is not a directory, so not a jlog")
    if not (path / fmt.METASTORE).is_file():
        raise JlogInvalidArgument(f"{path} has no metastore: not a jlog directory")


_P = ParamSpec("_P")
_R = TypeVar("_R")


def os_errors(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorate a public method so an ``OSError`` reaches callers as :class:`JlogError`.

    Callers catch one exception root (``MhafailError``); the original error
    stays attached as ``__cause__``.

    Args:
        what: the operation, for the message ("reading jlog", ...).
    """

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                raise JlogError(f"{what}: {exc}") from exc

        return wrapper

    return decorate


class MetaLock:
    """Context manager holding the metastore lock; yields the metastore descriptor.

    Writers hold it to roll over; subscriber changes and retention hold it
    so that deleting segments cannot race with a checkpoint that needs them.
    """

    def __init__(self, path: Path) -> None:
        self.fd = open_rw(path / fmt.METASTORE)

    def __enter__(self) -> int:
        try:
            lock(self.fd)
        except BaseException:
            os.close(self.fd)
            raise
        return self.fd

    def __exit__(self, *exc: object) -> None:
        try:
            unlock(self.fd)
        finally:
            os.close(self.fd)
