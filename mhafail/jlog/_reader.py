"""Reading a jlog: :class:`JlogReader` (a subscriber) and :class:`JlogTail` (a ghost).

A subscriber reads at least once: it processes messages, then checkpoints
the id of the last one it processed; after a crash it reads again from its
checkpoint. :class:`JlogReader` offers libjlog's ``read_interval`` (one
segment at a time, from the checkpoint) and a batch/iterator API with an
in-memory cursor, so a consumer can read ahead and checkpoint when the data
is safe downstream.

:class:`JlogTail` follows the log like ``jlogtail`` without a checkpoint
file, so it never holds data back; if retention deletes the segment under
it, it moves on to the oldest one left.

Thread safety: each reader serializes its own calls with a lock; readers
in other threads or processes are independent (they share the ``.idx``
files through the index lock).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import attrs

from mhafail.errors import JlogClosed, JlogInvalidArgument, JlogUnknownSubscriber

from . import _format as fmt
from . import _subscribers as subs
from ._block import MessageBlock
from ._cursor import Cursor
from ._files import open_rw, os_errors, pread_all, pwrite_all, read_meta_fd
from ._lock import locked
from ._segment import SegmentView


@attrs.frozen
class Interval:
    """What ``read_interval`` found: messages ``start`` … ``finish`` of one segment.

    Attributes:
        start: the first unread message (when ``count`` > 0).
        finish: the last message available now.
        count: how many messages the interval holds (0: nothing new).
    """

    start: fmt.MessageId
    finish: fmt.MessageId
    count: int


def _read_meta(path: Path) -> fmt.Meta:
    fd = open_rw(path / fmt.METASTORE)
    try:
        with locked(fd):
            return read_meta_fd(fd)
    finally:
        os.close(fd)


class _Batches:
    """Iteration over anything with ``read_batch()`` (readers and tails)."""

    def read_batch(self, max_messages: int = 4096) -> list[fmt.Message]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[fmt.Message]:
        """Yield every message available now, batch by batch (readers: without checkpointing)."""
        while True:
            batch = self.read_batch()
            if not batch:
                return
            yield from batch

    def follow(
        self, *, poll_interval: float = 0.1, stop: threading.Event | None = None
    ) -> Iterator[fmt.Message]:
        """Yield messages as they arrive until ``stop`` is set (polling when idle)."""
        while stop is None or not stop.is_set():
            batch = self.read_batch()
            if batch:
                yield from batch
            elif stop is not None:
                stop.wait(poll_interval)
            else:
                time.sleep(poll_interval)


class JlogReader(_Batches):
    """Reads a jlog as subscriber ``subscriber``.

    Args:
        path: the jlog directory.
        subscriber: an existing subscriber name.

    Raises:
        JlogUnknownSubscriber: the subscriber does not exist.
        JlogCorrupt: the metastore is invalid.
    """

    @os_errors("cannot open jlog reader")
    def __init__(self, path: str | os.PathLike[str], subscriber: str) -> None:
        self.path = Path(path)
        self.subscriber = subscriber
        self._cp_name = fmt.checkpoint_name(subscriber)
        self.meta = _read_meta(self.path)
        self._sync_cp = self.meta.safety is fmt.Safety.SAFE
        try:
            self._cp_fd = open_rw(self.path / self._cp_name)
        except FileNotFoundError:
            raise JlogUnknownSubscriber(f"no subscriber {subscriber!r} in {self.path}") from None
        self._cursor = Cursor(self.path, self.meta.hdr_magic)
        self._tlock = threading.RLock()
        self._closed = False
        self._position: fmt.MessageId | None = None

    # --- checkpoint file ------------------------------------------------------

    def _read_cp(self) -> fmt.MessageId:
        with locked(self._cp_fd):
            raw = pread_all(self._cp_fd, 9, 0)
        return fmt.decode_checkpoint(raw)

    def _swap_cp(self, position: fmt.MessageId) -> fmt.MessageId:
        with locked(self._cp_fd):
            old = fmt.decode_checkpoint(pread_all(self._cp_fd, 9, 0))
            pwrite_all(self._cp_fd, fmt.encode_checkpoint(position), 0)
            if self._sync_cp:
                os.fsync(self._cp_fd)
        return old

    def _check_open(self) -> None:
        if self._closed:
            raise JlogClosed(f"reader {self.subscriber!r} is closed")

    # --- libjlog-style API -------------------------------------------------

    @os_errors("cannot read jlog")
    def checkpoint_position(self) -> fmt.MessageId:
        """Return the stored checkpoint (the last message consumed)."""
        with self._tlock:
            self._check_open()
            return self._read_cp()

    @os_errors("cannot read jlog")
    def read_interval(self) -> Interval:
        """libjlog's ``jlog_ctx_read_interval``: what follows the checkpoint.

        If the checkpoint sits at the end of a closed segment, it is moved
        to the start of the next one and saved (freeing segments nobody
        needs). The interval never crosses a segment.

        Returns:
            The unread messages of the checkpoint's segment.

        Raises:
            JlogCorrupt: the data is corrupt (run ``repair()``).
        """
        with self._tlock:
            self._check_open()
            checkpoint = self._read_cp()
            start, available, _ = self._cursor.locate(checkpoint)
            if start.log != checkpoint.log:
                self._move_forward(start)
            finish = fmt.MessageId(start.log, start.marker + available)
            first = fmt.MessageId(start.log, start.marker + 1) if available else start
            return Interval(first, finish, available)

    @os_errors("cannot read jlog")
    def read_messages(self, start: fmt.MessageId, count: int) -> list[fmt.Message]:
        """Read ``count`` messages from ``start`` on, inside one segment.

        Raises:
            JlogInvalidArgument: the range is not (or no longer) in the segment.
        """
        with self._tlock:
            self._check_open()
            if count <= 0:
                return []
            if start.marker < 1:
                raise JlogInvalidArgument(f"message markers start at 1, not {start}")
            view = self._cursor.view(start.log)
            if view is not None:
                view.resync(self._cursor.storage_log())
            if view is None or start.marker + count - 1 > view.count:
                raise JlogInvalidArgument(f"no {count} messages from {start} in this jlog")
            return view.read(start.marker, count)

    def read_message(self, message_id: fmt.MessageId) -> fmt.Message:
        """Read one message by id (libjlog's ``jlog_ctx_read_message``)."""
        return self.read_messages(message_id, 1)[0]

    # --- batches, iteration, checkpoints ---------------------------------------

    @os_errors("cannot read jlog")
    def read_batch(self, max_messages: int = 4096) -> list[fmt.Message]:
        """Return up to ``max_messages`` messages after the reader's cursor.

        The cursor starts at the checkpoint and moves past what each call
        returns; nothing is checkpointed: call :meth:`checkpoint` with the
        last id you processed. A batch stays inside one segment; an empty
        list means the reader is caught up.

        Raises:
            JlogCorrupt: the data is corrupt (run ``repair()``).
        """
        with self._tlock:
            start, count, view = self._next(max_messages)
            if view is None:
                return []
            batch = view.read(start.marker + 1, count)
            self._position = batch[-1].id
            return batch

    @os_errors("cannot read jlog")
    def read_many(self, max_messages: int = 4096) -> MessageBlock:
        """Return up to ``max_messages`` messages after the cursor as one block.

        Like :meth:`read_batch` (same cursor, same checkpoint rules: call
        :meth:`checkpoint` with ``block.last``), but the block holds the
        payloads in a list and makes ids and timestamps only on demand,
        which makes reading several times cheaper per message.

        Returns:
            The block; an empty one (false) when the reader is caught up.

        Raises:
            JlogCorrupt: the data is corrupt (run ``repair()``).
        """
        with self._tlock:
            start, count, view = self._next(max_messages)
            if view is None:
                return MessageBlock(fmt.MessageId(start.log, start.marker + 1), [])
            block = view.read_block(start.marker + 1, count)
            self._position = block.last
            return block

    def _next(self, max_messages: int) -> tuple[fmt.MessageId, int, SegmentView | None]:
        """Where the next batch starts, how long it is, and its segment (None: caught up)."""
        self._check_open()
        checkpoint = self._read_cp()
        position = self._position
        if position is None or position < checkpoint:
            position = checkpoint
        start, available, view = self._cursor.locate(position)
        if position == checkpoint and start.log != checkpoint.log:
            # Nothing is outstanding: record the move as libjlog does.
            self._move_forward(start)
        count = min(available, max_messages)
        if count <= 0 or view is None:
            self._position = start
            return start, 0, None
        return start, count, view

    @os_errors("cannot read jlog")
    def checkpoint(self, message_id: fmt.MessageId) -> None:
        """Record ``message_id`` as the last message processed.

        Moving forward frees segments no subscriber needs any more. Moving
        back (a rewind) is checked against the data still stored.

        Raises:
            JlogInvalidArgument: a rewind to data that no longer exists, or
                an id past what exists.
        """
        with self._tlock:
            self._check_open()
            handed_out = self._position
            if handed_out is None or message_id > handed_out:
                subs.set_position(self.path, self.meta, self.subscriber, message_id)
                self._position = message_id
                return
            old = self._read_cp()
            if message_id < old:
                subs.set_position(self.path, self.meta, self.subscriber, message_id)
                return
            old = self._swap_cp(message_id)
            if message_id.log > old.log:
                subs.release(self.path, old.log, message_id.log)

    def rewind(self) -> None:
        """Forget what was read but not checkpointed: the next batch starts at the checkpoint."""
        with self._tlock:
            self._position = None

    def _move_forward(self, start: fmt.MessageId) -> None:
        old = self._swap_cp(fmt.MessageId(start.log, 0))
        if start.log > old.log:
            subs.release(self.path, old.log, start.log)

    @os_errors("cannot read jlog")
    def close(self) -> None:
        """Close the reader's files; idempotent."""
        with self._tlock:
            if self._closed:
                return
            self._closed = True
            self._cursor.close()
            os.close(self._cp_fd)

    def __enter__(self) -> JlogReader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class JlogTail(_Batches):
    """Follows a jlog without a checkpoint: holds no data back (like ``jlogtail``).

    Args:
        path: the jlog directory.
        start: :attr:`Whence.END` (default) for new messages only,
            :attr:`Whence.BEGIN` for everything still stored.
        back: with ``END``, also return up to this many of the newest
            messages already written (within the newest segment).
    """

    @os_errors("cannot open jlog tail")
    def __init__(
        self, path: str | os.PathLike[str], *, start: fmt.Whence = fmt.Whence.END, back: int = 0
    ) -> None:
        self.path = Path(path)
        self.meta = _read_meta(self.path)
        self._cursor = Cursor(self.path, self.meta.hdr_magic, strict_gaps=False)
        self._tlock = threading.Lock()
        self._closed = False
        if start is fmt.Whence.BEGIN:
            self.position = fmt.MessageId(subs.first_log(self.path, self._cursor.storage_log()), 0)
        else:
            last = self._cursor.last_id()
            self.position = fmt.MessageId(last.log, max(0, last.marker - max(0, back)))

    @os_errors("cannot read jlog")
    def read_batch(self, max_messages: int = 4096) -> list[fmt.Message]:
        """Return up to ``max_messages`` messages after :attr:`position` and advance it."""
        with self._tlock:
            if self._closed:
                raise JlogClosed("tail is closed")
            start, available, view = self._cursor.locate(self.position)
            count = min(available, max_messages)
            if count <= 0 or view is None:
                self.position = start
                return []
            batch = view.read(start.marker + 1, count)
            self.position = batch[-1].id
            return batch

    @os_errors("cannot read jlog")
    def read_many(self, max_messages: int = 4096) -> MessageBlock:
        """Like :meth:`read_batch`, as one :class:`MessageBlock` (empty: caught up)."""
        with self._tlock:
            if self._closed:
                raise JlogClosed("tail is closed")
            start, available, view = self._cursor.locate(self.position)
            count = min(available, max_messages)
            if count <= 0 or view is None:
                self.position = start
                return MessageBlock(fmt.MessageId(start.log, start.marker + 1), [])
            block = view.read_block(start.marker + 1, count)
            self.position = block.last
            return block

    @os_errors("cannot read jlog")
    def close(self) -> None:
        """Close the tail's files; idempotent."""
        with self._tlock:
            if not self._closed:
                self._closed = True
                self._cursor.close()

    def __enter__(self) -> JlogTail:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
