"""The claim queue: claim a VIP the instant its owner's claim goes.

Each converge pass tells the :class:`Standby` which VIPs held by other
nodes this node is the successor of (``_placement.successions``). The claim
watch of such a VIP calls :meth:`Standby.gone` on kazoo's event thread the
moment ZooKeeper notifies the claim's deletion (a planned handover commits
its release, or the owner's session expires), and the claim is sent at
once, without a re-read or a converge pass. The standby's own thread waits
for the answers (woken by kazoo's reader directly) and hands every claim
won in a burst to ``on_won`` together (one fence notice, one netlink
batch, one announcement burst).

Nothing here weakens the safety rules: the owner still removes its address
before it deletes its claim; the claim is an ephemeral znode of this
node's live session, created only while the lease is valid and the fence
works (``ready``); plumbing goes through the kernel, which checks the lease
again and tells the fence first. A successor that was wrong (a cache
behind) loses the create to whoever the others agreed on, or holds a VIP
placement would have put elsewhere, which the converge pass moves as for
any other owner.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from mhafail.coordination import Pending, Znodes
from mhafail.vip._paths import Claim
from mhafail.vip._reserve import claim_ops

logger = logging.getLogger(__name__)

WonCallback = Callable[[list[str], Claim, float], None]

BATCH_WAIT = 0.02  # seconds the first claim of a burst waits for the rest
BURST_GAP = 0.01  # a burst of deletions goes on while they come closer than this
ANSWER_WAIT = 2.0  # seconds to wait for a claim's answer (then the converge pass looks)

_Sent = tuple[str, Claim, Pending, float]  # address, claim, its request, when its owner let go


class Standby:
    """Sends the planned claims the moment their owners' claims go (see the module docstring).

    Args:
        znodes: the cluster's znodes.
        ready: the claim to write when this node may claim now (live session,
            valid lease, working fence, not stopping), else None.
        on_won: ``on_won(addresses, claim, first_gone_at)`` with the claims
            created since the last call, on the standby's thread.
        on_lost: called (standby's thread) after a planned claim was not
            won, so the converge pass looks again.
    """

    def __init__(
        self,
        znodes: Callable[[], Znodes],
        ready: Callable[[], Claim | None],
        on_won: WonCallback,
        on_lost: Callable[[], None],
        name: str = "mhafail-vip-standby",
    ) -> None:
        self._znodes = znodes
        self._ready = ready
        self._on_won = on_won
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._planned: frozenset[str] = frozenset()
        self._in_flight: set[str] = set()
        self._last_sent = -1.0  # when the latest claim was sent
        self._gap = 1.0  # seconds between the latest two claims sent
        self._sent_queue: queue.SimpleQueue[_Sent | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def plan(self, addresses: frozenset[str]) -> frozenset[str]:
        """Claim these addresses as soon as their claims go; return the plan this replaces."""
        with self._lock:
            previous, self._planned = self._planned, addresses
        return previous

    def in_flight(self) -> frozenset[str]:
        """Addresses whose claim was sent and not yet answered (the pass leaves them be)."""
        with self._lock:
            return frozenset(self._in_flight)

    def gone(self, address: str) -> None:
        """The claim of ``address`` was deleted (kazoo's event thread): claim it if planned."""
        at = time.monotonic()
        with self._lock:
            if address not in self._planned or address in self._in_flight:
                return
            claim = self._ready()
            if claim is None:
                return
            self._in_flight.add(address)
            self._gap, self._last_sent = at - self._last_sent, at
        # Refused while somebody holds the VIP's reservation (see _reserve).
        pending = self._znodes().transact_soon(claim_ops(address, claim))
        self._sent_queue.put((address, claim, pending, at))

    def stop(self) -> None:
        """Send no more claims; end the thread (answers still in flight are dropped)."""
        with self._lock:
            self._planned = frozenset()
        self._sent_queue.put(None)
        self._thread.join(2.0)

    def _collect(self) -> list[_Sent] | None:
        """The next batch of sent claims (None: stop).

        A lone handover is handled at once. While deletions keep coming (a
        dead session's claims are notified one by one, a few ms apart), the
        claims sent meanwhile join the batch, for at most ``BATCH_WAIT``
        seconds: their answers are then waited for together and the won
        ones plumbed as one batch.
        """
        first = self._sent_queue.get()
        if first is None:
            return None
        batch = [first]
        end = time.monotonic() + BATCH_WAIT
        while True:
            now = time.monotonic()
            with self._lock:
                burst = self._gap < BURST_GAP  # the latest two came close together
                timeout = min(end - now, self._last_sent + BURST_GAP - now) if burst else 0.0
            try:
                entry = (
                    self._sent_queue.get(timeout=timeout)
                    if timeout > 0
                    else self._sent_queue.get_nowait()
                )
            except queue.Empty:
                return batch
            if entry is None:
                self._sent_queue.put(None)  # stop after this batch
                return batch
            batch.append(entry)

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            won: dict[tuple[str, int], list[str]] = {}
            claims: dict[tuple[str, int], Claim] = {}
            first: dict[tuple[str, int], float] = {}
            lost = False
            for address, claim, pending, at in batch:
                # Pipelined: the first answer takes a round trip, the rest follow it.
                outcome = pending.outcome(ANSWER_WAIT)
                with self._lock:
                    self._in_flight.discard(address)
                if outcome:
                    # One group per session (the claims differ only in ``since``).
                    group = (claim.node, claim.session)
                    won.setdefault(group, []).append(address)
                    claims.setdefault(group, claim)
                    first[group] = min(first.get(group, at), at)
                else:
                    lost = True
            for group, addresses in won.items():
                try:
                    self._on_won(addresses, claims[group], first[group])
                except Exception:
                    logger.exception("plumbing %d claimed VIP(s) failed", len(addresses))
                    lost = True
            if lost:
                self._on_lost()
