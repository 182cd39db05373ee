"""The kernel side of a VipManager: what is plumbed, fenced and announced.

One lock serialises every change to the node's addresses, so that the
lease-expiry path (which removes everything) and the converge path (which
adds what is owned) never interleave: an address is added only after the
lease was checked under the same lock, and the expiry path takes that lock
before removing.

A check is only as good as the moment it was made: the process can stall
between the check and the action (safety rule 6). So the lease is
checked again after every step that can stall: after the fence notice and
the netlink call of an add (an add that finds the lease gone is undone at
once), and immediately before every announcement. Addresses carry a kernel
lifetime renewed from the lease, so even a frozen process loses them.

Adds come in batches (a mass takeover plumbs hundreds of VIPs at once):
the fence is told about every address of the batch before any is plumbed,
the plumber adds them all or none, the lease is checked once more after
the batch and the whole batch is undone if it ended, and the first
announcements go out as one burst, the lease asked before each address.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from mhafail.errors import PlumbingError
from mhafail.vip._fence import FenceProcess
from mhafail.vip._plumber import Plumber
from mhafail.vip._spec import Vip

logger = logging.getLogger(__name__)


@attrs.frozen
class Added:
    """What one :meth:`Kernel.add_many` did.

    Attributes:
        plumbed: the VIPs of the call that are plumbed now (before or by this call).
        new: the VIPs this call plumbed.
        steps: ``(step, time.monotonic())`` when each step ended: ``fenced``
            (the fence was told), ``plumbed``, ``announced`` (the first burst).
    """

    plumbed: tuple[Vip, ...] = ()
    new: tuple[Vip, ...] = ()
    steps: tuple[tuple[str, float], ...] = ()


class Kernel:
    """Tracks and changes the VIPs plumbed on this node.

    Args:
        plumber: how addresses get into the kernel.
        lease_valid: the coordinator's ``lease_valid``; checked under the
            lock right before every add and every announcement.
        fence: the fence process, told before every add and after every removal.
        announce_schedule: offsets in seconds after plumbing at which to announce.
        lease_deadline: the coordinator's ``lease_deadline``; when given,
            addresses carry a kernel lifetime that ends with the lease. The
            fence renews it (every ``renew_interval`` seconds here when there
            is no fence): a renewal is a netlink *replace*, which re-creates
            a missing address, so it belongs to the process that knows the
            deadline and is not the one being paused (see ``fence.py``).
    """

    def __init__(
        self,
        plumber: Plumber,
        lease_valid: Callable[[], bool],
        *,
        fence: FenceProcess | None = None,
        announce_schedule: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0),
        lease_deadline: Callable[[], float | None] | None = None,
        renew_interval: float = 0.25,
    ) -> None:
        self.plumber = plumber
        self._lease_valid = lease_valid
        self._lease_deadline = lease_deadline
        self._renew_interval = renew_interval
        self._fence = fence
        self._schedule = tuple(sorted(announce_schedule))
        self._lock = threading.Lock()
        self._closed = False
        self._plumbed: dict[str, Vip] = {}
        self._queue: list[tuple[float, int, str, int]] = []  # (when, seq, address, generation)
        self._generation: dict[str, int] = {}
        self._seq = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(
            target=self._announcer, name="mhafail-announce", daemon=True
        )
        self._thread.start()
        self._renewer: threading.Thread | None = None
        if lease_deadline is not None and (fence is None or not fence.renews_lifetimes):
            self._renewer = threading.Thread(
                target=self._renew_loop, name="mhafail-vip-lifetimes", daemon=True
            )
            self._renewer.start()

    def plumbed(self) -> frozenset[str]:
        """Addresses currently plumbed by this manager."""
        with self._lock:
            return frozenset(self._plumbed)

    def add(self, vip: Vip) -> bool:
        """Plumb ``vip`` if the lease is valid; return True if it is plumbed now.

        Schedules its announcements when it was not plumbed before.
        """
        return bool(self.add_many([vip]).plumbed)

    def add_many(self, vips: Sequence[Vip]) -> Added:
        """Plumb ``vips`` in one batch if the lease is valid; see :class:`Added`.

        Under the lock, in this order: the lease is checked; the fence is
        told about every new address (nothing is plumbed if it refuses);
        the lease is checked again; the plumber adds them all or none; the
        lease is checked once more and the whole batch is undone if it
        ended meanwhile; the first announcements go out as one burst, the
        lease asked before each address.

        Raises:
            PlumbingError: the plumber refused the batch (nothing of it is plumbed).
        """
        steps: list[tuple[str, float]] = []
        with self._lock:
            before = tuple(v for v in vips if v.key in self._plumbed)
            fresh = list({v.key: v for v in vips if v.key not in self._plumbed}.values())
            if not fresh or self._closed or not self._lease_valid():
                return Added(plumbed=before)
            if self._fence is not None and not self._fence.manage_many(fresh):
                logger.warning("not plumbing %d VIP(s): the fence is not working", len(fresh))
                return Added(plumbed=before)
            steps.append(("fenced", time.monotonic()))
            valid_for = self._valid_for()
            if not self._lease_valid() or (self._lease_deadline is not None and valid_for is None):
                return Added(plumbed=before)  # the lease ended while the fence was told
            try:
                self.plumber.ensure_present_many(fresh, valid_for)
            except PlumbingError:
                if self._fence is not None:
                    self._fence.unmanage_many(fresh)  # the plumber undid its part
                raise
            if not self._lease_valid():
                # Stalled between the check and the adds: the addresses may now
                # outlive the session. Undo before anyone can see them used.
                self._undo(fresh)
                return Added(plumbed=before)
            steps.append(("plumbed", time.monotonic()))
            queued = []
            for vip in fresh:
                self._plumbed[vip.key] = vip
                generation = self._generation.get(vip.key, 0) + 1
                self._generation[vip.key] = generation
                queued.append((vip.key, generation))
            if self._schedule and self._schedule[0] <= 0:
                # The first announcements go out at once, from here: the lease
                # was checked under this lock a moment ago, and a thread
                # hand-off would only delay clients.
                self._send(fresh)
                steps.append(("announced", time.monotonic()))
        self._queue_announcements(queued, skip_first=True)
        return Added(plumbed=before + tuple(fresh), new=tuple(fresh), steps=tuple(steps))

    def _undo(self, vips: list[Vip]) -> None:
        """Remove a batch added after the lease ended (lock held)."""
        try:
            self.plumber.ensure_absent_many(vips)
        except PlumbingError:
            # The fence still manages them and its deadline has passed: it
            # removes them within milliseconds.
            logger.exception("could not undo an add after the lease ended")
            return
        if self._fence is not None:
            self._fence.unmanage_many(vips)
        logger.warning("%d VIP(s): the lease ended while plumbing; removed again", len(vips))

    def remove(self, vip: Vip) -> bool:
        """Unplumb ``vip`` (idempotent); return True if it was plumbed by us.

        The fence is told at once, under the lock: while it manages an
        address it renews the address's kernel lifetime with a netlink
        *replace*, which would add the address back.
        """
        with self._lock:
            was = self._plumbed.pop(vip.key, None) is not None
            self.plumber.ensure_absent(vip)
            if self._fence is not None:
                self._fence.unmanage(vip)
        return was

    def remove_all(self) -> list[Vip]:
        """Unplumb everything in one batch (lease expiry, shutdown); return what was plumbed."""
        with self._lock:
            vips = list(self._plumbed.values())
            if not vips:
                return []
            try:
                self.plumber.ensure_absent_many(vips)
                removed = vips
            except PlumbingError:
                # Find out which ones resist; the rest go one by one.
                removed = []
                for vip in vips:
                    try:
                        self.plumber.ensure_absent(vip)
                    except PlumbingError:
                        logger.exception("could not remove %s; the fence will retry", vip.key)
                        continue
                    removed.append(vip)
            for vip in removed:
                del self._plumbed[vip.key]
            if self._fence is not None:
                self._fence.unmanage_many(removed)
        return removed

    def verify(self, vips: Sequence[Vip]) -> tuple[list[str], list[str]]:
        """Compare the kernel with what we believe is plumbed, and repair it.

        Returns:
            (re-added addresses, removed stray addresses) among ``vips``.
        """
        readded, removed = [], []
        by_iface: dict[str, frozenset[str]] = {}
        for vip in vips:
            if vip.interface not in by_iface:
                try:
                    by_iface[vip.interface] = self.plumber.addresses(vip.interface)
                except PlumbingError:
                    by_iface[vip.interface] = frozenset()
            present = vip.key in by_iface[vip.interface]
            with self._lock:
                ours = vip.key in self._plumbed
                if ours and not present and not self._closed and self._lease_valid():
                    self.plumber.ensure_present(vip, self._valid_for())
                    if not self._lease_valid():
                        self.plumber.ensure_absent(vip)  # stalled past the lease: undo
                        continue
                    readded.append(vip.key)
                elif present and not ours:
                    self.plumber.ensure_absent(vip)
                    removed.append(vip.key)
        return readded, removed

    def close(self) -> None:
        """Refuse every later add (shutdown); removals still work."""
        with self._lock:
            self._closed = True

    def stop(self) -> None:
        """Stop the announcer and lifetime threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(5)
        if self._renewer is not None:
            self._renewer.join(5)

    def _valid_for(self) -> float | None:
        """Seconds of lease left for a kernel lifetime, or None (no lifetimes / no lease)."""
        if self._lease_deadline is None:
            return None
        deadline = self._lease_deadline()
        if deadline is None:
            return None
        left = deadline - time.monotonic()
        return left if left > 0 else None

    def renew_lifetimes(self) -> int:
        """Set every plumbed address's kernel lifetime from the lease; return how many."""
        renewed = 0
        with self._lock:
            for vip in list(self._plumbed.values()):
                valid_for = self._valid_for()
                if valid_for is None or not self._lease_valid():
                    break  # the expiry path removes them
                try:
                    self.plumber.renew(vip, valid_for)
                except PlumbingError:
                    logger.exception("could not renew the lifetime of %s", vip.key)
                    continue
                renewed += 1
                if not self._lease_valid():
                    # A stall inside the renewal: it may have re-created the
                    # address after the lease ended. Undo at once.
                    try:
                        self.plumber.ensure_absent(vip)
                    except PlumbingError:
                        logger.exception("could not remove %s", vip.key)
                    break
        return renewed

    def _renew_loop(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                self._cond.wait(self._renew_interval)
                if self._stopping:
                    return
            self.renew_lifetimes()

    def _queue_announcements(self, queued: list[tuple[str, int]], *, skip_first: bool) -> None:
        """Schedule the announcements of ``(address, generation)`` pairs, all from now."""
        now = time.monotonic()
        offsets = self._schedule
        if skip_first and offsets and offsets[0] <= 0:
            offsets = offsets[1:]
        with self._cond:
            for offset in offsets:
                for address, generation in queued:
                    self._seq += 1
                    heapq.heappush(self._queue, (now + offset, self._seq, address, generation))
            self._cond.notify_all()

    def _announcer(self) -> None:
        """Send what is due, as one burst (a takeover's VIPs fall due together)."""
        while True:
            with self._cond:
                while not self._stopping and (
                    not self._queue or self._queue[0][0] > time.monotonic()
                ):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                now = time.monotonic()
                due = []
                while self._queue and self._queue[0][0] <= now:
                    _, _, address, generation = heapq.heappop(self._queue)
                    due.append((address, generation))
            self._announce(due)

    def _announce(self, due: list[tuple[str, int]]) -> None:
        with self._lock:
            # Only the current plumbing of a VIP: a resumed process must not
            # pull clients to an address it is about to lose (safety rule 1);
            # _send asks the lease before each one.
            vips = [
                self._plumbed[address]
                for address, generation in due
                if address in self._plumbed and self._generation.get(address) == generation
            ]
            self._send(vips)

    def _send(self, vips: list[Vip]) -> None:
        # Called with the lock held. The plumber asks the lease immediately
        # before each address's packets: a stale announcement would pull
        # clients to an address this node is about to lose (safety rule 1).
        if not vips or not self._lease_valid():
            return
        try:
            self.plumber.announce_many(vips, self._lease_valid)
        except PlumbingError:
            logger.exception("announcement failed")
