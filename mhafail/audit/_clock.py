"""The wall clock an audit series rolls on, and a manual one for tests."""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable

import attrs

from mhafail.errors import AuditInvalidArgument

__all__ = ["Clock", "ManualClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """Anything that tells the wall-clock time in seconds since the epoch.

    Audit windows are aligned to the epoch (a 300 s window starts at a
    multiple of 300), so nodes with synchronised clocks agree on window
    boundaries without talking to each other.
    """

    def time(self) -> float:
        """Return the current time as seconds since the epoch (UTC)."""
        ...


@attrs.define
class SystemClock:
    """The real wall clock (``time.time``)."""

    # The builtin itself, not a wrapper: series call it on every add.
    time = staticmethod(time.time)


@attrs.define
class ManualClock:
    """A clock that only moves when told to; for tests and replays.

    Thread-safe: ``advance`` and ``set`` may be called from any thread.

    Attributes:
        now: the current time in seconds since the epoch.
    """

    now: float = 0.0
    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)

    def time(self) -> float:
        """Return the current manual time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward.

        Args:
            seconds: how far; must not be negative.

        Raises:
            AuditInvalidArgument: ``seconds`` is negative.
        """
        if seconds < 0:
            raise AuditInvalidArgument(f"cannot advance a clock by {seconds} s")
        with self._lock:
            self.now += seconds

    def set(self, now: float) -> None:
        """Jump to ``now`` (backwards too, to test clock steps)."""
        with self._lock:
            self.now = now
