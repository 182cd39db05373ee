"""Reservations: the planned successor owns a VIP the instant its owner's claim goes.

With beats on, a node reserves each VIP it is the planned successor of
(``_placement.successions``) by creating ``vips/<address>/next``, an
ephemeral znode of its session, next to the owner's claim. The rule of
ownership becomes: the holder of ``owner`` if it exists, else the holder of
``next``. So when the owner lets go (a graceful handover, a fence, the end
of its session) the reserver owns the VIP on the deletion notice alone, and
plumbs it without first writing a claim: one ZooKeeper write fewer between
the old owner's address removal and the new owner's announcement. It then
turns the reservation into a claim (``owner`` created, ``next`` deleted, in
one transaction) so that every reader sees an ordinary claim again.

Why there is still at most one owner (safety rule 1):

* A reservation is only made while ``owner`` exists (the same transaction
  checks it), and only one ``next`` can exist.
* Everybody else creates ``owner`` in a transaction that also requires
  ``next`` to be absent (:func:`mhafail.coordination.absent`): while the
  reservation lives, only its holder can become the owner.
* The reserver counts a deletion only when a read it sent *after* its
  reservation was made sees ``owner`` absent, or the watch that read armed
  reports the deletion (:meth:`~mhafail.coordination.Znodes.watch_gone`):
  never a deletion from before, after which somebody else may have claimed.
* It plumbs through the kernel, which checks both leases first, exactly as
  for a claim; reservations exist only with beats, so a silent reserver is
  fenced like a silent owner: its beat lists its reservations (it makes and
  drops them with a beat, see :mod:`mhafail.vip._beat`) and the fence deletes
  them with its claims. A reserver that cannot use a VIP it was given
  (stopping, standing aside, no working fence) drops the reservation so the
  others can claim.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable

from mhafail.coordination import Check, Create, Delete, Op, Watch, Znodes, absent
from mhafail.errors import CoordinationError
from mhafail.vip._beat import Beat
from mhafail.vip._paths import Claim, next_path, owner_path

logger = logging.getLogger(__name__)

PlumbCallback = Callable[[list[str], Claim], None]
DoneCallback = Callable[[list[str], Claim, float, list[str]], None]

_Gone = tuple[str, int, float]  # address, session of the reservation, when its owner let go
_Plumbed = tuple[list[str], Claim, float, bool]  # addresses, claim, gone at, plumbed?

BURST_GAP = 0.01
"""Releases closer together than this are a burst (a dead node's claims): taken in
batches on the reserver's thread. A lone one is plumbed on kazoo's thread at once."""

RETRY_AFTER = 1.0
"""Seconds before a refused reservation is tried again (somebody else's, or no owner)."""
RECHECK_AFTER = 0.5
"""Seconds a reserved VIP may look unowned before its watch is armed again (a read
that failed with the connection arms nothing)."""


def claim_ops(address: str, claim: Claim) -> list[Op]:
    """The transaction that claims ``address``: create its claim, only while nobody
    holds its reservation (every claim but a reserver's own is made so)."""
    return [
        Create(owner_path(address), claim.to_json(), ephemeral=True),
        *absent(next_path(address)),
    ]


class Reserver:
    """Makes, watches and drops this node's reservations (see the module docstring).

    Args:
        znodes: the cluster's znodes.
        beat: this node's beat; its reservation list is the source of truth.
        ready: the claim to use when this node may own a VIP now (live
            session, valid leases, working fence, not stopping nor standing
            aside), else None.
        plumb: ``plumb(addresses, claim)`` plumbs the VIPs this node owns by
            its reservations (their owner let go); it must not wait for
            ZooKeeper: a lone release is plumbed on kazoo's thread, a burst
            on the reserver's. An exception drops the reservations.
        done: ``done(addresses, claim, first_gone_at, claimed)`` on the
            reserver's thread once the reservations were turned into claims
            (``claimed``) or not: the caller removes the others.
    """

    def __init__(
        self,
        znodes: Callable[[], Znodes],
        beat: Beat,
        ready: Callable[[], Claim | None],
        *,
        plumb: PlumbCallback,
        done: DoneCallback,
        name: str = "mhafail-vip-reserver",
    ) -> None:
        self._znodes = znodes
        self._beat = beat
        self._ready = ready
        self._plumb = plumb
        self._done = done
        self._last_gone = -1.0
        self._lock = threading.Lock()
        # address -> (session, watch, when armed)
        self._watches: dict[str, tuple[int, Watch, float]] = {}
        # Given to this node by their owner's release, not yet claimed or
        # dropped: a pass whose snapshot already shows them ours must not drop them.
        self._taking: set[str] = set()
        self._refused: dict[str, float] = {}  # address -> when to try reserving it again
        self._gone: queue.SimpleQueue[_Gone | _Plumbed | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def held(self) -> frozenset[str]:
        """The addresses this node holds a reservation of."""
        return self._beat.reserved()

    def sync(
        self, wanted: frozenset[str], session: int | None, unowned: frozenset[str] = frozenset()
    ) -> None:
        """Hold reservations for exactly ``wanted`` (the converge thread).

        ``wanted``: the VIPs another node holds that this node is the planned
        successor of. Drops the others in one transaction and makes the new
        ones in another (one at a time when that one is refused: an owner
        went meanwhile, or somebody else reserved first). ``unowned``:
        reserved VIPs the cache shows without an owner; their watches are
        armed again when older than ``RECHECK_AFTER``.

        Raises:
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        self._drop_stale_watches(session)
        held = self._beat.reserved()
        z = self._znodes()
        with self._lock:
            drop = held - wanted - self._taking
        if drop:
            self.drop(drop)
            held = self._beat.reserved()
        claim = self._ready()
        now = time.monotonic()
        add = sorted(a for a in wanted - held if self._refused.get(a, 0.0) <= now)
        ready = add and claim is not None and claim.session == session
        if ready and claim is not None and not self._make(z, add, claim):
            # One at a time; a refused one waits RETRY_AFTER (the work per
            # pass stays bounded while caches disagree on the successor).
            for address in add:
                if not self._make(z, [address], claim):
                    self._refused[address] = now + RETRY_AFTER
        for address in [a for a in self._refused if a not in wanted]:
            del self._refused[address]
        with self._lock:
            stale = [
                a
                for a in unowned
                if a in self._watches and now - self._watches[a][2] > RECHECK_AFTER
            ]
        self._cancel(set(stale))
        for address in self._beat.reserved():
            self._arm(z, address, session)

    def drop(self, addresses: frozenset[str] | set[str], znodes: Znodes | None = None) -> bool:
        """Delete these reservations of ours (with a beat, through ``znodes`` when given:
        a bounded view); True when done or none held."""
        held = self._beat.reserved()
        drop = held & addresses
        if not drop:
            return True

        def ops(listed: frozenset[str]) -> list[Op]:  # only those still ours
            return [Delete(next_path(a), 0) for a in sorted(drop & listed)]

        done = self._beat.write_with(znodes or self._znodes(), ops, unreserve=drop)
        if done:
            self._cancel(drop)
        return done

    def convert(self, addresses: list[str], claim: Claim) -> list[str]:
        """Turn these reservations into claims; return the addresses converted.

        One transaction for all, else one each (a reservation gone meanwhile:
        fenced, or dropped). The caller removes the addresses not converted.
        """
        z = self._znodes()
        done: list[str] = []
        groups = [addresses] if len(addresses) > 1 else []
        groups += [[a] for a in addresses]
        for candidates in groups:
            group = [a for a in candidates if a not in done and a in self._beat.reserved()]
            if not group:
                continue

            def ops(listed: frozenset[str], group: list[str] = group) -> list[Op] | None:
                if not set(group) <= listed:
                    return None  # fenced meanwhile: somebody else may have reserved since
                out: list[Op] = []
                for address in group:
                    out += [
                        Create(owner_path(address), claim.to_json(), ephemeral=True),
                        Delete(next_path(address), 0),
                    ]
                return out

            if self._beat.write_with(z, ops, unreserve=group):
                self._cancel(set(group))
                done += group
        return done

    def forget(self) -> None:
        """Cancel every watch (the reservations are gone: fenced, or a new session)."""
        self._cancel(None)

    def stop(self) -> None:
        """Cancel the watches and end the thread (the session's end deletes the znodes)."""
        self.forget()
        self._gone.put(None)
        self._thread.join(2.0)

    # --- internals ---------------------------------------------------------------

    def _make(self, z: Znodes, addresses: list[str], claim: Claim) -> bool:
        ops: list[Op] = []
        for address in addresses:
            ops += [
                Create(next_path(address), claim.to_json(), ephemeral=True),
                Check(owner_path(address)),  # only behind a live claim
            ]
        done = self._beat.write_with(z, ops, reserve=addresses)
        if done:
            logger.debug("%s: reserved %s", claim.node, ", ".join(addresses))
        return done

    def _arm(self, z: Znodes, address: str, session: int | None) -> None:
        if session is None:
            return
        with self._lock:
            if address in self._watches:
                return
        # Armed after the reservation was made: only a later deletion counts.
        watch = z.watch_gone(
            owner_path(address), functools.partial(self._on_gone, address, session)
        )
        with self._lock:
            if address in self._watches:
                watch.cancel()
            else:
                self._watches[address] = (session, watch, time.monotonic())

    def _on_gone(self, address: str, session: int) -> None:
        """kazoo's thread: the owner of a reserved VIP let go.

        A lone release is plumbed here at once (a thread hand-off costs the
        clients up to a GIL switch interval); the claim write goes to the
        reserver's thread. A burst is handed over whole, to be batched.
        """
        at = time.monotonic()
        with self._lock:
            entry = self._watches.get(address)
            if entry is None or entry[0] != session:
                return
            lone = not self._taking and at - self._last_gone > BURST_GAP
            self._taking.add(address)
            self._last_gone = at
        claim = self._ready() if lone else None
        if claim is None or claim.session != session or address not in self._beat.reserved():
            self._gone.put((address, session, at))  # batched, or dropped, over there
            return
        self._gone.put(([address], claim, at, self._plumb_safely([address], claim)))

    def _drop_stale_watches(self, session: int | None) -> None:
        with self._lock:
            stale = [a for a, (s, _, _) in self._watches.items() if s != session]
        if stale:
            self._cancel(set(stale))

    def _cancel(self, addresses: set[str] | frozenset[str] | None) -> None:
        with self._lock:
            keys = list(self._watches) if addresses is None else list(addresses)
            watches = [self._watches.pop(a) for a in keys if a in self._watches]
        for _, watch, _ in watches:
            watch.cancel()

    def _run(self) -> None:
        while (first := self._gone.get()) is not None:
            if len(first) == 4:
                self._settle(*first)
                continue
            batch = [first]
            while True:  # releases that came meanwhile go in the same batch
                try:
                    entry = self._gone.get_nowait()
                except queue.Empty:
                    break
                if entry is None or len(entry) == 4:
                    self._gone.put(entry)  # after this batch
                    break
                batch.append(entry)
            self._owned(batch)

    def _owned(self, batch: list[_Gone]) -> None:
        """Plumb and claim a batch of released VIPs, or drop their reservations."""
        addresses = sorted({a for a, _, _ in batch})
        claim = self._ready()
        held = self._beat.reserved()
        mine = [a for a, s, _ in batch if claim is not None and s == claim.session and a in held]
        if claim is None or not mine:
            # Given VIPs this node cannot use now: let the others claim them.
            try:
                self.drop(set(addresses))
            except CoordinationError as exc:
                logger.warning("could not drop reservations: %s", exc)
            finally:
                with self._lock:
                    self._taking.difference_update(addresses)
            return
        mine = sorted(set(mine))
        at = min(at for _, _, at in batch)
        self._settle(mine, claim, at, self._plumb_safely(mine, claim))

    def _plumb_safely(self, addresses: list[str], claim: Claim) -> bool:
        try:
            self._plumb(addresses, claim)
        except Exception:
            logger.exception("%s: could not take reserved %s", claim.node, addresses)
            return False
        return True

    def _settle(self, addresses: list[str], claim: Claim, at: float, plumbed: bool) -> None:
        """Turn plumbed reservations into claims; drop the others (the reserver's thread)."""
        claimed: list[str] = []
        try:
            if plumbed:
                claimed = self.convert(addresses, claim)
            else:
                self.drop(set(addresses))  # let the others claim
        except CoordinationError as exc:
            logger.warning("%s: reservations of %s: %s", claim.node, addresses, exc)
        finally:
            with self._lock:
                self._taking.difference_update(addresses)
            self._done(addresses, claim, at, claimed)
