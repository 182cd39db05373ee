"""The :class:`Jlog` handle: create or open a jlog directory and reach everything else."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import attrs

from mhafail._fs import fsync_dir
from mhafail.errors import JlogExists, JlogInvalidArgument

from . import _format as fmt
from . import _subscribers as subs
from ._cursor import Cursor
from ._durability import Durability
from ._files import (
    DIR_MODE,
    FILE_MODE,
    ensure_dir,
    list_segments,
    open_rw,
    os_errors,
    pwrite_all,
    read_meta_fd,
)
from ._lock import locked
from ._reader import JlogReader, JlogTail
from ._repair import InspectReport, RepairReport, inspect, repair
from ._segment import SegmentView
from ._writer import JlogWriter


@attrs.frozen
class SegmentInfo:
    """One segment as ``mhafail jlog data`` shows it.

    Attributes:
        log: the segment id.
        size: its size in bytes.
        records: complete records indexed.
        closed: whether its index is closed (no more writes).
    """

    log: int
    size: int
    records: int
    closed: bool


@attrs.define
class Jlog:
    """A jlog directory, compatible with libjlog 2.x (see docs/jlog.md).

    Get one with :meth:`create` or :meth:`open`; it holds no open files, so
    it is cheap and safe to share. Writers, readers and tails it hands out
    own their files and must be closed (they are context managers).

    Attributes:
        path: the directory.
        meta: the metastore as read when the handle was made.
    """

    path: Path
    meta: fmt.Meta

    @classmethod
    @os_errors("jlog")
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        unit_limit: int = fmt.DEFAULT_UNIT_LIMIT,
        safety: fmt.Safety = fmt.Safety.ALMOST_SAFE,
        compress: bool = False,
    ) -> Jlog:
        """Create a new, empty jlog directory.

        Args:
            path: the directory to create; it must not exist.
            unit_limit: segment size threshold in bytes (libjlog: 4 MiB).
            safety: libjlog safety mode; ``SAFE`` fsyncs checkpoints and the metastore.
            compress: store records as LZ4 blocks (readable by libjlog built with LZ4).

        Returns:
            The new jlog.

        Raises:
            JlogExists: ``path`` already exists (a jlog is never reset).
            JlogInvalidArgument: ``unit_limit`` is not a positive u32.
        """
        if not 0 < unit_limit <= 0xFFFFFFFF:
            raise JlogInvalidArgument(f"unit_limit must be 1..4294967295 bytes, not {unit_limit}")
        path = Path(path)
        meta = fmt.Meta(
            0, unit_limit, fmt.Safety(safety), fmt.LZ4_MAGIC if compress else fmt.PLAIN_MAGIC
        )
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            raise JlogExists(f"{path} already exists; a jlog is never created over it") from None
        os.chmod(path, DIR_MODE)
        # The metastore is written whole under a temporary name and renamed
        # in: a crash cannot leave a short one behind.
        tmp = path / f".{fmt.METASTORE}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            pwrite_all(fd, fmt.encode_meta(meta), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        fd = os.open(path / fmt.PRE_COMMIT, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        try:
            pwrite_all(fd, bytes(4), 0)
        finally:
            os.close(fd)
        os.rename(tmp, path / fmt.METASTORE)
        fsync_dir(path)
        with contextlib.suppress(OSError):
            fsync_dir(path.parent)
        return cls(path, meta)

    @classmethod
    @os_errors("jlog")
    def open(cls, path: str | os.PathLike[str]) -> Jlog:
        """Open an existing jlog directory.

        Raises:
            JlogInvalidArgument: ``path`` is not a jlog directory.
            JlogCorrupt: its metastore is invalid (``mhafail.jlog.repair(path)`` fixes it).
        """
        path = Path(path)
        ensure_dir(path)
        return cls(path, cls._load_meta(path))

    @staticmethod
    def _load_meta(path: Path) -> fmt.Meta:
        fd = open_rw(path / fmt.METASTORE)
        try:
            with locked(fd):
                return read_meta_fd(fd)
        finally:
            os.close(fd)

    @os_errors("jlog")
    def read_meta(self) -> fmt.Meta:
        """Return the metastore as it is now (``storage_log`` moves as writers roll over)."""
        return self._load_meta(self.path)

    # --- handles -----------------------------------------------------------------

    def writer(self, *, durability: Durability | None = None) -> JlogWriter:
        """Open a writer; see :class:`JlogWriter`."""
        return JlogWriter(self.path, durability=durability)

    def reader(self, subscriber: str) -> JlogReader:
        """Open a reader for an existing subscriber; see :class:`JlogReader`."""
        return JlogReader(self.path, subscriber)

    def tail(self, *, start: fmt.Whence = fmt.Whence.END, back: int = 0) -> JlogTail:
        """Open a ghost reader that holds no data back; see :class:`JlogTail`."""
        return JlogTail(self.path, start=start, back=back)

    # --- subscribers -----------------------------------------------------------

    @os_errors("jlog")
    def add_subscriber(self, name: str, whence: fmt.Whence = fmt.Whence.BEGIN) -> fmt.MessageId:
        """Add a subscriber at the oldest data (``BEGIN``) or the current end (``END``).

        Returns:
            Its starting checkpoint.

        Raises:
            JlogSubscriberExists: it already exists.
            JlogInvalidArgument: the name is empty, has NUL, or is over 126 bytes.
        """
        return subs.add(self.path, self.meta, name, whence)

    @os_errors("jlog")
    def remove_subscriber(self, name: str) -> list[int]:
        """Remove a subscriber and free the segments only it held.

        Returns:
            The segment ids deleted.

        Raises:
            JlogUnknownSubscriber: no such subscriber.
        """
        return subs.remove(self.path, name)

    @os_errors("jlog")
    def subscribers(self) -> list[subs.SubscriberInfo]:
        """List subscribers with their checkpoint and pending message count."""
        return subs.list_all(self.path, self.meta)

    @os_errors("jlog")
    def checkpoint(self, name: str) -> fmt.MessageId:
        """Return subscriber ``name``'s checkpoint (last message consumed)."""
        return subs.get(self.path, name)

    @os_errors("jlog")
    def set_checkpoint(self, name: str, position: fmt.MessageId) -> list[int]:
        """Move a subscriber's checkpoint forward or back to data that still exists.

        Returns:
            The segment ids deleted because a forward move freed them.

        Raises:
            JlogUnknownSubscriber: no such subscriber.
            JlogInvalidArgument: no such message any more (or not yet).
        """
        return subs.set_position(self.path, self.meta, name, position)

    @os_errors("jlog")
    def clean(self) -> list[int]:
        """Delete segments every subscriber has moved past; returns their ids."""
        return subs.clean(self.path)

    # --- data ------------------------------------------------------------------

    @os_errors("jlog")
    def segments(self) -> list[SegmentInfo]:
        """Describe every segment present (indexing it as a reader would)."""
        storage_log = self.read_meta().storage_log
        out = []
        for log in list_segments(self.path):
            view = SegmentView.open(self.path, log, self.meta.hdr_magic)
            if view is None:
                continue
            try:
                view.resync(storage_log)
                out.append(SegmentInfo(log, view.end_of_file(), view.count, view.closed))
            finally:
                view.close()
        return out

    @os_errors("jlog")
    def last_id(self) -> fmt.MessageId:
        """Return the id of the newest message (marker 0: its segment is empty)."""
        cursor = Cursor(self.path, self.meta.hdr_magic)
        try:
            return cursor.last_id()
        finally:
            cursor.close()

    @os_errors("jlog")
    def inspect(self) -> InspectReport:
        """Check everything without changing anything; see :func:`inspect`."""
        return inspect(self.path)

    @os_errors("jlog")
    def repair(self) -> RepairReport:
        """Fix what :meth:`inspect` finds; see :func:`repair`."""
        report = repair(self.path)
        self.meta = self._load_meta(self.path)
        return report
