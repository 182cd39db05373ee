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
therefore sends its own cheap requests (``sync`` heartbeats, in rounds
every ``T / 8`` to ``T / 4``, sparser for short sessions) and renews the
lease only from their replies: the lease rests on public facts.

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

    def shorten(self, timeout: float) -> None:
        """Lower ``T`` (a server negotiated less than we assumed), keeping the proof."""
        if timeout < self.timeout:
            self.timeout = timeout
            self.margin = min(self.margin, timeout / 4)

    def remaining(self, now: float) -> float:
        """Seconds left before the deadline at ``now`` (0 when expired or unproven)."""
        deadline = self.deadline
        return 0.0 if deadline is None else max(0.0, deadline - now)

    def valid(self, now: float) -> bool:
        """True when ``now`` is before the deadline."""
        deadline = self.deadline
        return deadline is not None and now < deadline


@attrs.define
class ProofChain:
    """Turns answered ``sync`` round trips into lease proofs the leader vouches for.

    A follower answers a ``sync`` only after the leader did, but the session
    activity a request causes on a follower reaches the leader later: the
    follower reports the sessions it saw in its answer to the leader's next
    ping (sent every ``tickTime / 2``). If the follower is cut off from the
    leader right after answering, that report never arrives, and the leader
    expires the session counting from an *older* report.

    So a reply alone proves nothing about the leader's clock. A chain does.
    Let request ``k`` (sent at ``s_k``, answered at ``r_k``) reach the
    follower at ``a_k`` (``s_k <= a_k <= r_k``). Let sync ``j'`` be answered
    and sent at least ``report_lag`` after ``r_k``: the leader handled it at
    ``b_j' > s_j' >= r_k + report_lag > a_k + report_lag``, so the leader
    sent the follower a ping after ``a_k`` and before its reply to ``j'``
    (pings go out every ``report_lag`` at most, on the same ordered stream
    as the reply). The follower answers pings in the order it reads them,
    so its report naming our session (touched at ``a_k``) left the follower
    before the reply to ``j'`` reached us, hence before we sent any later
    sync ``j``, which the follower forwards behind that report on the same
    ordered stream. When ``j`` is answered the leader has therefore
    processed a report sent after ``a_k``: it cannot expire the session
    before ``a_k + T >= s_k + T``. One sync in flight at a time keeps
    "sent after the previous reply" true.

    The rule, then: when sync ``j`` is answered, the proof is the latest
    ``s_k`` with ``r_k <= s_prev - report_lag``, where ``s_prev`` is the
    send time of the previous answered sync on the same connection. The
    chain must not span two connections (a report from another follower
    says nothing), so it is reset on every reconnect.

    Attributes:
        report_lag: an upper bound on the leader's ping interval
            (``tickTime / 2``), in seconds.
    """

    report_lag: float
    _history: list[tuple[float, float]] = attrs.field(factory=list)  # (sent, replied)
    _prev_sent: float | None = None

    def answered(self, sent_at: float, replied_at: float) -> float | None:
        """Record an answered sync; return the send time it proves, if any."""
        proof = None
        if self._prev_sent is not None:
            threshold = self._prev_sent - self.report_lag
            earlier = [s for s, r in self._history if r <= threshold]
            if earlier:
                proof = max(earlier)
                # Entries older than the proof can never prove more than it.
                self._history = [(s, r) for s, r in self._history if s >= proof]
        self._history.append((sent_at, replied_at))
        del self._history[:-256]  # bounded even while no proof forms
        self._prev_sent = sent_at if self._prev_sent is None else max(self._prev_sent, sent_at)
        return proof

    def reset(self) -> None:
        """Forget the chain (a new connection or a new session)."""
        self._history.clear()
        self._prev_sent = None


# kazoo pings after ``T/3`` of silence on the connection, minus a random
# jitter of up to 0.4 s drawn afresh at every wake-up.
_KAZOO_PING_JITTER = 0.4


