"""Running one handler: its own thread, the request's deadline, cancellation.

Python cannot stop a thread, so the handler runs on a thread of its own
and a supervisor waits for it, for a cancellation or for the deadline,
whichever comes first: the node answers at the deadline or on
cancellation even if the handler never returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import attrs

from mhafail.commands._model import ReplyStatus, Request
from mhafail.commands._registry import Command, CommandContext
from mhafail.coordination import Watch

FIRST_WAIT = 0.05
"""Seconds a handler runs before its supervisor asks for a cancel watch."""


@attrs.define(eq=False)
class Run:
    """One request being run on this node.

    Attributes:
        request: the request.
        ctx: the handler's context (deadline, ``cancelled``).
        reason: why it was cancelled, once it was.
        thread: the supervising thread.
        watch: the cancel watch on the request znode, once armed.
    """

    request: Request
    ctx: CommandContext
    reason: str = ""
    thread: threading.Thread | None = None
    watch: Watch | None = None

    def cancel(self, reason: str) -> None:
        """Tell the handler to stop (the first reason given wins)."""
        if not self.ctx.cancelled.is_set():
            self.reason = reason
            self.ctx.cancelled.set()


@attrs.frozen
class Outcome:
    """How a handler ended: the status and, for ``OK``, its value (else ``error``)."""

    status: ReplyStatus
    value: Any = None
    error: str = ""


def supervise(
    run: Run, command: Command, args: dict[str, Any], slow: Callable[[Run], None]
) -> Outcome:
    """Run ``command``'s handler and wait for it, a cancellation or the deadline.

    Args:
        run: the run (its context carries the deadline and ``cancelled``).
        command: the registered command.
        args: the checked arguments.
        slow: called once if the handler is still running after
            ``FIRST_WAIT`` seconds (the agent arms a cancel watch then).
    """
    ctx = run.ctx
    box: dict[str, Any] = {}
    done = threading.Event()

    def call() -> None:
        try:
            box["value"] = command.handler(ctx, args)
        except Exception as exc:  # the handler's failure is the reply, not ours
            box["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            done.set()

    name = f"mhafail-handler-{run.request.id}"
    threading.Thread(target=call, name=name, daemon=True).start()
    told = False
    while not done.wait(min(ctx.remaining(), FIRST_WAIT)):
        if not told:
            told = True
            slow(run)
        if ctx.cancelled.is_set():
            return Outcome(ReplyStatus.CANCELLED, error=run.reason or "cancelled")
        if ctx.remaining() <= 0:
            ctx.cancelled.set()
            timeout = run.request.timeout
            return Outcome(ReplyStatus.TIMEOUT, error=f"not done within {timeout:g} s")
    if run.reason:
        # Cancelled while the handler was finishing (often: because of it).
        return Outcome(ReplyStatus.CANCELLED, error=run.reason)
    if "error" in box:
        return Outcome(ReplyStatus.ERROR, error=str(box["error"])[:2000])
    return Outcome(ReplyStatus.OK, value=box.get("value"))


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
