"""Appending to a jlog: :class:`JlogWriter` and its :class:`Durability` policy.

Concurrency: every append happens under the segment's exclusive lock (an
OFD lock, which conflicts with libjlog's POSIX locks) and writes whole
records at the segment's end with one ``pwrite``, so several writer
processes (C or Python) interleave whole records. ``write()`` keeps the lock
across a burst of calls and releases it within a few milliseconds (see
:mod:`._burst` for when, and how long other writers can wait). A thread
lock serializes the threads sharing one :class:`JlogWriter`.

Crash safety: when a write returns, its records are in the kernel's page
cache, so they survive the crash of this process; what survives a power
loss is the :class:`Durability` policy's business. A process killed in the
middle of a ``pwrite`` can leave a torn record at the end of the segment;
the next append by any mhafail writer finds it under the segment lock
(no writer can be mid-write then) and cuts it off before appending, so no
reader ever sees a partial record and the log goes on.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from pathlib import Path
from types import TracebackType

import attrs

from mhafail._fs import fsync_dir
from mhafail.errors import JlogClosed, JlogCorrupt, JlogError, JlogInvalidArgument

from . import _burst
from . import _format as fmt
from ._durability import Durability, DurabilityMode
from ._files import (
    file_size,
    list_segments,
    open_rw,
    os_errors,
    pread_all,
    pwrite_all,
    read_meta_fd,
    write_meta_fd,
)
from ._lock import lock, locked, unlock

log_ = logging.getLogger(__name__)

# write() runs once per record: module-level names are faster than attributes.
_time_ns = time.time_ns
_monotonic = time.monotonic
_pwrite = os.pwrite


class _CorruptTail(Exception):
    """The open segment ends in bytes that are not a torn write: leave it to repair."""


class JlogWriter:
    """Appends records to a jlog; safe to share between threads.

    Opening a writer flushes records a crashed C writer left in
    ``pre_commit`` into the current segment first (keeping their order).
    mhafail never uses ``pre_commit`` itself: records go straight to the
    segment. Do not run an mhafail writer next to a live C writer that has
    a pre-commit buffer configured: its buffered records would be flushed
    twice.

    Args:
        path: the jlog directory.
        durability: the fsync policy (default :meth:`Durability.none`).

    Raises:
        JlogCorrupt: the metastore is invalid, or segments past
            ``storage_log`` hold data (run ``repair()``).
    """

    @os_errors("cannot open jlog writer")
    def __init__(
        self, path: str | os.PathLike[str], *, durability: Durability | None = None
    ) -> None:
        self.path = Path(path)
        self.jlog_id = _burst.file_id(self.path)
        self.durability = durability if durability is not None else Durability.none()
        self._tlock = threading.Lock()
        self._closed = False
        self._seg_fd = -1
        self._known_end = -1
        """Where the segment ends, as far as this writer knows (-1: unknown)."""
        # Burst state (see _burst): whether this writer holds the segment
        # lock now, since when, its last write, when it may lock again after
        # a handoff, and until when it locks once per record.
        self._held = False
        self._held_since = 0.0
        self._burst_until = 0.0
        self._last_write = 0.0
        self._handoff_until = 0.0
        self._contended_until = 0.0
        self._releaser: _burst.Releaser | None = None
        self._unsynced = 0
        self._first_unsynced = 0.0
        self.truncated_bytes = 0
        """Bytes of torn records this writer cut off the end of segments."""
        self.pre_commit_records = 0
        """Records this writer flushed from a crashed writer's ``pre_commit``."""
        self._meta_fd = open_rw(self.path / fmt.METASTORE)
        try:
            with locked(self._meta_fd):
                meta = read_meta_fd(self._meta_fd)
                above = [
                    s
                    for s in list_segments(self.path)
                    if s > meta.storage_log and os.stat(self.path / fmt.segment_name(s)).st_size
                ]
                if above:
                    raise JlogCorrupt(
                        f"segment {above[-1]:08x} holds data past storage_log "
                        f"{meta.storage_log:08x}: the metastore is stale; run repair()"
                    )
                self._log = meta.storage_log
                self._seg_fd = open_rw(self.path / fmt.segment_name(self._log), create=True)
            self.meta = meta
            self._codec = fmt.RecordCodec(meta.hdr_magic)
            self._plain = not meta.compressed
            self._pack = fmt.PLAIN_HEADER.pack
            self._magic = meta.hdr_magic
            self._policy = self.durability.mode
            self._limit = meta.unit_limit
            self._magic_bytes = fmt.U32.pack(meta.hdr_magic)
            self._durable = self._syncing = self.durability.mode is not DurabilityMode.NONE
            if self._durable:
                fsync_dir(self.path)
            self._flush_pre_commit()
        except BaseException:
            self._close_fds()
            raise
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self._start_flusher()
        _burst.track(self)

    def _start_flusher(self) -> None:
        if self.durability.mode is DurabilityMode.GROUP and self.durability.max_delay is not None:
            self._flusher = threading.Thread(
                target=self._flush_loop, name=f"jlog-flush {self.path.name}", daemon=True
            )
            self._flusher.start()

    # --- public ------------------------------------------------------------------

    def write(self, payload: bytes) -> None:
        """Append one record.

        Args:
            payload: the message bytes (may be empty).

        Raises:
            JlogInvalidArgument: ``payload`` is a ``str`` (encode it first).
            JlogClosed: the writer is closed.
            JlogError: the file system refused the write.
        """
        if isinstance(payload, str):
            raise JlogInvalidArgument("jlog payloads are bytes; encode the str first")
        ns = _time_ns()
        sec, usec = ns // 1_000_000_000, ns // 1000 % 1_000_000
        if self._plain and len(payload) <= 0xFFFFFFFF:
            record = self._pack(self._magic, sec, usec, len(payload)) + payload
        else:
            record = self._codec.encode(payload, sec, usec)
        with self._tlock:
            if self._closed:
                raise JlogClosed("write() on a closed JlogWriter")
            try:
                if not self._held:
                    self._acquire()
                # The burst holds the segment lock: nobody else appends, so
                # the end is known (no lseek) and the record is one pwrite.
                end = self._known_end
                size = len(record)
                try:
                    written = _pwrite(self._seg_fd, record, end)
                    if written != size:
                        pwrite_all(self._seg_fd, memoryview(record)[written:], end + written)
                except BaseException:
                    # A partial record may be on disk: the next burst must
                    # measure the file and cut it off, not write over it.
                    self._known_end = -1
                    self._release()
                    raise
                end = self._known_end = end + size
                now = self._last_write = _monotonic()
                if end >= self._limit or now >= self._burst_until:
                    self._end_burst(end, now)
                if self._syncing:
                    self._after_write(1)
            except OSError as exc:
                raise JlogError(f"cannot append to jlog {self.path}: {exc}") from exc

    @os_errors("cannot append to jlog")
    def write_many(self, payloads: list[bytes] | tuple[bytes, ...]) -> None:
        """Append several records in order, with as few system calls as the format allows.

        The records are written together (one ``pwrite`` per segment they
        land in) and share one timestamp; the durability policy is applied
        once for the batch. A crash in the middle can persist a prefix of
        the batch, never a partial record.

        Args:
            payloads: the message bytes, in order.

        Raises:
            JlogInvalidArgument: a payload is a ``str``.
            JlogClosed: the writer is closed.
        """
        if not payloads:
            return
        for payload in payloads:
            if isinstance(payload, str):
                raise JlogInvalidArgument("jlog payloads are bytes; encode the str first")
        sec, nsec = divmod(time.time_ns(), 1_000_000_000)
        records = self._codec.encode_many(payloads, sec, nsec // 1000)
        with self._tlock:
            if self._closed:
                raise JlogClosed("write_many() on a closed JlogWriter")
            self._release()
            self._append(records)
            self._after_write(len(records))

    @os_errors("cannot sync jlog")
    def sync(self) -> None:
        """``fdatasync`` the current segment now, whatever the policy."""
        with self._tlock:
            if self._closed:
                raise JlogClosed("sync() on a closed JlogWriter")
            self._sync()

    @property
    def current_log(self) -> int:
        """The segment this writer appends to now."""
        return self._log

    @os_errors("cannot close jlog writer")
    def close(self) -> None:
        """Sync and close; idempotent. Stops the group-commit thread."""
        with self._tlock:
            if self._closed:
                return
            self._closed = True
            self._release()
            if self._seg_fd >= 0:
                os.fdatasync(self._seg_fd)
            self._close_fds()
        if self._flusher is not None:
            self._stop.set()
            self._flusher.join()
        if self._releaser is not None:
            self._releaser.stop()

    def __enter__(self) -> JlogWriter:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- appending -------------------------------------------------------------

    def _append(self, records: list[bytes]) -> None:
        """Append ``records``, rolling over as often as the unit limit says (tlock held)."""
        limit = self._limit
        i, n = 0, len(records)
        while i < n:
            fd = self._seg_fd
            roll = corrupt = False
            lock(fd)
            try:
                size = file_size(fd)
                if size != self._known_end:
                    size = self._check_tail(fd, size)
                if size >= limit:
                    roll = True
                else:
                    # Take records while the segment is below the limit: the
                    # record that crosses it is the last one (libjlog never
                    # appends to a segment already at or over the limit).
                    j, end = i, size
                    while j < n and end < limit:
                        end += len(records[j])
                        j += 1
                    pwrite_all(fd, records[i] if j == i + 1 else b"".join(records[i:j]), size)
                    self._known_end = end
                    i = j
                    roll = end >= limit
            except _CorruptTail as exc:
                log_.error("jlog %s: %s; rolling over to a new segment", self.path, exc)
                corrupt = True
            finally:
                unlock(fd)
            if roll or corrupt:
                self._rollover()

    # --- bursts (see _burst) -------------------------------------------------

    def _acquire(self) -> None:
        """Take the segment lock on a segment with room, with its end known (tlock held)."""
        now = time.monotonic()
        if now < self._handoff_until:
            time.sleep(self._handoff_until - now)
        for other in _burst.others(self):
            other.release_nowait()
        while True:
            fd = self._seg_fd
            lock(fd)
            try:
                size = file_size(fd)
                if size != self._known_end:
                    size = self._check_tail(fd, size)
            except _CorruptTail as exc:
                unlock(fd)
                log_.error("jlog %s: %s; rolling over to a new segment", self.path, exc)
                self._rollover()
                continue
            except BaseException:
                unlock(fd)
                raise
            if size >= self._limit:
                unlock(fd)
                self._rollover()
                continue
            self._held = True
            self._known_end = size
            now = self._held_since = time.monotonic()
            if now < self._contended_until:
                self._burst_until = 0.0  # one record, then unlock
                return
            self._burst_until = now + _burst.MAX_HOLD
            if self._releaser is None:
                self._releaser = _burst.Releaser(self, f"jlog-release {self.path.name}")
            self._releaser.arm(self)
            return

    def _end_burst(self, end: int, now: float) -> None:
        """After a write that filled the segment or ran out the burst's time (tlock held)."""
        if end >= self._limit:
            self._rollover()
        else:
            self._release(handoff=now >= self._contended_until)

    def _release(self, *, handoff: bool = False) -> None:
        """End the burst: unlock the segment if this writer holds it (tlock held)."""
        if not self._held:
            return
        self._held = False
        if self._releaser is not None:
            self._releaser.disarm()
        if handoff:
            self._handoff_until = time.monotonic() + _burst.HANDOFF
        unlock(self._seg_fd)

    def release_nowait(self) -> None:
        """End the burst now unless a thread is writing through this writer.

        Called by another writer of this process that is about to lock a
        segment (it may be this writer's); never blocks.
        """
        if self._held and self._tlock.acquire(blocking=False):
            try:
                self._release()
            finally:
                self._tlock.release()

    def release_if_due(self) -> float | None:
        """The releaser's check: end an idle or overlong burst.

        Returns:
            Seconds until the burst is due to end, or None when none is held.
        """
        with self._tlock:
            if not self._held:
                if self._releaser is not None:
                    self._releaser.disarm()
                return None
            now = time.monotonic()
            due = min(self._last_write + _burst.IDLE, self._held_since + _burst.MAX_HOLD)
            if now < due:
                return due - now
            self._release(handoff=now - self._held_since >= _burst.MAX_HOLD)
            return None

    def after_fork_in_child(self) -> None:
        """Forget the parent's lock and threads and reopen the files (in a forked child).

        The inherited descriptors share the parent's open file descriptions,
        so locking them would not exclude the parent, and keeping them open
        would keep the parent's lock alive if the parent died holding it.
        """
        self._tlock = threading.Lock()
        self._held = False
        self._releaser = None
        self._stop = threading.Event()
        self._flusher = None
        old = (self._seg_fd, self._meta_fd)
        self._seg_fd = self._meta_fd = -1
        for fd in old:
            if fd >= 0:
                os.close(fd)
        if self._closed:
            return
        try:
            self._meta_fd = open_rw(self.path / fmt.METASTORE)
            self._seg_fd = open_rw(self.path / fmt.segment_name(self._log), create=True)
        except OSError as exc:
            log_.error("jlog %s: a forked child cannot reopen its writer: %s", self.path, exc)
            self._closed = True
            self._close_fds()
            return
        self._start_flusher()

    def _tail_hint(self, size: int) -> int:
        """Where to start checking a segment's tail: its last indexed record, or 0."""
        try:
            idx_fd = open_rw(self.path / fmt.index_name(self._log))
        except FileNotFoundError:
            return 0
        try:
            idx_len = file_size(idx_fd)
            if idx_len < 8 or idx_len % 8:
                return 0
            raw = pread_all(idx_fd, 16 if idx_len >= 16 else 8, idx_len - min(idx_len, 16))
        finally:
            os.close(idx_fd)
        entries = [fmt.U64.unpack_from(raw, k)[0] for k in range(0, len(raw), 8)]
        candidates = [e for e in entries if e < size]
        return int(candidates[-1]) if candidates else 0

    def _check_tail(self, fd: int, size: int) -> int:
        """Make sure the segment ends on a record boundary (segment lock held).

        Returns:
            The segment size after cutting off a torn record, if any.

        Raises:
            _CorruptTail: the tail holds bytes that are not records.
        """
        known = self._known_end
        if known >= 0 and known != size:
            # Records this writer did not write: another writer is busy,
            # so lock once per record for a while (see _burst).
            self._contended_until = time.monotonic() + _burst.CONTENDED
        start = known if 0 <= known <= size else self._tail_hint(size)
        buf = pread_all(fd, size - start, start)
        walk = fmt.walk_records(buf, self.meta.hdr_magic)
        if walk.stop is fmt.WalkStop.BAD_MAGIC and walk.end == 0 and start > 0:
            start, buf = 0, pread_all(fd, size, 0)
            walk = fmt.walk_records(buf, self.meta.hdr_magic)
        if walk.stop is fmt.WalkStop.END:
            self._known_end = size
            return size
        good = start + walk.end
        # A torn write is one record cut short at the very end. More record
        # magic further on means a damaged length field in the middle of
        # real data: cutting there would destroy records, so leave it.
        if walk.stop is fmt.WalkStop.INCOMPLETE and self._magic_bytes not in buf[walk.end + 4 :]:
            os.ftruncate(fd, good)
            self.truncated_bytes += size - good
            log_.warning(
                "jlog %s: cut a torn record of %d bytes at %08x offset %d (a writer crashed "
                "mid-write)",
                self.path,
                size - good,
                self._log,
                good,
            )
            self._known_end = good
            return good
        raise _CorruptTail(f"segment {self._log:08x} is corrupt after offset {good}")

    def _rollover(self) -> None:
        """Sync and close the segment, then move to ``storage_log + 1`` or adopt a newer one."""
        self._release()
        os.fdatasync(self._seg_fd)
        os.close(self._seg_fd)
        self._seg_fd = -1
        self._unsynced = 0
        with locked(self._meta_fd):
            meta = read_meta_fd(self._meta_fd)
            if meta.storage_log == self._log:
                new = self._log + 1
                fd = open_rw(self.path / fmt.segment_name(new), create=True)
                meta = attrs.evolve(meta, storage_log=new)
                write_meta_fd(
                    self._meta_fd, meta, sync=self._durable or meta.safety is fmt.Safety.SAFE
                )
                if self._durable:
                    fsync_dir(self.path)
            else:
                new = meta.storage_log
                fd = open_rw(self.path / fmt.segment_name(new), create=True)
        self._log = new
        self._seg_fd = fd
        self._known_end = -1

    # --- durability ------------------------------------------------------------

    def _sync(self) -> None:
        # Nobody should wait for the segment lock through a disk flush.
        self._release()
        os.fdatasync(self._seg_fd)
        self._unsynced = 0

    def _after_write(self, count: int) -> None:
        mode = self.durability.mode
        if mode is DurabilityMode.NONE:
            return
        if mode is DurabilityMode.FSYNC:
            self._sync()
            return
        if not self._unsynced:
            self._first_unsynced = time.monotonic()
        self._unsynced += count
        max_records, max_delay = self.durability.max_records, self.durability.max_delay
        if (max_records is not None and self._unsynced >= max_records) or (
            max_delay is not None and time.monotonic() - self._first_unsynced >= max_delay
        ):
            self._sync()

    def _flush_loop(self) -> None:
        delay = self.durability.max_delay
        assert delay is not None
        while not self._stop.wait(delay / 4):
            with self._tlock:
                if self._closed:
                    return
                if self._unsynced and time.monotonic() - self._first_unsynced >= delay:
                    self._sync()

    # --- opening ---------------------------------------------------------------

    def _flush_pre_commit(self) -> None:
        """Append the records a crashed writer left in ``pre_commit``, then clear it."""
        fd = open_rw(self.path / fmt.PRE_COMMIT, create=True)
        try:
            with locked(fd):
                size = file_size(fd)
                if size < fmt.U32.size:
                    pwrite_all(fd, bytes(fmt.U32.size), 0)
                    return
                pending = fmt.decode_pre_commit(pread_all(fd, size, 0))
                if not pending:
                    return
                walk = fmt.walk_records(pending, self.meta.hdr_magic)
                if walk.stop is not fmt.WalkStop.END:
                    log_.error(
                        "jlog %s: pre_commit holds %d bytes that are not whole records after "
                        "offset %d; they are dropped",
                        self.path,
                        len(pending) - walk.end,
                        walk.end,
                    )
                # pairwise over starts plus the end: no records (a torn first
                # record) gives no pairs rather than a mismatched zip.
                records = [pending[a:b] for a, b in itertools.pairwise([*walk.offsets, walk.end])]
                with self._tlock:
                    self._append(records)
                    # The records must be on disk before pre_commit forgets
                    # them: a crash in between duplicates, never loses.
                    self._sync()
                pwrite_all(fd, bytes(fmt.U32.size), 0)
                os.fsync(fd)
                self.pre_commit_records = len(records)
                log_.warning(
                    "jlog %s: flushed %d records a crashed writer left in pre_commit",
                    self.path,
                    len(records),
                )
        finally:
            os.close(fd)

    def _close_fds(self) -> None:
        if self._seg_fd >= 0:
            os.close(self._seg_fd)
            self._seg_fd = -1
        if self._meta_fd >= 0:
            os.close(self._meta_fd)
            self._meta_fd = -1
