"""Holding a segment's write lock across a burst of ``write()`` calls.

Taking and dropping the segment's OFD lock around every record costs two of
the four system calls of an append (lock, ``lseek``, ``pwrite``, unlock). A
:class:`~mhafail.jlog.JlogWriter` therefore keeps the lock across
consecutive ``write()`` calls (a *burst*): while it holds the lock nobody
else can append, so it knows where the segment ends and each record is one
``pwrite``. The burst ends, and the lock is released:

- when writes pause for :data:`IDLE` (the :class:`Releaser` thread);
- after :data:`MAX_HOLD` even under continuous writes (checked by the
  write itself, and by the releaser if the writing thread stalls); the
  writer then waits :data:`HANDOFF` before locking again, because the
  kernel does not hand a released lock to a waiter: without the pause a
  busy writer would re-lock before the woken waiter runs;
- when another writer of the same process and jlog is about to lock, and
  no thread is writing through this one (two writers used in turn by one
  thread would otherwise wait :data:`IDLE` for each other at every switch);
- at rollover, before every ``fdatasync`` of the durability policy, before
  ``write_many``, at close, and in a forked child (which reopens its files:
  an inherited descriptor shares the parent's open file description, and
  with it the parent's OFD lock).

When a writer finds records of another writer at the end of its segment it
goes back to one lock per record for :data:`CONTENDED` seconds (renewed
each time it sees foreign records), so two busy writers interleave record
by record as before instead of taking turns in slices of :data:`MAX_HOLD`.

What another writer (libjlog's included) can wait for the lock: at most
:data:`MAX_HOLD` plus the time a ``pwrite`` takes, as long as the holding
process runs; if its thread cannot get the GIL, up to the interpreter's
switch interval more (5 ms by default). A stopped process (SIGSTOP, a
debugger) keeps the lock until it continues; a killed one drops it at once
(the kernel releases OFD locks when the last descriptor closes).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Final, Protocol

IDLE: Final = 0.001
"""Seconds without a write after which a burst ends."""
MAX_HOLD: Final = 0.005
"""Longest a burst holds the segment lock, even under continuous writes."""
HANDOFF: Final = 0.0001
"""Pause before locking again after a burst ended by :data:`MAX_HOLD`."""
CONTENDED: Final = 0.05
"""Seconds of one lock per record after seeing another writer's records."""


class BurstOwner(Protocol):
    """What the releaser needs from a writer."""

    def release_if_due(self) -> float | None:
        """End the burst if it is due; return seconds until the next check (None: not held)."""


class Releaser:
    """A daemon thread that ends its writer's burst when it is due.

    The thread keeps only a weak reference to an idle writer, so it does
    not keep the writer alive; while a burst holds the lock, :meth:`arm`
    pins the writer so the lock is released even if the caller drops it.
    """

    def __init__(self, owner: BurstOwner, name: str) -> None:
        self._owner = weakref.ref(owner)
        self._pinned: BurstOwner | None = None
        self._armed = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def arm(self, owner: BurstOwner) -> None:
        """A burst started (call with the writer's thread lock held)."""
        self._pinned = owner
        self._armed.set()

    def disarm(self) -> None:
        """No burst is held (call with the writer's thread lock held)."""
        self._pinned = None
        self._armed.clear()

    def stop(self) -> None:
        """End the thread and wait for it (call without the writer's thread lock)."""
        self._stopped = True
        self._pinned = None
        self._armed.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        armed = self._armed
        # Checked before each wait: disarm() may clear the event after
        # stop() set it, but never after this check saw _stopped unset.
        while not self._stopped:
            # The timeout lets the thread notice a writer that was dropped
            # without close().
            armed.wait(1.0)
            if self._stopped:
                return
            owner = self._owner()
            if owner is None:
                return
            delay = owner.release_if_due()
            del owner
            if delay is not None:
                time.sleep(delay)


class Tracked(Protocol):
    """A writer known to the process: its peers and forked children reach it."""

    @property
    def jlog_id(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the jlog directory."""

    def after_fork_in_child(self) -> None:
        """Forget the parent's lock and threads; reopen files (runs in the child)."""

    def release_nowait(self) -> None:
        """End the burst now unless a thread is writing through this writer."""


_writers: weakref.WeakSet[Tracked] = weakref.WeakSet()


def track(writer: Tracked) -> None:
    """Have ``writer.after_fork_in_child()`` called in every forked child."""
    _writers.add(writer)


def file_id(path: os.PathLike[str]) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of ``path``: the same jlog under any spelling of its path."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def others(writer: Tracked) -> list[Tracked]:
    """The other writers of this process on the same jlog."""
    key = writer.jlog_id
    return [w for w in list(_writers) if w is not writer and w.jlog_id == key]


def _after_fork_in_child() -> None:
    for writer in list(_writers):
        writer.after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