def round_interval(timeout: float, margin: float = 0.0, report_lag: float = 0.0) -> float:
    """Seconds between the starts of heartbeat rounds for a session timeout ``T``.

    As sparse as kazoo allows: the server expires a crashed session ``T``
    after its *last* request, so every request delays crash failover, and
    a ping kazoo sends between two rounds is a request the lease does not
    rest on (a paused owner then gives its VIPs up that much earlier than
    the server expires it). Rounds start before kazoo's earliest ping
    (``T/3 - 0.4 s`` after the last one), at most every ``T/4`` and at least
    every ``T/8``: below ``T = 2.3 s`` kazoo's jitter cannot be avoided.

    Short sessions (``T/3`` at most kazoo's 0.4 s jitter, ``T <= 1.2 s``):
    kazoo pings on its own after most replies and in most silences, so
    rounds cannot keep its pings away and only the lease sets their pace.
    A round then starts every ``2/3 (T - margin) - report_lag``: the proof,
    at most an interval plus ``report_lag`` and three round trips old, still
    leaves a third of the lease (``margin`` the lease margin, ``report_lag``
    the chain's). Denser rounds made every request come just before a crash:
    at ``T = 0.35 s`` the last one was 9 ms old on average (keepalived's last
    advertisement at ``advert_int 0.1``: 50 ms), now about 57 ms.
    """
    spread = max(0.02, timeout / 8, min(timeout / 4, timeout / 3 - _KAZOO_PING_JITTER - 0.05))
    if timeout / 3 > _KAZOO_PING_JITTER:
        return spread
    return max(spread, (timeout - margin) * 2 / 3 - report_lag)


ROUND_TRIP = 0.01
"""Seconds allowed for one heartbeat's round trip when bounding a proof's age."""


def report_lag(timeout: float, tick: float | None = None) -> float:
    """Upper bound on the leader's ping interval (``tickTime / 2``), plus 10 ms.

    Without a known ``tick`` the largest ZooKeeper allows for a session of
    ``timeout`` is assumed (it grants at least two ticks: ``timeout / 2``).
    """
    largest = tick if tick is not None else timeout / 2
    return largest / 2 + 0.01


def oldest_proof(timeout: float, tick: float | None = None) -> float:
    """How old the session lease's proof can be right before a round renews it.

    A round starts every :func:`round_interval`; its proof is the send time
    of its first heartbeat, proven by the third, ``report_lag`` plus three
    round trips later. The lease therefore runs at least ``timeout - margin
    - oldest_proof`` ahead of any instant while heartbeats are answered.
    """
    lag = report_lag(timeout, tick)
    return round_interval(timeout, default_margin(timeout), lag) + lag + 3 * ROUND_TRIP


@attrs.define
class HeartbeatRounds:
    """When to send the next ``sync``: rounds of three, one in flight at a time.

    A round sends ``a`` at its start, ``b`` once ``report_lag`` has passed
    since ``a`` was answered, and ``c`` as soon as ``b`` is answered: the
    answer to ``c`` makes :class:`ProofChain` prove ``a``'s send time, only
    ``report_lag`` plus three round trips earlier. Rounds start every
    ``interval`` (:func:`round_interval`; or right after the previous one,
    if it took longer).

    Attributes:
        next_send: monotonic time when the next sync may go out.
        in_flight_since: when the sync in flight was sent, or None.
    """

    next_send: float = 0.0
    in_flight_since: float | None = None
    _step: int = 0  # syncs sent in the current round (0 to 3)
    _round_start: float = 0.0

    def restart(self, now: float) -> None:
        """A new connection: its chain starts empty, so begin a round at once."""
        self._step, self.next_send, self.in_flight_since = 0, now, None

    def due(self, now: float, give_up: float) -> bool:
        """True when a sync should go out now (a reply older than ``give_up`` is lost)."""
        if self.in_flight_since is not None and now - self.in_flight_since > give_up:
            self.in_flight_since, self._step = None, 0
        return self.in_flight_since is None and now >= self.next_send

    def sent(self, now: float) -> None:
        """Record a sync sent at ``now``."""
        if self._step == 0:
            self._round_start = now
        self._step += 1
        self.in_flight_since = now

    def answered(
        self, usable: bool, replied_at: float, now: float, report_lag: float, interval: float
    ) -> None:
        """Record the reply to the sync in flight (``usable``: it joined the chain).

        When rounds would start more often than half the report lag, one
        sync per ``interval`` chains better (short sessions, unknown tick):
        three syncs in a row then wait ``report_lag`` every round, and two
        back-to-back rounds let the proof age to twice their length.
        """
        self.in_flight_since = None
        if interval <= report_lag / 2 + 0.01:
            self._step, self.next_send = 0, self._round_start + interval
        elif not usable:
            self._step, self.next_send = 0, max(self.next_send, self._round_start + interval)
        elif self._step == 1:
            self.next_send = replied_at + report_lag
        elif self._step == 2:
            self.next_send = now
        else:
            self._step, self.next_send = 0, self._round_start + interval
