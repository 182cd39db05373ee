"""ConvergeLoop: a component's own worker thread that converges on demand.

Watches fire once and can be missed across reconnects (safety rule 2),
so components do not act on the content of an event: an event only *kicks*
the loop, and the loop re-reads the desired state and converges. Kicks
that arrive while a pass runs coalesce into one more pass; a timer kicks
it anyway every ``period`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mhafail.errors import CoordinationUnavailable

logger = logging.getLogger(__name__)


class ConvergeLoop:
    """Run ``converge()`` on a dedicated thread after every kick and periodically.

    Args:
        name: thread name (for logs and debuggers).
        converge: the pass to run; exceptions are logged and retried after
            ``retry`` seconds, never propagated.
        period: seconds between passes when nothing kicks (None: never).
        retry: seconds before retrying a pass that raised.
        settle: seconds to wait after a kick before the pass starts; kicks
            in that time are covered by the pass (one pass for a burst of
            events that arrive together, not one pass plus one more).
    """

    def __init__(
        self,
        name: str,
        converge: Callable[[], None],
        *,
        period: float | None = None,
        retry: float = 0.5,
        settle: float = 0.0,
    ) -> None:
        self._converge = converge
        self._settle = settle
        self._period = period
        self._retry = retry
        self._cond = threading.Condition()
        self._kicked = False
        self._stopping = False
        self._passes = 0
        self._wake_at: float | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    @property
    def passes(self) -> int:
        """How many passes have completed (successful or not)."""
        with self._cond:
            return self._passes

    def start(self) -> None:
        """Start the thread; the first pass runs at once."""
        self._kicked = True
        self._thread.start()

    def kick(self, *_: object) -> None:
        """Ask for a pass as soon as possible; cheap and never blocks.

        Accepts and ignores arguments so it can be used directly as a listener.
        """
        with self._cond:
            self._kicked = True
            self._cond.notify_all()

    def kick_after(self, delay: float) -> None:
        """Ask for a pass in ``delay`` seconds (the earliest such request wins)."""
        at = time.monotonic() + max(0.0, delay)
        with self._cond:
            if self._wake_at is None or at < self._wake_at:
                self._wake_at = at
                self._cond.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the running pass, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def wait_passes(self, count: int, timeout: float) -> bool:
        """Block until ``count`` passes have completed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._passes >= count, timeout)

    def _next_wait(self) -> float | None:
        if self._wake_at is None:
            return self._period
        left = max(0.0, self._wake_at - time.monotonic())
        return left if self._period is None else min(left, self._period)

    def _run(self) -> None:
        while True:
            with self._cond:
                # A stop() that came while the last pass ran must not wait a period.
                if not self._kicked and not self._stopping:
                    self._cond.wait(self._next_wait())
                if self._wake_at is not None and time.monotonic() >= self._wake_at:
                    self._wake_at = None
                    self._kicked = True
                if self._stopping:
                    return
                # Kicks notify the condition too: wait out the whole time.
                settled = time.monotonic() + self._settle
                while not self._stopping and (left := settled - time.monotonic()) > 0:
                    self._cond.wait(left)
                if self._stopping:
                    return
                self._kicked = False
            delay = None
            try:
                self._converge()
            except CoordinationUnavailable as exc:
                # Expected while disconnected; the next pass after a reconnect fixes it.
                logger.warning("%s: converge pass postponed: %s", self._thread.name, exc)
                delay = self._retry
            except Exception:
                logger.exception("%s: converge pass failed", self._thread.name)
                delay = self._retry
            with self._cond:
                self._passes += 1
                self._cond.notify_all()
                if delay is not None and not self._stopping:
                    self._cond.wait(delay)
                    self._kicked = True
