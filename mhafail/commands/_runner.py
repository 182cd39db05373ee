"""Running handlers: one thread each, watched by one watchdog per agent.

Python cannot stop a thread, so each handler runs on a thread of its own
and the agent's :class:`Watchdog` (one persistent thread) answers for it
when its deadline passes or it is cancelled, whichever comes first: the
node answers at the deadline or on cancellation even if the handler never
returns. Whoever settles a run first (the handler's thread with its value,
or the watchdog with ``timeout``/``cancelled``) sends the one reply.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from mhafail.commands._model import ReplyStatus, Request
from mhafail.commands._registry import Command, CommandContext
from mhafail.coordination import Watch

FIRST_WAIT = 0.05
"""Seconds a handler runs before the watchdog arms a cancel watch for it."""


@attrs.define(eq=False)
class Run:
    """One request being run on this node.

    Attributes:
        request: the request.
        ctx: the handler's context (deadline, ``cancelled``).
        reason: why it was cancelled, once it was.
        thread: the handler's thread.
        watch: the cancel watch on the request znode, once armed.
        settled: its reply is decided (by the handler's thread or the
            watchdog); set under the agent's lock.
        started: wall-clock time the handler started.
    """

    request: Request
    ctx: CommandContext
    reason: str = ""
    thread: threading.Thread | None = None
    watch: Watch | None = None
    settled: bool = False
    started: float = 0.0

    def cancel(self, reason: str) -> bool:
        """Tell the handler to stop (the first reason given wins); True if this did."""
        if self.ctx.cancelled.is_set():
            return False
        self.reason = reason
        self.ctx.cancelled.set()
        return True


@attrs.frozen
class Outcome:
    """How a handler ended: the status and, for ``OK``, its value (else ``error``)."""

    status: ReplyStatus
    value: Any = None
    error: str = ""


def call_handler(run: Run, command: Command, args: dict[str, Any]) -> Outcome:
    """Run ``command``'s handler on this thread; its exception becomes an ``ERROR``."""
    try:
        value = command.handler(run.ctx, args)
    except Exception as exc:  # the handler's failure is the reply, not ours
        return Outcome(ReplyStatus.ERROR, error=f"{type(exc).__name__}: {exc}"[:2000])
    if run.reason:
        # Cancelled while the handler was finishing (often: because of it).
        return Outcome(ReplyStatus.CANCELLED, error=run.reason)
    return Outcome(ReplyStatus.OK, value=value)


class Watchdog:
    """One thread that answers for runs past their deadline or cancelled.

    Args:
        name: thread name.
        settle: ``settle(run, outcome)``: answer for the run unless it was
            answered (called on the watchdog's thread).
        slow: called once per run still going after ``FIRST_WAIT`` seconds
            (the agent arms a cancel watch then).

    Thread safety: :meth:`watch`, :meth:`poke` and :meth:`stop` may be
    called from any thread.
    """

    def __init__(
        self,
        name: str,
        settle: Callable[[Run, Outcome], None],
        slow: Callable[[Run], None],
    ) -> None:
        self._settle = settle
        self._slow = slow
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, str, Run]] = []
        self._order = itertools.count()
        self._cancelled: list[Run] = []
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def watch(self, run: Run) -> None:
        """Look after ``run``: its first-wait mark and its deadline."""
        now = time.monotonic()
        with self._cond:
            heapq.heappush(self._heap, (now + FIRST_WAIT, next(self._order), "slow", run))
            heapq.heappush(self._heap, (run.ctx.deadline, next(self._order), "deadline", run))
            self._cond.notify()

    def poke(self, run: Run) -> None:
        """``run`` was cancelled: answer for it now."""
        with self._cond:
            self._cancelled.append(run)
            self._cond.notify()

    def stop(self, timeout: float) -> None:
        """End the thread (bounded)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            due: list[tuple[str, Run]] = []
            with self._cond:
                while not self._stopping and not self._cancelled and not self._ripe():
                    wait = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._cond.wait(wait)
                if self._stopping:
                    return
                due += [("cancelled", run) for run in self._cancelled]
                self._cancelled.clear()
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, kind, run = heapq.heappop(self._heap)
                    due.append((kind, run))
            for kind, run in due:
                if run.settled:
                    continue
                if kind == "slow":
                    self._slow(run)
                elif kind == "cancelled":
                    self._settle(run, Outcome(ReplyStatus.CANCELLED, error=run.reason))
                else:
                    run.ctx.cancelled.set()
                    timeout = run.request.timeout
                    outcome = Outcome(ReplyStatus.TIMEOUT, error=f"not done within {timeout:g} s")
                    self._settle(run, outcome)

    def _ripe(self) -> bool:
        return bool(self._heap) and self._heap[0][0] <= time.monotonic()


@attrs.frozen
class AgentStats:
    """What an agent did since it started.

    Attributes:
        ran: handlers started.
        answered: replies written.
        refused: requests refused (unknown, not allowed, bad arguments).
        malformed: request znodes skipped as malformed.
        running: handlers running now.
    """

    ran: int
    answered: int
    refused: int
    malformed: int
    running: int
