"""The kernel side of a VipManager: what is plumbed, fenced and announced.

One lock serialises every change to the node's addresses, so that the
lease-expiry path (which removes everything) and the converge path (which
adds what is owned) never interleave: an address is added only after the
lease was checked under the same lock, and the expiry path takes that lock
before removing.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence

from mhafail.errors import PlumbingError
from mhafail.vip._fence import FenceProcess
from mhafail.vip._plumber import Plumber
from mhafail.vip._spec import Vip

logger = logging.getLogger(__name__)


class Kernel:
    """Tracks and changes the VIPs plumbed on this node.

    Args:
        plumber: how addresses get into the kernel.
        lease_valid: the coordinator's ``lease_valid``; checked under the
            lock right before every add and every announcement.
        fence: the fence process, told before every add and after every removal.
        announce_schedule: offsets in seconds after plumbing at which to announce.
    """

    def __init__(
        self,
        plumber: Plumber,
        lease_valid: Callable[[], bool],
        *,
        fence: FenceProcess | None = None,
        announce_schedule: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0),
    ) -> None:
        self.plumber = plumber
        self._lease_valid = lease_valid
        self._fence = fence
        self._schedule = tuple(sorted(announce_schedule))
        self._lock = threading.Lock()
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

    def plumbed(self) -> frozenset[str]:
        """Addresses currently plumbed by this manager."""
        with self._lock:
            return frozenset(self._plumbed)

    def add(self, vip: Vip) -> bool:
        """Plumb ``vip`` if the lease is valid; return True if it is plumbed now.

        Schedules its announcements when it was not plumbed before.
        """
        with self._lock:
            if vip.key in self._plumbed:
                return True
            if not self._lease_valid():
                return False
            if self._fence is not None:
                self._fence.manage(vip)
            self.plumber.ensure_present(vip)
            self._plumbed[vip.key] = vip
            generation = self._generation.get(vip.key, 0) + 1
            self._generation[vip.key] = generation
            if self._schedule and self._schedule[0] <= 0:
                # The first announcement goes out at once, from here: the lease
                # was checked under this lock a moment ago, and a thread
                # hand-off would only delay clients.
                self._send(vip)
        self._queue_announcements(vip.key, generation, skip_first=True)
        return True

    def remove(self, vip: Vip) -> bool:
        """Unplumb ``vip`` (idempotent); return True if it was plumbed by us."""
        with self._lock:
            was = self._plumbed.pop(vip.key, None) is not None
            self.plumber.ensure_absent(vip)
            if self._fence is not None:
                self._fence.unmanage(vip)
        return was

    def remove_all(self) -> list[Vip]:
        """Unplumb everything (lease expiry, shutdown); return what was plumbed."""
        removed = []
        with self._lock:
            for vip in list(self._plumbed.values()):
                try:
                    self.plumber.ensure_absent(vip)
                except PlumbingError:
                    logger.exception("could not remove %s; the fence will retry", vip.key)
                    continue
                del self._plumbed[vip.key]
                if self._fence is not None:
                    self._fence.unmanage(vip)
                removed.append(vip)
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
                if ours and not present and self._lease_valid():
                    self.plumber.ensure_present(vip)
                    readded.append(vip.key)
                elif present and not ours:
                    self.plumber.ensure_absent(vip)
                    removed.append(vip.key)
        return readded, removed

    def stop(self) -> None:
        """Stop the announcer thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(5)

    def _queue_announcements(self, address: str, generation: int, *, skip_first: bool) -> None:
        now = time.monotonic()
        offsets = self._schedule
        if skip_first and offsets and offsets[0] <= 0:
            offsets = offsets[1:]
        with self._cond:
            for offset in offsets:
                self._seq += 1
                heapq.heappush(self._queue, (now + offset, self._seq, address, generation))
            self._cond.notify_all()

    def _announcer(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (
                    not self._queue or self._queue[0][0] > time.monotonic()
                ):
                    timeout = self._queue[0][0] - time.monotonic() if self._queue else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, _, address, generation = heapq.heappop(self._queue)
            self._announce(address, generation)

    def _announce(self, address: str, generation: int) -> None:
        with self._lock:
            vip = self._plumbed.get(address)
            # Only the current plumbing of a VIP, and only while the lease is
            # valid: a resumed process must not pull clients to an address it
            # is about to lose (DESIGN.md rule 1).
            if vip is None or self._generation.get(address) != generation:
                return
            if not self._lease_valid():
                return
            self._send(vip)

    def _send(self, vip: Vip) -> None:
        # Called with the lock held and the lease just checked.
        try:
            self.plumber.announce(vip)
        except PlumbingError:
            logger.exception("announcement of %s failed", vip.key)
