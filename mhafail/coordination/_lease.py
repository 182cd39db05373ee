"""The fencing lease: a deadline before which the session cannot have expired.

Derivation (see docs/coordination.md). ZooKeeper expires a session when the
server has heard nothing from the client for the negotiated session timeout
``T`` (the server rounds expiry *up* to its next tick, so never earlier).
Any request the server answers was heard by the server after the client
sent it, so a reply to a request sent at client time ``s`` proves the server
will not expire the session before ``s + T``. We keep the largest such
``s``, and subtract a safety margin ``m`` for our own reaction time:

    deadline = max(send time of an answered request) + T - m

Times are ``time.monotonic()`` readings, which are immune to wall-clock
steps; the server's clock rate differs from ours only by crystal drift
(parts per million), far below the margin.

kazoo itself pings after ``read_timeout / 2 = T / 3`` of silence and
declares the connection dropped (SUSPENDED) when a ping is unanswered
after another ``T / 3``; its pings also keep the session alive on the
server, but their send times are private to kazoo. The coordinator
therefore sends its own cheap requests (heartbeats) every ``T / 8`` and
renews the lease only from their replies: the lease rests on public facts.

This module is pure: it only computes; the coordinator feeds it readings.
"""

from __future__ import annotations

import attrs


def default_margin(timeout: float) -> float:
    """Return the default safety margin for a session timeout (seconds).

    5 % of the timeout, at least 50 ms (timer and scheduling jitter) and at
    most 500 ms (beyond that, releasing early only costs availability).
    """
    return min(0.5, max(0.05, timeout * 0.05))


@attrs.define
class Lease:
    """Bookkeeping for one session's lease.

    Attributes:
        timeout: the effective session timeout ``T`` in seconds.
        margin: the safety margin ``m`` in seconds.
    """

    timeout: float
    margin: float
    _proof: float | None = None  # send time of the latest answered request

    @property
    def deadline(self) -> float | None:
        """Monotonic time when the lease runs out, or None before any proof."""
        if self._proof is None:
            return None
        return self._proof + self.timeout - self.margin

    def confirm(self, sent_at: float) -> None:
        """Record that a request sent at ``sent_at`` was answered."""
        if self._proof is None or sent_at > self._proof:
            self._proof = sent_at

    def reset(self) -> None:
        """Forget every proof (the session ended; a new one needs new proof)."""
        self._proof = None

    def remaining(self, now: float) -> float:
        """Seconds left before the deadline at ``now`` (0 when expired or unproven)."""
        deadline = self.deadline
        return 0.0 if deadline is None else max(0.0, deadline - now)

    def valid(self, now: float) -> bool:
        """True when ``now`` is before the deadline."""
        deadline = self.deadline
        return deadline is not None and now < deadline
