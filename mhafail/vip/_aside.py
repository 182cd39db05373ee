"""Standing aside: what an owner does when its lease lapsed but its session lived on.

When the lease runs out, every address goes at once (safety rule 1). If the
session then survives (the process was starved of CPU, or stalled just
under the session timeout while its pings still got through), its claims
survive with it: no survivor may claim those VIPs, and the node plumbs them
again as soon as a request gets through, only to lose them at the next
stall. Its VIPs would flap on a sick node for as long as its session lives,
and a starved process's pings can keep it alive indefinitely.

So such a node stands aside. Once its lease is back it withdraws its
declarations (survivors stop counting it as a candidate) and releases its
claims (survivors take the VIPs at once, the planned successor on the
deletion notice), and for ``holddown`` seconds it declares nothing and
claims nothing. It stands aside for the VIPs, never against them: when one
of its VIPs has had no owner for ``unowned_limit`` seconds (every node stood
aside at once, say after a ZooKeeper stall that all the leases outlived),
it comes back at once.

A lapse that ends the session needs none of this: the claims went with it.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs


@attrs.define
class Aside:
    """The stand-aside state of one node (callers hold the manager's lock).

    Attributes:
        holddown: seconds a node stays aside after its lease came back.
    """

    holddown: float
    _lapsed_in: int | None = attrs.field(init=False, default=None)
    _start_due: bool = attrs.field(init=False, default=False)
    _until: float = attrs.field(init=False, default=0.0)
    _unowned: dict[str, float] = attrs.field(init=False, factory=dict)

    def lapsed(self, session: int | None, held: bool) -> None:
        """The lease ran out while this node held claims (``held``) in ``session``."""
        if held and session is not None:
            self._lapsed_in = session

    def lease_back(self, session: int | None, now: float) -> bool:
        """The lease is valid again in ``session``; True when the node must stand aside.

        Only when the lease lapsed in this very session while claims were
        held: after a new session there are no old claims to give up.
        """
        lapsed, self._lapsed_in = self._lapsed_in, None
        if lapsed is None or lapsed != session or self.holddown <= 0:
            return False
        self._start_due = True
        self._until = now + self.holddown
        self._unowned.clear()
        return True

    def take_start(self) -> bool:
        """True once per stand-aside: the withdrawal is due (the converge thread does it)."""
        due, self._start_due = self._start_due, False
        return due

    def retry_start(self) -> None:
        """The withdrawal failed (ZooKeeper unreachable); do it on the next pass."""
        self._start_due = True

    def active(self, now: float) -> bool:
        """Whether the node stands aside at ``now``."""
        return now < self._until

    def over(self, now: float) -> bool:
        """True once when a hold-down has run out (the node declares again)."""
        if self._until and now >= self._until:
            self.end()
            return True
        return False

    def left(self, now: float) -> float:
        """Seconds until the hold-down ends (0 when not aside)."""
        return max(0.0, self._until - now)

    def watch_unowned(self, unowned: Iterable[str], now: float, limit: float) -> bool:
        """Track this node's VIPs that have no owner; True when one waited ``limit`` s.

        On True the stand-aside ends at once (nobody else is taking them).
        """
        still = set(unowned)
        for key in list(self._unowned):
            if key not in still:
                del self._unowned[key]
        for key in still:
            self._unowned.setdefault(key, now)
        if any(now - since >= limit for since in self._unowned.values()):
            self.end()
            return True
        return False

    def end(self) -> None:
        """Stop standing aside now."""
        self._until = 0.0
        self._start_due = False
        self._unowned.clear()
