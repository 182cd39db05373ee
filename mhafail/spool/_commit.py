"""Making puts and removals durable: an fsync per message, or group commit through a log.

Without group commit a put is: write ``tmp/<id>``, fsync it, rename it
into ``msg/``, fsync ``msg/`` (two flushes and a new file per message); a
removal: unlink, fsync ``msg/``.

With group commit (the default) one committer thread commits for every
caller: a caller queues its put or removal (kicking the committer if no
commit is in flight) and waits on a lock of its own, released once when
its record is durable (``aput`` awaits a future instead). The committer
takes everything waiting (up to ``max_batch``) and, inside one fence
section, logs the batch in the commit log with one write and one
``fdatasync`` (``_wal.py``), re-checks the lease and only then answers
each caller of the batch; it goes on with what queued meanwhile for up to
``HOLD`` seconds in the same section, then starts a new one. One wake-up
per caller: the CPU per put, and with threads how fast CPython hands the
GIL from one woken caller to the next, bound the rate here. (Callers
leading for each other, leader/follower, was about 25% slower with 32
threads on 2 cores in an isolated A/B, not told apart in the full
benchmark: the leader, itself a caller, queued for the GIL behind the
callers it had just woken after each system call.) No file is
created: a message lives in the log until a checkpoint files it, and one
removed before that never gets a file.
The checkpointer thread retires full segments whose messages are all
gone, and files the rest only under pressure (``FILE_AT`` segments
waiting) or when puts pause (``IDLE``): creating a file is the expensive
step on many disks (about 1 ms here, and it does not scale with threads).
At ``MAX_SEALED`` waiting segments puts wait for the checkpointer, which
bounds the log (and a replay).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs

from mhafail._fs import fsync_dir
from mhafail.errors import SpoolError, SpoolFenced, SpoolInvalidArgument, UnknownMessage
from mhafail.spool._files import sync_batch, write_failed, write_tmp
from mhafail.spool._message import Message
from mhafail.spool._wal import SEGMENT_SIZE, CommitLog, pending, recover

FILE_AT = 2  # sealed segments from which a checkpoint files their messages
MAX_SEALED = 3  # sealed segments at which puts wait for the checkpoint (bounds a replay)
IDLE = 0.5  # seconds without a put after which a checkpoint files what is left
HOLD = 0.02  # seconds one fence section may span consecutive batches

logger = logging.getLogger(__name__)

MSG, TMP = "msg", "tmp"

Section = Callable[[], contextlib.AbstractContextManager[None]]


class Ticket:
    """How the caller of one put or removal is told its outcome, once.

    A caller in a thread waits on ``waiter``, a lock of its own held from
    the start: released once, when the outcome is set. Only the committer
    (or the caller itself, without group commit) settles tickets, so a
    waiter is never released twice. An asyncio caller
    awaits ``future`` (of its ``loop``) instead: the committer resolves all of
    one batch's futures with one call into their loop (:func:`wake_loops`),
    not one wake-up of the loop per put.
    """

    __slots__ = ("error", "future", "loop", "settled", "waiter")

    def __init__(self) -> None:
        self.waiter: Any = None  # a held _thread.lock (thread callers under group commit)
        self.loop: asyncio.AbstractEventLoop | None = None  # asyncio callers
        self.future: asyncio.Future[Any] | None = None
        self.error: SpoolError | None = None
        self.settled = False

    def value(self) -> str | None:
        """What the caller gets back."""
        return None

    def settle(self, error: SpoolError | None = None) -> None:
        """Set the outcome (the first one counts) and wake a thread caller."""
        if self.settled:
            return
        self.settled = True
        self.error = error
        if self.waiter is not None:
            self.waiter.release()

    def done(self) -> bool:
        """True once settled."""
        return self.settled

    def resolve(self) -> None:
        """In the caller's loop: hand the outcome to ``future`` (unless cancelled)."""
        future = self.future
        if future is None or future.done():
            return
        if self.error is None:
            future.set_result(self.value())
        else:
            future.set_exception(self.error)


def _resolve_all(tickets: list[Ticket]) -> None:
    for ticket in tickets:
        ticket.resolve()


