"""The spool's commit log: many concurrent puts made durable by one ``fdatasync``.

A group commit appends a batch of messages (each one's whole file) and
removals to the active *segment* of the log and flushes it once; then the
puts are acknowledged. A message stays in the log only until a
*checkpoint* files it into ``msg/`` (a new file, made durable in bulk:
``syncfs`` and an fsync of ``msg/``) and retires its segment; one removed
before that never gets a file. After a crash, :func:`recover` replays the
segments not yet retired: every message acknowledged is in the log, so it
is rewritten into ``msg/`` if the crash lost it there (a power loss, the
node's cache lost with it) or had not filed it yet.

Layout (``<spool>/wal/``)::

    <seq>          a segment in use (16 hex digits, higher is newer)
    spare.<seq>    a retired segment kept for reuse (never replayed)

A segment is written in place, never appended to: it is filled with zeros
(or is a retired one renamed) and made durable *before* its first record,
so a flush of a record is a data flush only (no file size or block
allocation to commit: ext4 then flushes without a journal commit).

A record::

    "MHW1"  seq (u64)  length (u32)  crc32 of seq and payload (u32)   little-endian
    payload: kind (b"P" put, b"D" drop), the 26-digit id, then for a put
             the message file's bytes

Each batch is written from a block (4 KiB) boundary and padded with zeros
to the next one, so writing a batch never rewrites a block of an earlier,
acknowledged batch (a torn write could otherwise damage it). The scan of
a segment reads a batch's records until one does not check out, then goes
to the next block boundary; it stops at a boundary that holds no valid
record (zeros, a torn batch, a stale record of a reused segment, whose seq
is older). So a segment is only ever written after a flush succeeded:
after a failed write or flush it is sealed and the next batch goes to a
new one.

A ``drop`` record stands for a removal (``done``, ``bounce``, an undone
put) of a message whose put is still in the log, so that a replay does
not resurrect it; the file is unlinked first, then the drop is logged.
Replay is idempotent: it rewrites a put's file when it is missing or
differs, unlinks dropped ones, makes ``msg/`` durable, and only then
retires the segments.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from mhafail._fs import fsync_dir
from mhafail.spool._files import DIR_MODE, FILE_MODE, sync_files
from mhafail.spool._walscan import (
    BLOCK,
    DROP,
    IMPORTED,
    PUT,
    RECORD_OVERHEAD,
    WAL,
    encode,
    imports,
    logged,
    padded,
    pending,
    recover,
    retire,
    scan,
    scan_at,
    segment_name,
    segments,
    tree,
    write_new,
)

__all__ = [  # the read side lives in _walscan; these names are used from here too
    "DROP",
    "PUT",
    "SEGMENT_SIZE",
    "WAL",
    "CommitLog",
    "encode",
    "logged",
    "padded",
    "pending",
    "recover",
    "scan",
    "scan_at",
    "segments",
    "tree",
]

logger = logging.getLogger(__name__)

SEGMENT_SIZE = 8 * 1024 * 1024
_ZEROS = bytes(1 << 20)


def _unlink_filed(msg_dir: Path, live: Iterable[str], dropped: set[str]) -> None:
    """Unlink the files in ``msg_dir`` of logged messages (and the state files of dropped ones).

    One listing, then an unlink only of the files there: most logged
    messages were never filed, and a failing unlink each would be a system
    call per message (thousands after a crash).
    """
    there = set(os.listdir(msg_dir))
    for mid in sorted(dropped.union(live)):
        names = (mid, mid + ".state") if mid in dropped else (mid,)
        for file in names:
            if file in there:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(msg_dir / file)


class CommitLog:
    """The append side of one spool's log, and where logged messages are until filed.

    A put is logged and acknowledged without a file of its own: its bytes
    stay in the log (readable with :meth:`read`) until a checkpoint files
    it into ``msg/``, or a removal drops it first (then it never gets one).

    Args:
        directory: the spool directory.
        segment_size: bytes per segment (a batch larger than that gets a
            segment of its own, grown as it is written).

    Thread-safe: one mutex guards the state; a checkpoint's file creation
    and flushes run outside it. Lock order: the spool's fence section,
    then the mutex. Call :func:`recover` first: a new log starts after the
    newest segment.
    """

    def __init__(self, directory: Path, *, segment_size: int = SEGMENT_SIZE) -> None:
        self.directory = directory
        self.wal_dir = directory / WAL
        self.segment_size = segment_size
        self.mutex = threading.Lock()
        self._retired = threading.Condition(self.mutex)
        self._fd = -1
        self._seq = 0
        self._offset = 0
        self._fds: dict[int, int] = {}  # every unretired segment, for reads
        self.last_put = 0.0  # time.monotonic() of the last put logged
        self._sealed: list[int] = []
        self._ids: dict[int, set[str]] = {}  # segment -> puts logged there
        self._live: dict[str, tuple[int, int, int]] = {}  # id -> (seq, offset, length)
        self._filed: set[str] = set()  # live ids already filed in msg/
        self._foreign: dict[int, Path] = {}  # key (< 0) -> segment of an imported log
        self._next_foreign = -1
        used, spares = segments(directory)
        self._next = max(used + spares, default=0) + 1

    # --- writing -------------------------------------------------------------

    def put(
        self,
        items: list[tuple[str, bytes]],
        drops: Sequence[str] = (),
        unlink: Callable[[str, bool], None] | None = None,
    ) -> list[str]:
        """Log puts ``(id, file bytes)`` and removals durably: one write, one flush.

        Each of ``drops`` is first unlinked (``unlink(id, filed)``, under
        the mutex, so that no checkpoint files it meanwhile; ``filed`` is
        False for a message that never had a file), then logged if its put
        is in the log.

        Returns:
            The dropped ids whose put is not in the log (filed and
            retired): the caller fsyncs ``msg/`` to make their removal durable.

        Raises:
            OSError: not logged (the segment is sealed, never written again).
        """
        with self.mutex:
            for mid in drops:
                if unlink is not None:
                    unlink(mid, mid in self._filed or mid not in self._live)
            logged = [mid for mid in drops if mid in self._live]
            done = set(logged)
            size = sum(RECORD_OVERHEAD + len(b) for _, b in items)
            seq = self._room(size + len(logged) * RECORD_OVERHEAD + BLOCK)
            chunks, where, pos = [], [], self._offset
            for mid, body in items:
                record = encode(seq, PUT, mid, body)
                chunks.append(record)
                where.append((mid, (seq, pos + len(record) - len(body), len(body))))
                pos += len(record)
            chunks.extend(encode(seq, DROP, mid) for mid in logged)
            self._write(padded(b"".join(chunks)))
            if items:
                self.last_put = time.monotonic()
            ids = self._ids.setdefault(seq, set())
            for mid, loc in where:
                ids.add(mid)
                self._live[mid] = loc
            for mid in logged:
                self._live.pop(mid, None)
                self._filed.discard(mid)
            return [mid for mid in drops if mid not in done]

    def holds(self, message_id: str) -> bool:
        """True while ``message_id``'s put is in the log (filed or not)."""
        with self.mutex:
            return message_id in self._live

    def read(self, message_id: str) -> bytes | None:
        """The file bytes of a logged message not yet filed (None: read ``msg/``)."""
        with self.mutex:
            loc = self._live.get(message_id)
            if loc is None or message_id in self._filed:
                return None
            seq, offset, length = loc
            return os.pread(self._fds[seq], length, offset)

    def drop(
        self, message_ids: Iterable[str], *, unlink: Callable[[str], None], force: bool = False
    ) -> bool:
        """Remove messages: ``unlink(id)`` each, then log drops for those in the log.

        ``force`` logs a drop for every id (puts whose logging failed: some
        of their records may have reached the disk all the same).

        Returns:
            True when drops were logged (the removal is durable); False
            when none of the messages is in the log: the caller makes the
            removal durable (an fsync of ``msg/``).

        Raises:
            OSError: from ``unlink`` or the log (the segment is sealed).
        """
        with self.mutex:
            ids = list(message_ids)
            for mid in ids:
                unlink(mid)
            logged = [mid for mid in ids if force or mid in self._live]
            if not logged:
                return False
            seq = self._room(len(logged) * RECORD_OVERHEAD + BLOCK)
            self._write(padded(b"".join(encode(seq, DROP, mid) for mid in logged)))
            for mid in logged:
                self._live.pop(mid, None)
                self._filed.discard(mid)
            return True

    def _room(self, size: int) -> int:
        if self._fd >= 0 and self._offset > 0 and self._offset + size > self.segment_size:
            self._seal()
        if self._fd < 0:
            self._activate()
        return self._seq

    def _write(self, data: bytes) -> None:
        try:
            view = memoryview(data)
            offset = self._offset
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
            os.fdatasync(self._fd)
        except OSError:
            # What reached the disk is unknown (a failed flush may even clear
            # the error): never write after it, or the scan could stop before
            # a record that was acknowledged.
            self._seal()
            raise
        self._offset = offset

    def _activate(self) -> None:
        if not self.wal_dir.is_dir():
            self.wal_dir.mkdir(mode=DIR_MODE, exist_ok=True)
            fsync_dir(self.directory)  # its name too must be durable before a record
        seq, self._next = self._next, self._next + 1
        path = self.wal_dir / segment_name(seq)
        _, spares = segments(self.directory)
        if spares:
            os.rename(self.wal_dir / segment_name(spares[0], spare=True), path)
        else:
            self._zero_fill(self.wal_dir / "new", path)
        # The name must be durable before a record in the file is acknowledged.
        fsync_dir(self.wal_dir)
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._fds[seq] = self._fd
        self._seq, self._offset = seq, 0

    def prepare_spare(self, section: Callable[[], contextlib.AbstractContextManager[None]]) -> bool:
        """Zero-fill a spare segment ahead of need, if there is none; True when one was made.

        For the checkpointer thread: the segment a full one hands over to is
        then ready, and the put that fills a segment does not wait for 8 MiB
        of zeros to be written. The zeros are written outside the fence
        section (a takeover's claim does not wait for them), the name is
        given inside one.
        """
        with self.mutex:
            if segments(self.directory)[1]:
                return False
            seq, self._next = self._next, self._next + 1
        if not self.wal_dir.is_dir():
            with section():
                self.wal_dir.mkdir(mode=DIR_MODE, exist_ok=True)
                fsync_dir(self.directory)
        tmp = self.wal_dir / "new.spare"
        self._zero_fill(tmp, None)
        with section():
            os.rename(tmp, self.wal_dir / segment_name(seq, spare=True))
            fsync_dir(self.wal_dir)
        return True

    def _zero_fill(self, tmp: Path, path: Path | None) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            left = self.segment_size
            while left > 0:
                left -= os.write(fd, memoryview(_ZEROS)[: min(left, len(_ZEROS))])
            os.fsync(fd)
        finally:
            os.close(fd)
        if path is not None:
            os.rename(tmp, path)

    def _seal(self) -> None:
        if self._fd >= 0:
            self._fd = -1  # stays open in _fds for reads until retired
            self._sealed.append(self._seq)

    @property
    def active(self) -> int:
        """The number of the segment puts go to (-1 while none is open; a hint, no mutex)."""
        return self._seq if self._fd >= 0 else -1

    # --- checkpoints -----------------------------------------------------------

    def sealed(self) -> int:
        """How many of this log's own segments wait for a checkpoint (a hint, no mutex).

        Segments of imported logs do not count: a takeover does not make
        puts wait for their filing (:meth:`waiting` counts them).
        """
        return len(self._sealed) - len(self._foreign)

    def waiting(self) -> int:
        """How many segments wait for a checkpoint, imported ones included (a hint)."""
        return len(self._sealed)

    def holding(self, message_ids: Iterable[str]) -> set[str]:
        """Which of ``message_ids`` are in the log (one mutex round for a batch)."""
        with self.mutex:
            return {mid for mid in message_ids if mid in self._live}

    def wait_sealed_below(self, limit: int, timeout: float) -> bool:
        """Wait until fewer than ``limit`` segments wait for a checkpoint."""
        with self._retired:
            return self._retired.wait_for(lambda: self.sealed() < limit, timeout)

    def checkpoint(
        self,
        section: Callable[[], contextlib.AbstractContextManager[None]],
        *,
        everything: bool = False,
        file: bool = True,
        chunk: int = 64,
    ) -> int:
        """File the sealed segments' messages, make ``msg/`` durable, retire the segments.

        Args:
            section: the spool's fence section (filing and retiring change
                the spool; one section per ``chunk`` files, so a takeover's
                claim never waits long).
            everything: seal the active segment first (a clean close).
            file: False: file nothing, only retire the oldest sealed
                segments whose messages are all gone (removed before they
                needed a file: the common case when delivery keeps up).
            chunk: files created per section.

        Returns:
            How many segments were retired.

        Raises:
            OSError: nothing was retired (retried at the next checkpoint).
            SpoolFenced: from ``section``: the spool is no longer ours.
        """
        with self.mutex:
            if everything:
                self._seal()
            todo = list(self._sealed)
            if not file:
                # Oldest first only: a later segment may hold the drops of an
                # older one's puts; retired alone, a replay would resurrect them.
                empty = [not (self._ids.get(seq, set()) & self._live.keys()) for seq in todo]
                todo = todo[: empty.index(False)] if False in empty else todo
            names = [mid for seq in todo for mid in self._ids.get(seq, ())]
        if not todo:
            return 0
        msg_dir, tmp_dir = self.directory / "msg", self.directory / "tmp"
        for start in range(0, len(names), chunk):
            with section():
                for mid in names[start : start + chunk]:
                    self._file(mid, msg_dir / mid, tmp_dir / mid)
        sync_files(self.directory, [msg_dir / mid for mid in names])
        fsync_dir(msg_dir)
        with section(), self._retired:
            for seq in todo:
                with contextlib.suppress(KeyError, OSError):
                    os.close(self._fds.pop(seq))
                if seq in self._foreign:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self._foreign.pop(seq))
                else:
                    retire(self.wal_dir, seq)
            self._dropimports()
            fsync_dir(self.wal_dir)
            for seq in todo:
                if seq in self._sealed:  # not reset meanwhile
                    self._sealed.remove(seq)
                for mid in self._ids.pop(seq, ()):
                    if self._live.get(mid, (0, 0, 0))[0] == seq:
                        del self._live[mid]
                        self._filed.discard(mid)
            self._retired.notify_all()
        return len(todo)

    def _file(self, mid: str, path: Path, tmp: Path) -> None:
        """Give a logged message its file in ``msg/`` (unless it was dropped meanwhile)."""
        body = self.read(mid)
        if body is None:
            return
        write_new(tmp, body)  # the slow part (a new inode), outside the mutex
        with self.mutex:
            if mid in self._live and mid not in self._filed:
                os.rename(tmp, path)
                self._filed.add(mid)
                return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)

    def adopt(self, source: Path, name: str) -> list[str]:
        """Take the commit log of the spool ``source`` over: one rename of its ``wal/`` into ours.

        For a takeover (call inside both spools' fence sections): the
        messages the dead node acknowledged last, still in its log only,
        come over without a file created each. Its log is scanned first;
        the file in ``source/msg`` of every message in it is unlinked (a
        logged message's record is its authority, and a dropped one must
        stay gone) and ``source/msg`` made durable; then ``source/wal``
        is renamed to ``wal/in.<name>`` here, at once and whole, so that
        every message is in exactly one spool at every instant (a crash
        before the rename leaves them in the source's log, replayed by
        whoever holds it next; after, in ours). Its segments are then read
        like ours and retired, oldest first, before ours (ours may hold
        drops of their puts), once their messages are gone or filed.

        Returns:
            The ids of the messages that came over (in our log only).

        Raises:
            OSError: the log was not taken over if ``source/wal`` is still there.
        """
        src_wal = source / WAL
        found = tree(src_wal)
        if not found:
            return []
        puts: dict[str, tuple[int, int, int]] = {}  # id -> (segment index, offset, length)
        dropped: set[str] = set()
        for index, (path, seq) in enumerate(found):
            for kind, mid, at, length in scan_at(path.read_bytes(), seq):
                if kind == PUT:
                    puts[mid] = (index, at, length)
                else:
                    dropped.add(mid)
        live = {mid: loc for mid, loc in puts.items() if mid not in dropped}
        src_msg = source / "msg"
        _unlink_filed(src_msg, live.keys(), dropped)
        fsync_dir(src_msg)  # before the rename: no copy may come back in the source
        with self.mutex:
            if not self.wal_dir.is_dir():
                self.wal_dir.mkdir(mode=DIR_MODE, exist_ok=True)
                fsync_dir(self.directory)
            target, n = self.wal_dir / (IMPORTED + name), 0
            while os.path.lexists(target):
                n += 1
                target = self.wal_dir / f"{IMPORTED}{name}.{n}"
            os.rename(src_wal, target)
            fsync_dir(self.wal_dir)
            fsync_dir(source)
            keys: list[int] = []
            for path, _ in found:
                key, self._next_foreign = self._next_foreign, self._next_foreign - 1
                moved = target / path.relative_to(src_wal)
                self._fds[key] = os.open(moved, os.O_RDONLY | os.O_CLOEXEC)
                self._foreign[key] = moved
                self._ids[key] = set()
                keys.append(key)
            came = []
            for mid, (index, at, length) in live.items():
                if mid in self._live:
                    continue  # already ours (cannot happen: ids are unique)
                self._ids[keys[index]].add(mid)
                self._live[mid] = (keys[index], at, length)
                came.append(mid)
            front = sum(1 for key in self._sealed if key in self._foreign)
            self._sealed[front:front] = keys
            self._retired.notify_all()
        return sorted(came)

    def _dropimports(self) -> None:
        """Remove imported logs none of whose segments is left (their spares with them)."""
        left = {p.relative_to(self.wal_dir).parts[0] for p in self._foreign.values()}
        for imported in imports(self.wal_dir):
            if imported.name not in left:
                shutil.rmtree(imported, ignore_errors=True)

    def reset(self) -> None:
        """Forget every segment (call under ``mutex``, then :func:`recover`).

        For a spool held again under a new token: whoever held it meanwhile
        may have replayed and retired the segments, so start afresh.
        """
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._fd = -1
        self._sealed.clear()
        self._ids.clear()
        self._live.clear()
        self._filed.clear()
        self._foreign.clear()
        used, spares = segments(self.directory)
        self._next = max([*used, *spares, self._next - 1]) + 1
        self._retired.notify_all()

    def close(self) -> None:
        """Close the segments (unretired ones stay, to be replayed)."""
        with self.mutex:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._fd = -1