def wake_loops(batch: Sequence[Ticket]) -> None:
    """Resolve the settled asyncio tickets of ``batch``: one call per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Ticket]] = {}
    for ticket in batch:
        if ticket.loop is not None and ticket.settled:
            by_loop.setdefault(ticket.loop, []).append(ticket)
    for loop, tickets in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(_resolve_all, tickets)


class Put(Ticket):
    """One put on its way: the message's file in two parts."""

    __slots__ = ("data", "fd", "header", "message", "message_id")

    def __init__(
        self,
        message_id: str,
        header: bytes,
        data: bytes,
        message: Message,
    ) -> None:
        super().__init__()
        self.message_id = message_id
        self.header = header
        self.data = data
        self.message = message
        self.fd = -1  # the written, not yet durable temporary file (fsync per message)

    def value(self) -> str:
        """The message id."""
        return self.message_id


class Drop(Ticket):
    """One removal on its way (``done``, ``bounce``): logged with the next batch."""

    __slots__ = ("message_id", "state")

    def __init__(self, message_id: str, state: bool = True) -> None:
        super().__init__()
        self.message_id = message_id
        self.state = state  # it may have a state file (it was deferred, or imported)


@attrs.define(kw_only=True, eq=False)
class Committer:
    """Commits puts into one spool directory.

    Args:
        directory: the spool directory (``msg/`` and ``tmp/`` exist).
        section: the spool's fence section (every change runs inside one).
        valid: the fence's cheap validity check (the lease).
        committed: told the puts of each committed batch (the index).
        group: group commit through the log, by a committer thread.
        max_batch: the most puts in one group commit.
        segment_size: bytes per log segment.
        name: for the threads' names.
    """

    directory: Path
    section: Section
    valid: Callable[[], bool]
    committed: Callable[[list[Put]], None]
    group: bool = True
    max_batch: int = 256
    segment_size: int = SEGMENT_SIZE
    name: str = "spool"

    log: CommitLog | None = attrs.field(init=False, default=None)
    _mu: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _pending: list[Put | Drop] = attrs.field(init=False, factory=list)
    _leader: bool = attrs.field(init=False, default=False)  # the committer was kicked
    _closed: bool = attrs.field(init=False, default=False)  # the committer thread has ended
    _kick: queue.SimpleQueue[bool] = attrs.field(init=False, factory=queue.SimpleQueue)
    _threads: list[threading.Thread] = attrs.field(init=False, factory=list)
    _wake: threading.Event = attrs.field(init=False, factory=threading.Event)
    _stopping: threading.Event = attrs.field(init=False, factory=threading.Event)
    _importing: int = attrs.field(init=False, default=0)  # takeovers moving into this spool

    @property
    def msg_dir(self) -> Path:
        """Where committed messages live."""
        return self.directory / MSG

    def start(self) -> None:
        """Replay a log left by a crash (inside a section), then start the threads.

        Raises:
            SpoolFenced: there is a log to replay and the spool is not ours.
            SpoolWriteFailed: the replay or the log cannot be written.
        """
        if pending(self.directory):
            with self.section():
                self.replay()
        if not self.group:
            return
        try:
            self.log = CommitLog(self.directory, segment_size=self.segment_size)
        except OSError as exc:
            raise write_failed(f"cannot open the commit log of {self.directory}", exc) from exc
        for target, what in ((self._lead_loop, "commit"), (self._checkpoint_loop, "checkpoint")):
            thread = threading.Thread(
                target=target, name=f"mhafail-spool-{what}-{self.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        self._wake.set()  # the checkpointer makes a spare segment ready at once

    def stop(self, *, timeout: float = 5.0) -> None:
        """Commit what is queued, checkpoint everything (if still ours), stop. Bounded."""
        if not self._threads:
            return
        end = time.monotonic() + timeout
        with self._mu:
            if self._pending and not self._leader:
                self._leader = True
                self._kick.put(True)
        while time.monotonic() < end:
            with self._mu:
                if not self._pending and not self._leader:
                    break
            time.sleep(0.005)
        self._kick.put(False)
        self._threads[0].join(max(0.0, end - time.monotonic()))
        with self._mu:
            # Nobody commits from here on: whatever queued late fails (and
            # is not written), as does whatever comes after.
            self._closed = True
            late, self._pending = self._pending, []
        self._fail(late, SpoolError(f"spool {self.directory} is closed; nothing was written"))
        wake_loops(late)
        self._stopping.set()
        self._wake.set()
        self._threads[1].join(timeout)
        self._threads.clear()
        log = self.log
        if log is None:
            return
        if self.valid():
            try:
                log.checkpoint(self.section, everything=True)
            except (OSError, SpoolError) as exc:
                logger.warning("spool %s: no checkpoint at close: %s", self.directory, exc)
        log.close()

    def checkpoint(self) -> int:
        """File every message in the log only, make ``msg/`` durable, retire the log.

        Raises:
            SpoolFenced, SpoolWriteFailed.
        """
        if self.log is None:
            return 0
        try:
            return self.log.checkpoint(self.section, everything=True)
        except OSError as exc:
            raise write_failed(f"cannot checkpoint {self.directory}", exc) from exc

    def replay(self) -> int:
        """Replay the log from disk (call inside a section: at open, or under a new token).

        Raises:
            SpoolWriteFailed: the replay could not finish.
        """
        lock = self.log.mutex if self.log is not None else contextlib.nullcontext()
        with lock:
            try:
                if self.log is not None:
                    self.log.reset()
                return recover(self.directory)
            except OSError as exc:
                raise write_failed(
                    f"cannot replay the commit log of {self.directory}", exc
                ) from exc

    @contextlib.contextmanager
    def importing(self) -> Iterator[None]:
        """While inside, puts pausing do not make the checkpointer file anything.

        For a takeover moving messages in: filing the log it adopted (a new
        file each, about 1 ms of disk here) would compete with its renames
        for the disk and the GIL (benchmarked: the move phase of 10,000
        messages 0.35-0.6 s without, 0.9-1.4 s with). The adopted messages
        are durable in the log meanwhile; filing under pressure (our own
        segments, which bound the log and replay) goes on as before.
        """
        with self._mu:
            self._importing += 1
        try:
            yield
        finally:
            with self._mu:
                self._importing -= 1
            self._wake.set()  # file what waited, if puts are still paused

    # --- puts ---------------------------------------------------------------

    def write(self, item: Put) -> None:
        """Without group commit, write the temporary file in the caller's thread.

        With group commit there is no file to write: the committer logs the
        message, and a checkpoint files it later (unless it is gone by
        then). Either way the fence is checked first.

        Raises:
            SpoolFenced, SpoolWriteFailed.
        """
        if not self.valid():
            raise SpoolFenced("this process no longer holds the spool; nothing was written")
        if self.group:
            return
        try:
            item.fd = write_tmp(
                self.directory / TMP / item.message_id, [item.header, item.data], sync=False
            )
        except OSError as exc:
            raise write_failed("cannot write to the spool", exc) from exc

    def submit(self, item: Put | Drop) -> None:
        """Commit ``item`` (written); return once it is settled (``item.error``: how it failed).

        With group commit the committer thread commits it with whatever
        else is queued; without, the caller commits alone.
        """
        if not self._threads:
            if isinstance(item, Put):
                self._commit_each([item])
            return
        # A plain lock per call (no Condition: its wait allocates a lock
        # and takes a second one): one futex wake when it is released.
        waiter = _allocate_lock()
        waiter.acquire()
        item.waiter = waiter
        self._queue(item)
        waiter.acquire()

    def enqueue(self, item: Put) -> None:
        """Queue ``item`` (its ``loop`` and ``future`` set) without blocking: asyncio's way in."""
        if not self._threads:
            raise SpoolError(f"spool {self.directory}: enqueue needs group commit")
        self._queue(item)

    def _queue(self, item: Put | Drop) -> None:
        with self._mu:
            if self._closed:
                item.settle(SpoolError(f"spool {self.directory} is closed; nothing was written"))
                wake_loops([item])
                return
            self._pending.append(item)
            kick = not self._leader
            self._leader = True
        if kick:
            self._kick.put(True)  # the committer thread commits it

    def _take(self) -> list[Put | Drop]:
        """The next batch (up to ``max_batch`` puts and removals); empty: the lead ends."""
        with self._mu:
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            if not batch:
                self._leader = False
            return batch

    def _hand_off(self) -> None:
        """End this section of commits: go on in a new one if more is queued."""
        with self._mu:
            if not self._pending:
                self._leader = False
                return
        self._kick.put(True)

    def _lead_loop(self) -> None:
        while self._kick.get():
            self._lead()

    def _lead(self) -> None:
        """Commit batches while there are any, for up to ``HOLD`` seconds; then hand off.

        One section spans consecutive batches (entering one costs three
        system calls, each a chance to wait for the GIL); ``HOLD`` bounds
        how long a takeover's claim waits for it.
        """
        log = self.log
        batch = self._take()
        if not batch:
            return
        if log is None:
            self._commit_each([item for item in batch if isinstance(item, Put)])
            self._hand_off()
            return
        if log.sealed() >= MAX_SEALED:
            # Filing lags behind (file creation is slow): wait, so that the
            # log stays bounded; puts then go at the pace of the checkpoints.
            self._wake.set()
            log.wait_sealed_below(MAX_SEALED, 30.0)
        try:
            with self.section():
                end = time.monotonic() + HOLD
                while True:
                    try:
                        self._log_batch(log, batch)
                    finally:
                        wake_loops(batch)
                    batch = []
                    if time.monotonic() >= end or log.sealed() >= MAX_SEALED:
                        break
                    batch = self._take()
                    if not batch:
                        return  # the lead ended in _take
        except SpoolError as exc:
            self._fail(batch, exc)
            wake_loops(batch)
        except Exception as exc:
            # A bug must not leave the lead taken (every caller would wait
            # forever): fail the batch, hand the lead on.
            logger.exception("spool %s: group commit failed", self.directory)
            self._fail(batch, SpoolError(f"group commit failed: {exc!r}"))
            wake_loops(batch)
        self._hand_off()

    def _log_batch(self, log: CommitLog, batch: list[Put | Drop]) -> None:
        """Log one batch and re-check the lease (inside a section); settle each.

        Raises:
            SpoolError: the batch failed (its callers are told by the caller).
        """
        if not self.valid():
            # A section spanning batches checked the lease at its start:
            # write nothing once it has run out (the check after the
            # flush would undo it).
            raise SpoolFenced("the lease ran out; nothing was written")
        drops = [item for item in batch if isinstance(item, Drop)]
        sealed, active = log.sealed(), log.active
        todo = self._admit(log, batch)
        if not todo and not drops:
            return
        ids = [item.message_id for item in todo]
        states = {d.message_id: d.state for d in drops}
        missing: set[str] = set()

        def unlink(mid: str, filed: bool) -> None:
            if not self._unlink(mid, filed=filed, state=states.get(mid, True)):
                missing.add(mid)

        try:
            unlogged = log.put(
                [(i.message_id, i.header + i.data) for i in todo],
                [d.message_id for d in drops],
                unlink,
            )
        except OSError as exc:
            # Some records may have reached the disk: drop them (best effort).
            self._drop(log, ids, force=True)
            raise write_failed("cannot write to the spool", exc) from exc
        self._settle(drops, unlogged, missing)
        if not self.valid():
            # Stalled past the lease (a pause, a slow disk): nobody was told
            # yet, and under the fence no takeover saw the records.
            self._drop(log, ids)
            raise SpoolFenced("the lease ran out while writing; nothing was kept")
        self.committed(todo)
        for item in todo:
            item.settle()
        if log.sealed() != sealed or log.active != active or (drops and sealed):
            # A sealed segment may be retirable (or need filing); a new
            # active one used the spare: the checkpointer makes the next
            # one now, so that the put filling this segment does not wait
            # for 8 MiB of zeros (it did at the first switch after open).
            self._wake.set()

    def _admit(self, log: CommitLog, batch: list[Put | Drop]) -> list[Put]:
        """The puts of ``batch`` with ids not taken; the others are failed."""
        todo, seen = [], set()
        taken = log.holding(item.message_id for item in batch if isinstance(item, Put))
        for item in batch:
            # No stat per message here (every syscall is a chance to lose the
            # GIL for a switch interval): Spool.put checked ids given by the
            # caller against msg/, and new ids are unique.
            if not isinstance(item, Put):
                continue
            if item.message_id in seen or item.message_id in taken:
                self._fail([item], SpoolInvalidArgument(f"{item.message_id} exists"))
            else:
                seen.add(item.message_id)
                todo.append(item)
        return todo

    def _settle(self, drops: list[Drop], unlogged: list[str], missing: set[str]) -> None:
        """Acknowledge the removals (logged, or filed for good: then fsync ``msg/``)."""
        gone = [d for d in drops if d.message_id in missing and d.message_id in unlogged]
        self._fail(gone, UnknownMessage("the message is no longer in this spool"))
        if unlogged:
            try:
                fsync_dir(self.msg_dir)
            except OSError as exc:
                failed = set(unlogged)
                self._fail(
                    [d for d in drops if d.message_id in failed],
                    write_failed("cannot remove messages", exc),
                )
        for drop in drops:
            drop.settle()  # logged inside the section: durable (no-op when failed)

    def _unlink(self, mid: str, *, filed: bool = True, state: bool = True) -> bool:
        """Unlink the files a message may have; False when its message file was missing."""
        # Only the files that may exist: every syscall is a chance to wait
        # a switch interval for the GIL.
        if state:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.msg_dir / (mid + ".state"))
        if filed:
            try:
                os.unlink(self.msg_dir / mid)
            except FileNotFoundError:
                return False
        return True

    def _drop(self, log: CommitLog, ids: list[str], *, force: bool = False) -> None:
        def unlink(mid: str) -> None:
            with contextlib.suppress(OSError):
                os.unlink(self.msg_dir / mid)

        with contextlib.suppress(OSError):
            log.drop(ids, unlink=unlink, force=force)

    def _commit_each(self, batch: list[Put]) -> None:
        """Fsync, rename and fsync ``msg/`` (no log); settle each future."""
        tmp = self.directory / TMP
        try:
            # One flush makes the whole batch durable instead of one per message.
            sync_batch(tmp, [item.fd for item in batch])
        except OSError as exc:
            self._fail(batch, write_failed("cannot write to the spool", exc))
            return
        finally:
            for item in batch:
                os.close(item.fd)
                item.fd = -1
        renamed: list[Put] = []
        try:
            with self.section():
                try:
                    for item in batch:
                        if os.path.lexists(self.msg_dir / item.message_id):
                            raise SpoolInvalidArgument(f"message {item.message_id} already exists")
                        os.rename(tmp / item.message_id, self.msg_dir / item.message_id)
                        renamed.append(item)
                    fsync_dir(self.msg_dir)
                except OSError as exc:
                    self._undo(renamed)
                    raise write_failed("cannot commit to the spool", exc) from exc
                if not self.valid():
                    self._undo(renamed)
                    raise SpoolFenced("the lease ran out while writing; nothing was kept")
        except SpoolError as exc:
            self._fail(batch, exc)
            return
        self.committed(batch)
        for item in batch:
            item.settle()

    def _undo(self, renamed: list[Put]) -> None:
        for item in renamed:
            with contextlib.suppress(OSError):
                os.unlink(self.msg_dir / item.message_id)
        with contextlib.suppress(OSError):
            fsync_dir(self.msg_dir)

    def _fail(self, batch: Sequence[Put | Drop], exc: SpoolError) -> None:
        for item in batch:
            if isinstance(item, Put) and not self.group:  # only then a tmp file
                with contextlib.suppress(OSError):
                    os.unlink(self.directory / TMP / item.message_id)
            item.settle(exc)

    # --- reads, removals and checkpoints -------------------------------------

    def holds(self, message_id: str) -> bool:
        """True when the message is in the log, not yet (or not only) in ``msg/``."""
        return self.log is not None and self.log.holds(message_id)

    def read(self, message_id: str) -> bytes | None:
        """The file bytes of a message that is in the log only (None: read ``msg/``)."""
        return None if self.log is None else self.log.read(message_id)

    def remove(self, message_id: str, *, state: bool = True) -> None:
        """Remove a message durably (its file and state file, and from the log).

        ``state=False`` says it has no state file (never deferred).

        With group commit the removal is queued and logged with the next
        batch (a drop record; the committer's section). Without, call it
        inside a section: unlink, then an fsync of ``msg/``.

        Raises:
            SpoolFenced, SpoolWriteFailed: the removal may not be durable.
        """
        if self._threads:
            drop = Drop(message_id, state)
            self.submit(drop)
            if drop.error is not None:
                raise drop.error
            return
        self._unlink(message_id)
        try:
            fsync_dir(self.msg_dir)
        except OSError as exc:
            raise write_failed(f"cannot remove {message_id}", exc) from exc

    def _checkpoint_loop(self) -> None:
        log = self.log
        assert log is not None
        while not self._stopping.is_set():
            self._wake.wait(IDLE)
            self._wake.clear()
            if self._stopping.is_set() or not self.valid():
                continue  # fenced: whoever takes the spool replays the log
            try:
                log.prepare_spare(self.section)
            except (OSError, SpoolError) as exc:
                logger.info("spool %s: no spare segment made: %s", self.directory, exc)
            if not log.waiting():
                continue
            # Filing costs a new file per message (about 1 ms of disk and CPU
            # here): only under pressure or when idle. Until then segments
            # whose messages were all delivered retire without any file.
            try:
                log.checkpoint(self.section, file=False)
                pressed = log.sealed() >= FILE_AT
                idle = time.monotonic() - log.last_put >= IDLE and not self._importing
                if log.waiting() and (pressed or idle):
                    log.checkpoint(self.section)
            except SpoolFenced as exc:
                logger.info("spool %s: no checkpoint: %s", self.directory, exc)
            except (OSError, SpoolError) as exc:
                logger.warning("spool %s: checkpoint failed (retried): %s", self.directory, exc)
