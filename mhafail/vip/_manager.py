"""VipManager: one owner per VIP, elected through ZooKeeper, plumbed by netlink.

Safety (safety rule 1), in the order things happen:

* claim before plumb: an address is added only after this node created its
  ephemeral claim ``vips/<address>/owner`` in the current session, or (with
  beats) saw the claim go while it held the VIP's reservation
  ``vips/<address>/next`` (see ``_reserve``), and only while the fencing
  lease is valid (checked under the kernel lock);
* unplumb before release: a handover runs the ``pre_release`` hook, removes
  the address, and only then deletes the claim;
* the lease rules all: when it expires every address goes at once, before
  the server can expire the session and a survivor can claim; announcements
  check it immediately before they are sent; an optional fence process
  removes the addresses even when this process is paused, and kernel
  address lifetimes renewed from the lease remove them even when both are
  frozen;
* no VIP without a working fence: when the fence fails (exits, stops
  answering) every address is removed and every claim released, the fence
  is restarted, and only then does the node claim again.

Liveness (rule 2): watch events only update caches and kick the converge
loop; every pass recomputes placement from the caches; a full re-read of
ZooKeeper and a check of the kernel happen after every reconnect, every new
session and every ``reconcile_interval`` seconds.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from mhafail.coordination import (
    ClusterView,
    ConnectionState,
    ConvergeLoop,
    Coordinator,
    Delete,
    Dispatcher,
    LeaseState,
    Membership,
    Op,
    Znode,
    Znodes,
)
from mhafail.errors import CoordinationError, InvalidVipSpec, PlumbingError, VipError
from mhafail.vip._aside import Aside
from mhafail.vip._beat import Beat, BeatWatch, earliest, fence
from mhafail.vip._facts import (
    Facts,
    claim_of,
    read_declarations,
    read_dirty,
    watch_facts,
)
from mhafail.vip._fence import FenceProcess
from mhafail.vip._kernel import Kernel
from mhafail.vip._paths import (
    Claim,
    declared_path,
    drained_path,
    next_path,
    node_from_json,
    owner_path,
    target_path,
)
from mhafail.vip._placement import Action, Decision, PlacementInput, decide, rank, successions
from mhafail.vip._plumber import Plumber
from mhafail.vip._policy import RebalancePolicy
from mhafail.vip._reserve import Reserver, claim_ops
from mhafail.vip._spec import Vip, VipKind, validate_vips
from mhafail.vip._standby import Standby

logger = logging.getLogger(__name__)

HANDOVER_SETTLE = 0.05
"""Seconds a graceful stop waits after its withdrawal, and after its handovers."""
MEMBERS = "members"  # Membership's folder (mhafail.coordination), read with the claims

VipCallback = Callable[[Vip], None]
StepCallback = Callable[[str, float, int], None]


@attrs.frozen
class PassResult:
    """What one converge pass did (for tests, logs and ``vip show``)."""

    decisions: tuple[Decision, ...] = ()
    claimed: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    plumbed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()


@attrs.define
class _Tally:
    claimed: list[str] = attrs.field(factory=list)
    released: list[str] = attrs.field(factory=list)
    plumbed: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True, eq=False)
class VipManager:
    """Owns this node's share of the cluster's VIPs.

    Args:
        coordinator: a started coordinator.
        membership: this node's started membership (its name is the node name).
        plumber: how addresses reach the kernel (``NetlinkPlumber``, or
            ``mhafail.testing.FakePlumber`` in tests).
        vips: the VIPs this node may carry (validated at start).
        rebalance: when VIPs move back to a better-ranked node.
        claim_step: seconds each rank waits behind the previous one before
            claiming an unowned VIP.
        drain_timeout: the longest a ``pre_release`` hook may run.
        announce_schedule: seconds after plumbing at which to announce.
        reconcile_interval: seconds between full re-reads and kernel checks.
        fence: an optional fence process (see ``mhafail.vip.fence``).
        validate_host: check the VIPs against the host's own addresses.
        kernel_lifetimes: plumb with kernel lifetimes renewed from the lease.
        stop_timeout: the longest :meth:`stop` waits for ZooKeeper.
        beat: this node's beat (``mhafail.vip._beat``): survivors then fence a
            silent owner after the beat's budget instead of waiting for its
            session to expire. Started and stopped with the manager.
        lapse_holddown: seconds a node stands aside (declares and claims
            nothing) after its lease lapsed while its session lived on
            (see ``mhafail.vip._aside``); 0 turns standing aside off.

    Callbacks (``on_acquire``, ``on_release``) run in order on the manager's
    event thread; wrap them with ``mhafail.coordination.in_loop`` for asyncio.
    """

    coordinator: Coordinator
    membership: Membership
    plumber: Plumber
    vips: Sequence[Vip]
    rebalance: RebalancePolicy = attrs.field(factory=RebalancePolicy)
    claim_step: float = 0.25
    drain_timeout: float = 5.0
    announce_schedule: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0)
    reconcile_interval: float = 5.0
    fence: FenceProcess | None = None
    validate_host: bool = True
    kernel_lifetimes: bool = True
    stop_timeout: float = 3.0
    lapse_holddown: float = 30.0
    beat: Beat | None = None

    _me: str = attrs.field(init=False, default="")
    _by_key: dict[str, Vip] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _facts: Facts = attrs.field(init=False, factory=Facts)
    _targets: dict[str, str] = attrs.field(init=False, factory=dict)
    _drained: frozenset[str] = attrs.field(init=False, default=frozenset())
    _view_changed: float = attrs.field(init=False, factory=time.monotonic)
    _full_read_due: bool = attrs.field(init=False, default=True)
    _last_full: float = attrs.field(init=False, default=0.0)
    _unclaimed_since: dict[str, float] = attrs.field(init=False, factory=dict)
    _rewatch: bool = attrs.field(init=False, default=False)
    _kernel: Kernel | None = attrs.field(init=False, default=None)
    _loop: ConvergeLoop | None = attrs.field(init=False, default=None)
    _events: Dispatcher | None = attrs.field(init=False, default=None)
    _acquire: list[VipCallback] = attrs.field(init=False, factory=list)
    _release: list[VipCallback] = attrs.field(init=False, factory=list)
    _pre_release: list[VipCallback] = attrs.field(init=False, factory=list)
    _steps: list[StepCallback] = attrs.field(init=False, factory=list)
    _members: frozenset[str] = attrs.field(init=False, default=frozenset())
    _departed: frozenset[str] = attrs.field(init=False, default=frozenset())
    _claim_gone_at: float = attrs.field(init=False, default=float("-inf"))
    _last: PassResult = attrs.field(init=False, factory=PassResult)
    _last_full_result: PassResult = attrs.field(init=False, factory=PassResult)
    _full_passes: int = attrs.field(init=False, default=0)
    _stopping: bool = attrs.field(init=False, default=False)
    _fence_failed: str | None = attrs.field(init=False, default=None)
    _standby: Standby | None = attrs.field(init=False, default=None)
    _beats: BeatWatch | None = attrs.field(init=False, default=None)
    _reserver: Reserver | None = attrs.field(init=False, default=None)
    _aside: Aside = attrs.field(
        init=False, default=attrs.Factory(lambda self: Aside(self.lapse_holddown), takes_self=True)
    )

    # --- application API ----------------------------------------------------------

    def on_acquire(self, callback: VipCallback) -> None:
        """Call ``callback(vip)`` after this node plumbed a VIP."""
        self._acquire.append(callback)

    def on_release(self, callback: VipCallback) -> None:
        """Call ``callback(vip)`` after this node removed a VIP."""
        self._release.append(callback)

    def pre_release(self, hook: VipCallback) -> None:
        """Run ``hook(vip)`` before a planned handover removes a VIP (drain connections).

        Runs on the manager's thread, bounded by ``drain_timeout``; not run
        when the lease expires (there is no time then).
        """
        self._pre_release.append(hook)

    def on_step(self, callback: StepCallback) -> None:
        """Call ``callback(step, at, count)`` as a takeover progresses (tracing, benchmarks).

        ``at`` is the ``time.monotonic()`` reading when the step ended;
        ``count`` how many VIPs (or members) it concerned. Steps:
        ``departed`` (the member list no longer has a member),
        ``member-left`` (the membership view lost it); ``gone`` (the
        first notice of the deletion of a claim this node was the planned
        successor of) then ``claimed`` (those claims created); or, for
        claims made by a converge pass, ``pass`` (it began), ``read`` (its
        reads done), ``decided`` (placement done, claims sent) and
        ``claimed``; then ``fenced`` (the fence was told), ``plumbed``
        and ``announced`` (the first burst). A handover by this node:
        ``removed`` (the address is gone) then ``released`` (its claim
        deleted). Runs on the event thread, like the other callbacks.
        """
        self._steps.append(callback)

    def owned(self) -> frozenset[Vip]:
        """The VIPs this node holds now (claimed and plumbed)."""
        if self._kernel is None:
            return frozenset()
        return frozenset(self._by_key[k] for k in self._kernel.plumbed() if k in self._by_key)

    def owner_of(self, address: str) -> str | None:
        """The node holding the claim for ``address`` as last seen, or None."""
        with self._lock:
            claim = self._facts.owners.get(_key(address))
        return None if claim is None else claim.node

    def binding_address(self, name: str) -> str | None:
        """The address of binding ``name`` if this node owns it now, else None.

        An MTA sends from a binding only when this returns an address.
        """
        for vip in self.owned():
            if vip.kind is VipKind.BINDING and vip.binding == name:
                return vip.key
        return None

    @property
    def last_pass(self) -> PassResult:
        """What the latest converge pass did."""
        return self._last

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> VipManager:
        """Validate, remove stale addresses (clean slate), declare, and join.

        Raises:
            InvalidVipSpec: a VIP is refused (nothing was changed).
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        if not 0 <= self.lapse_holddown < math.inf:
            raise InvalidVipSpec(
                f"lapse_holddown must be 0 or more seconds, not {self.lapse_holddown}"
            )
        self._me = self.membership.info.name
        self._members = frozenset(self.membership.view.names)
        # The plumber leaves out addresses it marked as its own (an earlier
        # agent's leftovers): they are not the host's, and go just below.
        host = self.plumber.interfaces() if self.validate_host else None
        self._by_key = {v.key: v for v in validate_vips(list(self.vips), host_addresses=host)}
        # Clean slate: nothing is ours before we claim.
        self.plumber.ensure_absent_many(list(self._by_key.values()))
        self._kernel = Kernel(
            self.plumber,
            self._owning_valid,
            fence=self.fence,
            announce_schedule=self.announce_schedule,
            lease_deadline=self._owning_deadline if self.kernel_lifetimes else None,
        )
        if self.fence is not None:
            self.fence.on_failure(self._on_fence_failure)
        self._events = Dispatcher(f"mhafail-vip-events-{self._me}")
        self._standby = Standby(
            lambda: self.coordinator.znodes,
            self._standby_ready,
            self._standby_won,
            lambda: self._loop.kick() if self._loop is not None else None,
            name=f"mhafail-vip-standby-{self._me}",
        )
        self.coordinator.add_lease_listener(self._on_lease)
        if self.beat is not None:
            self.beat.add_listener(self._on_lease)
            self.beat.on_fenced(self._on_fenced)
            self._beats = BeatWatch(self._me, self._kick_after)
            self._reserver = Reserver(
                lambda: self.coordinator.znodes,
                self.beat,
                self._standby_ready,
                plumb=self._reserve_plumb,
                done=self._reserve_done,
                name=f"mhafail-vip-reserver-{self._me}",
            )
            self.beat.start()
        self.coordinator.add_state_listener(self._on_state)
        self.coordinator.add_session_listener(self._on_session)
        self.membership.add_listener(self._on_view)
        self._declare()
        self._loop = ConvergeLoop(
            f"mhafail-vip-{self._me}", self._converge, period=self.reconcile_interval, retry=0.2
        )
        self._watch()
        self._loop.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop; with ``release`` hand every VIP over first (graceful shutdown).

        A graceful release removes each address, then deletes its claim, so
        the next owner can take it at once.
        """
        if self._loop is None or self._stopping:
            return
        self._stopping = True
        if self._standby is not None:
            self._standby.stop()
        if self._reserver is not None:
            self._reserver.stop()  # its znodes go with the beat and the session
        # A pass blocked in a ZooKeeper call is not waited for: the kernel is
        # closed first, so whatever it does next cannot plumb anything.
        self._loop.stop(timeout=0.5)
        assert self._kernel is not None
        self._kernel.close()
        # Every ZooKeeper call on the way out is bounded: with ZooKeeper
        # unreachable, stop drops the addresses and gives up on the claims
        # (the session's end removes them) instead of waiting for kazoo.
        end = time.monotonic() + self.stop_timeout
        if release and self._zk_usable():
            self._hand_over_all(end)
        for vip in self._kernel.remove_all():
            self._emit(self._release, vip)
        if self._zk_usable():
            self._withdraw(end)
        self._kernel.stop()
        if self._beats is not None:
            self._beats.stop()
        if self.beat is not None:
            self.beat.stop()
        if self.fence is not None:
            self.fence.close()
        if self._events is not None:
            self._events.stop()

    def _hand_over_all(self, end: float) -> None:
        """A graceful stop's releases: withdraw, drop reservations, hand every VIP over."""
        assert self._kernel is not None
        # Withdraw first, so that no survivor ranks this node first and
        # waits for it to claim again; reservations go too, or a VIP whose
        # owner lets go meanwhile would wait for this session's end.
        self._withdraw(end)
        if self._reserver is not None:
            try:
                self._reserver.drop(self._reserver.held(), self._bounded(end))
            except CoordinationError:
                logger.warning("%s: reservations go with the session's end", self._me)
        if self.owned():
            # Let the survivors' passes on the withdrawal run now, not
            # during the handover: on a busy host they would hold the CPU
            # while the clients wait for the successor's announcement.
            time.sleep(min(HANDOVER_SETTLE, max(0.0, end - time.monotonic())))
        handed = sorted(self.owned(), key=lambda v: v.key)
        for vip in handed:
            try:
                self._handover(vip, "shutting down", run_hooks=True, end=end)
            except (CoordinationError, VipError):
                logger.warning("release of %s failed; the session's end will do it", vip.key)
                self._kernel.remove(vip)
        if handed:
            # The teardown that follows is heavy (the fence's exit frees its
            # locked memory, the session's close notifies every node): on a
            # host shared with the successors, let them announce first.
            time.sleep(min(HANDOVER_SETTLE, max(0.0, end - time.monotonic())))

    def _zk_usable(self) -> bool:
        return self.coordinator.state is ConnectionState.CONNECTED and (
            self.coordinator.session_id is not None
        )

    def _bounded(self, end: float | None) -> Znodes:
        z = self.coordinator.znodes
        return z if end is None else z.bounded(max(0.05, end - time.monotonic()))

    def _withdraw(self, end: float | None = None) -> None:
        """Delete this node's declarations (it no longer offers to carry its VIPs)."""
        session = self.coordinator.session_id
        try:
            z = self._bounded(end)
            paths = [declared_path(key, self._me) for key in self._by_key]
            for path, node in z.get_many(paths).items():
                if node is not None and node.ephemeral_owner == session:
                    self._bounded(end).delete(path, version=node.version)
        except CoordinationError:
            return

    def reconcile_now(self, timeout: float = 10.0) -> PassResult:
        """Force a full pass (re-read, kernel check) and return what it did.

        Raises:
            TimeoutError: no full pass completed within ``timeout``.
        """
        assert self._loop is not None
        with self._lock:
            wanted = self._full_passes + 1
            self._full_read_due = True
        self._loop.kick()
        end = time.monotonic() + timeout
        while True:
            with self._lock:
                # A pass that started before our request may finish first: wait for the next.
                if self._full_passes > wanted or (
                    self._full_passes == wanted and not self._full_read_due
                ):
                    return self._last_full_result
            if time.monotonic() > end:
                raise TimeoutError("no full reconcile pass completed in time")
            self._loop.wait_passes(self._loop.passes + 1, 0.05)

    # --- event plumbing -------------------------------------------------------------

    def _emit(self, callbacks: list[VipCallback], vip: Vip) -> None:
        if self._events is not None:
            for cb in list(callbacks):
                self._events.post(cb, vip)

    def _step(self, step: str, at: float, count: int) -> None:
        if self._events is not None:
            for cb in list(self._steps):
                self._events.post(cb, step, at, count)

    def _on_fence_failure(self, reason: str) -> None:
        """The fence failed (feed thread): drop every address now, recover in a pass."""
        self._fence_failed = reason
        if self._kernel is not None:
            for vip in self._kernel.remove_all():
                logger.error("%s: no working fence (%s): removed %s", self._me, reason, vip.key)
                self._emit(self._release, vip)
        if self._loop is not None:
            self._loop.kick()

    def _owning_valid(self) -> bool:
        """Both leases run: the session's, and the beat's when beats are on."""
        return self.coordinator.lease_valid() and (self.beat is None or self.beat.valid())

    def _owning_deadline(self) -> float | None:
        if self.beat is None:
            return self.coordinator.lease_deadline()
        return earliest(self.coordinator.lease_deadline, self.beat.deadline)()

    def _kick_after(self, seconds: float) -> None:
        if self._loop is not None:
            self._loop.kick_after(seconds)

    def _on_fenced(self) -> None:
        """A survivor fenced this node (the beat thread, before it beats again).

        The fence deleted our claims: forget them before the beat lease can
        be valid again, so nothing is plumbed on a stale cache.
        """
        assert self._kernel is not None
        for vip in self._kernel.remove_all():
            logger.warning("%s: fenced: removed %s", self._me, vip.key)
            self._emit(self._release, vip)
        mine = self._my_claims()
        if self._reserver is not None:
            self._reserver.forget()  # the fence deleted them with the claims
        with self._lock:
            for key in mine:
                self._facts.know(key, None)
            self._full_read_due = True
        if self._loop is not None:
            self._loop.kick()

    def _fence_overdue(self, now: float) -> None:
        """Fence every node that holds claims and has not beaten for its budget (see _beat)."""
        if self._beats is None:
            return
        # A node's silence is noticed by time, not by an event: wake then.
        if (due := self._beats.next_due(now)) is not None:
            self._kick_after(due + 0.001)
        if not self._owning_valid():
            return
        for node, version in self._beats.overdue(now).items():
            if version is None:
                continue  # fenced already
            with self._lock:
                owners = self._facts.owners.items()
                keys = [k for k, c in owners if c is not None and c.node == node]
            reserved = sorted(self._beats.reserved(node, version) or ())
            if not keys and not reserved:
                continue
            paths = [owner_path(k) for k in keys]
            nexts = [next_path(a) for a in reserved]
            z = self.coordinator.znodes
            done = fence(z, self._me, node, version, paths, reservations=nexts)
            if not done and nexts:
                # Only a reservation deleted by hand can be listed and gone: fence
                # with those that exist, or the node could never be fenced.
                found = z.get_many(nexts)
                nexts = [p for p in nexts if found[p] is not None]
                done = fence(z, self._me, node, version, paths, reservations=nexts)
            if done:
                logger.warning(
                    "%s: fenced %s at beat version %d (silent for its budget): %s",
                    self._me,
                    node,
                    version,
                    keys,
                )
                with self._lock:
                    for key in keys:
                        self._facts.drop(key)
                self._step("silenced", now, len(keys))
            else:
                with self._lock:  # it beat again, or a claim went: look again
                    self._facts.dirty_owners.update(keys)

    def _my_claims(self) -> list[str]:
        """The keys whose claim the cache says this session holds."""
        session = self.coordinator.session_id
        with self._lock:
            return [
                k for k, c in self._facts.owners.items() if c is not None and c.session == session
            ]

    def _recover_fence(self) -> bool:
        """Release everything, restart the fence; True when it works again."""
        assert self._kernel is not None and self.fence is not None
        for vip in self._kernel.remove_all():
            self._emit(self._release, vip)
        mine = self._my_claims()
        for key in mine:
            # Claims go too: without a fence this node must not hold VIPs,
            # and a survivor should not wait for it.
            try:
                self._handover(self._by_key[key], "the fence failed", run_hooks=False)
            except CoordinationError:
                logger.warning("%s: could not release the claim of %s", self._me, key)
        try:
            self.fence.restart()
        except VipError as exc:
            logger.error("%s: the fence did not restart: %s", self._me, exc)
            return False
        logger.warning("%s: fence restarted after: %s", self._me, self._fence_failed)
        self._fence_failed = None
        return True

    def _on_lease(self, state: LeaseState) -> None:
        session = self.coordinator.session_id
        if state is LeaseState.EXPIRED and self._kernel is not None:
            for vip in self._kernel.remove_all():
                logger.warning("%s: lease expired: removed %s", self._me, vip.key)
                self._emit(self._release, vip)
            with self._lock:
                claims = self._facts.owners.values()
                held = any(c is not None and c.session == session for c in claims)
                self._aside.lapsed(session, held)
        elif state is LeaseState.VALID and self._owning_valid():
            with self._lock:
                aside = self._aside.lease_back(session, time.monotonic())
            if aside:
                logger.warning(
                    "%s: the lease lapsed while the session lived on: standing aside for %.0f s",
                    self._me,
                    self.lapse_holddown,
                )
        if self._loop is not None:
            self._loop.kick()

    def _stand_aside(self, now: float) -> None:
        """Start, keep or end standing aside (the converge thread; see ``_aside``)."""
        with self._lock:
            start = self._aside.take_start()
        if start:
            try:
                self._give_up_all()
            except CoordinationError:
                with self._lock:
                    self._aside.retry_start()
                raise  # the loop retries the pass
        with self._lock:
            if not self._aside.active(now):
                if self._aside.over(now):
                    logger.warning("%s: back after standing aside", self._me)
                    self._full_read_due = True  # declare again in this pass
                return
            unowned = [k for k in self._by_key if self._facts.owners.get(k) is None]
            limit = max(1.0, self.claim_step * (len(self._members) + 2))
            back = not start and self._aside.watch_unowned(unowned, now, limit)
            left = self._aside.left(now)
        if back:
            logger.warning("%s: back early: a VIP had no owner for %.1f s", self._me, limit)
            self._full_read_due = True  # re-declare and re-read now
        else:
            assert self._loop is not None
            self._loop.kick_after(min(left, limit))

    def _give_up_all(self) -> None:
        """Remove every address, then withdraw all declarations and claims in one transaction.

        One round trip, because a node that stands aside is usually short of
        CPU: survivors must not wait for a pass per VIP.
        """
        assert self._kernel is not None
        for vip in self._kernel.remove_all():
            self._emit(self._release, vip)
        mine = self._my_claims()
        # Our ephemerals while our session lives: nobody else's (see _handover).
        paths = [declared_path(k, self._me) for k in self._by_key]
        z = self.coordinator.znodes
        if self.beat is None:
            z.delete_all(paths + [owner_path(k) for k in mine])
        else:  # claims and reservations go with a beat (see _handover, _reserve)
            z.delete_all(paths)
            held = self.beat.reserved()
            own = [owner_path(k) for k in mine]  # read: the cache may predate a fence

            def ops(listed: frozenset[str]) -> list[Op]:
                claims: list[Op] = [Delete(path, 0) for path in own]
                return claims + [Delete(next_path(a), 0) for a in sorted(listed)]

            done = self.beat.write_with(z, ops, unreserve=held, own=own)
            if done and self._reserver is not None:
                self._reserver.forget()
        with self._lock:
            for key in mine:
                self._facts.know(key, None)
        logger.warning("%s: stood aside: released %s", self._me, ", ".join(mine) or "nothing")

    def _on_state(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED and self._loop is not None:
            with self._lock:
                self._full_read_due = True
            self._loop.kick()

    def _on_session(self, _session: int) -> None:
        with self._lock:
            self._full_read_due = True
            self._facts.owners = dict.fromkeys(self._facts.owners)
        if self._loop is not None:
            self._rewatch = True  # raw watches died with the old session
            self._loop.kick()

    def _on_view(self, view: ClusterView) -> None:
        self._view_changed = time.monotonic()
        with self._lock:
            # A member leaves when its session ends, and ZooKeeper deletes all
            # of a session's ephemerals together: its claims are gone too. Act
            # on that now instead of waiting for hundreds of watch events (a
            # claim that still exists just makes our create fail: safe).
            for key, claim in self._facts.owners.items():
                if claim is not None and claim.node not in view and claim.node != self._me:
                    self._facts.drop(key)
            names = frozenset(view.names)
            gone, self._members = self._members - names, names
        if gone:
            self._step("member-left", self._view_changed, len(gone))
        if self._loop is not None:
            self._loop.kick()

    def _watch(self) -> None:
        """Watch what placement depends on; events only mark keys dirty and kick."""
        z = self.coordinator.znodes
        assert self._loop is not None
        kick = self._loop.kick
        self._watch_claims()
        if self._beats is not None:
            self._beats.start(z)
        for key in self._by_key:

            def on_target(node: Znode | None, key: str = key) -> None:
                with self._lock:
                    target = node_from_json(node.data) if node is not None else None
                    if target is None:
                        self._targets.pop(key, None)
                    else:
                        self._targets[key] = target
                kick()

            z.watch_data(target_path(key), on_target)

        def on_drained(names: list[str]) -> None:
            with self._lock:
                self._drained = frozenset(names)
            kick()

        z.watch_children(drained_path(), on_drained)

    def _watch_claims(self) -> None:
        """Light watches on every claim and declaration list and on the member list.

        Applied to the caches straight from the events (see
        :func:`mhafail.vip._facts.watch_facts`); a claim's deletion also
        reaches the standby at once.
        """
        assert self._loop is not None and self._standby is not None
        watch_facts(
            self.coordinator.znodes,
            list(self._by_key),
            facts=self._facts,
            lock=self._lock,
            me=self._me,
            session=lambda: self.coordinator.session_id,
            changed=self._loop.kick,
            gone=self._claim_gone,
            members=self._note_members,
        )

    def _claim_gone(self, key: str) -> None:
        """A claim's deletion was notified (kazoo's event thread): note when; tell the standby."""
        self._claim_gone_at = time.monotonic()
        assert self._standby is not None
        if self._reserver is not None and key in self._reserver.held():
            return  # ours by the reservation: the reserver's own watch has it
        self._standby.gone(key)

    def _read_dirty(self) -> None:
        """Read what the watch events could not tell (see :mod:`mhafail.vip._facts`)."""
        read_dirty(self.coordinator.znodes, self._facts, self._lock, self._me)

    def _declare(self) -> None:
        """Make sure this node's declarations exist in its current session."""
        z = self.coordinator.znodes
        session = self.coordinator.session_id
        paths = {declared_path(k, self._me): v for k, v in self._by_key.items()}
        missing = []
        for path, znode in z.get_many(list(paths)).items():
            if znode is not None and znode.ephemeral_owner == session:
                continue
            if znode is not None:
                z.delete(path, version=znode.version)  # a stale one from our old session
            missing.append((path, _vip_json(paths[path])))
        if missing:
            z.create_many(missing, ephemeral=True, makepath=True)

    # --- the converge pass ------------------------------------------------------------

    def _read_all(self) -> None:
        """Re-read every fact placement depends on (pipelined: a few round trips)."""
        z = self.coordinator.znodes
        keys = list(self._by_key)
        with self._lock:  # this read supersedes what the watches marked, not what they applied
            self._facts.dirty_owners.clear()
            self._facts.dirty_declared.clear()
            since = self._facts.events
        owner_nodes = z.get_many([owner_path(k) for k in keys])
        target_nodes = z.get_many([target_path(k) for k in keys])
        lists = z.children_many([declared_path(k) for k in keys] + [MEMBERS])
        self._note_members(lists[MEMBERS])
        decl_paths = [
            declared_path(k, n)
            for k in keys
            for n in lists[declared_path(k)] or []
            if n != self._me
        ]
        declared: dict[str, dict[str, Vip]] = {k: {} for k in keys}
        read_declarations(z.get_many(decl_paths), declared)
        targets: dict[str, str] = {}
        for k in keys:
            target = target_nodes[target_path(k)]
            if target is not None and (name := node_from_json(target.data)) is not None:
                targets[k] = name
        drained = frozenset(z.children(drained_path()) or [])
        with self._lock:
            facts = self._facts
            for k in keys:
                facts.learn_read(k, claim_of(owner_nodes[owner_path(k)]), since)
                if facts.fresher(facts.declared_event, k, since):
                    declared[k] = facts.declared.get(k, {})
            facts.declared, self._targets = declared, targets
            self._drained = drained
            self._full_read_due = False
        self._last_full = time.monotonic()

    def _note_members(self, names: list[str] | None) -> None:
        """Remember which members of the view ZooKeeper no longer lists.

        A crashed node's member znode, claims and declarations vanish in
        one session expiry, but the membership view follows several round
        trips later; until then the survivors would count the dead node
        as live and have no room below their share for its VIPs (a mass
        takeover came in two waves, the second after the view). The member
        list's watch calls this as soon as the expiry is seen; the departed
        node's claims went with its session, so they are dropped from the
        cache at once (a claim that still exists just makes a create fail).
        """
        departed = frozenset(self.membership.view.names) - frozenset(names or [])
        with self._lock:
            new = departed - self._departed
            self._departed = departed
            for key, claim in self._facts.owners.items():
                if claim is not None and claim.node in new and claim.node != self._me:
                    self._facts.drop(key)
        if new:
            self._step("departed", time.monotonic(), len(new))

    def _snapshot(self) -> tuple[PlacementInput, tuple[str, ...]]:
        with self._lock:
            departed = self._departed
        live = frozenset(self.membership.view.names) - departed
        if self._beats is not None:  # silent or fenced: out until it beats again
            live -= frozenset(self._beats.overdue(time.monotonic()))
        with self._lock:
            vips: dict[str, Vip] = {}
            declared_by: dict[str, frozenset[str]] = {}
            contested: set[str] = set()
            for key, mine in self._by_key.items():
                decls = dict(self._facts.declared.get(key, {}))
                decls[self._me] = mine
                prefs = {d.preference for d in decls.values() if d.preference is not None}
                shapes = {(d.kind, d.binding, d.follow) for d in decls.values()}
                if len(prefs) > 1 or len(shapes) > 1:
                    contested.add(key)
                preference = next(iter(prefs)) if len(prefs) == 1 else None
                vips[key] = attrs.evolve(mine, preference=preference)
                declared_by[key] = frozenset(decls)
            owners = {k: c.node for k, c in self._facts.owners.items() if c is not None}
            # Standing aside, this node counts as drained in its own placement.
            aside = {self._me} if self._aside.active(time.monotonic()) else set()
            inp = PlacementInput(
                vips=vips,
                declared_by=declared_by,
                live=live | {self._me},
                drained=self._drained | aside,
                targets=dict(self._targets),
                owners=owners,
                contested=frozenset(contested),
            )
        return inp, tuple(sorted(contested))

    def _refresh(self, full: bool) -> tuple[list[str], list[str]]:
        """Bring the caches up to date; a full refresh also checks the kernel.

        Returns:
            (addresses re-added to the kernel, stray addresses removed).
        """
        assert self._kernel is not None
        with self._lock:
            aside = self._aside.active(time.monotonic())
        if self._rewatch:
            self._rewatch = False
            if not aside:
                self._declare()  # the watches on declaration lists need them to exist
            self._watch_claims()
            if self._beats is not None:
                self._beats.start(self.coordinator.znodes)
        if not full:
            self._read_dirty()
            return [], []
        if not aside:
            self._declare()
        self._read_all()
        readded, stray = self._kernel.verify(list(self._by_key.values()))
        for key in stray:
            logger.warning(
                "%s: removed %s: present in the kernel but not owned here", self._me, key
            )
        return readded, stray

    def _converge(self) -> None:
        if self._stopping or self._kernel is None:
            return
        if self.fence is not None and not self.fence.healthy() and not self._recover_fence():
            assert self._loop is not None
            self._loop.kick_after(1.0)
            return
        now = time.monotonic()
        self._stand_aside(now)
        full = self._full_read_due or now - self._last_full >= self.reconcile_interval
        readded, stray = self._refresh(full)
        self._fence_overdue(now)
        read_at = time.monotonic()
        inp, contested = self._snapshot()
        stable_for = now - self._view_changed
        rankings = rank(inp)
        # No rebalancing while claims are vanishing (a takeover): the standby's
        # wins come before the member list says their owner died, and a pass
        # that still counted it as live (a third each, not half) shed them
        # again: moves between the survivors in the middle of the takeover.
        # The notices count too: a re-arming read that already shows the
        # standby's new claim records no vanished claim at all.
        with self._lock:
            last_gone = max(self._facts.vanished.values(), default=self._claim_gone_at)
        settled_at = max(last_gone, self._claim_gone_at) + self.claim_step
        decisions = decide(
            self._me,
            inp,
            rankings,
            rebalance_allowed=self.rebalance.allows(stable_for) and now >= settled_at,
            claim_step=self.claim_step,
        )
        if now < settled_at:
            assert self._loop is not None
            self._loop.kick_after(settled_at - now)
        wait = self.rebalance.wait_left(stable_for)
        if wait is not None and any(r and r[0] != inp.owners.get(a) for a, r in rankings.items()):
            assert self._loop is not None
            self._loop.kick_after(wait)
        tally = _Tally(plumbed=list(readded))
        assert self._standby is not None
        successor_of = successions(self._me, inp, rankings)
        planned = self._standby.plan(successor_of)
        if self._reserver is not None:
            held_by_others = {a for a in successor_of if inp.owners.get(a) not in (None, self._me)}
            # A reservation of a VIP the cache shows unowned is about to make
            # this node its owner (the deletion notice may still be on its
            # way, e.g. right after this node fenced the owner): keep it.
            unowned = {a for a in self._reserver.held() if inp.owners.get(a) is None}
            wanted = frozenset(held_by_others | unowned)
            self._reserver.sync(wanted, self.coordinator.session_id, frozenset(unowned))
        to_claim, to_plumb = self._carry_out(decisions, now, tally, planned)
        decided_at = time.monotonic()
        won = self._claim(to_claim)
        if won:
            self._step("pass", now, len(won))  # when the pass that claimed them began
            self._step("read", read_at, len(won))  # its reads done
            self._step("decided", decided_at, len(won))  # placement done, claims sent
            self._step("claimed", time.monotonic(), len(won))
        tally.claimed += [vip.key for vip in won]
        tally.plumbed += self._plumb_many(to_plumb + won)
        self._last = PassResult(
            decisions=tuple(decisions.values()),
            claimed=tuple(tally.claimed),
            released=tuple(tally.released),
            plumbed=tuple(tally.plumbed),
            removed=tuple(stray),
            conflicts=contested,
        )
        if full:
            with self._lock:
                self._last_full_result = self._last
                self._full_passes += 1

    def _carry_out(
        self, decisions: dict[str, Decision], now: float, tally: _Tally, planned: frozenset[str]
    ) -> tuple[list[Vip], list[Vip]]:
        """Act on RELEASE and NONE now; return (VIPs to claim, VIPs to keep plumbed).

        A claim that went less than ``claim_step`` ago is left to its planned
        successor (``planned``: this node's plan before this pass): a pass
        that runs while a dead node's claims are still vanishing ranks on a
        half-updated cache and would take VIPs the successors are claiming,
        and the surplus would move again once the view settles.
        """
        assert self._standby is not None
        in_flight = self._standby.in_flight()  # the standby's claims, answered soon
        if self._reserver is not None:
            # Ours by reservation once unowned: the reserver takes those (a
            # claim would only meet our own reservation).
            in_flight |= self._reserver.held()
        with self._lock:
            vanished = dict(self._facts.vanished)
        to_claim, to_plumb = [], []
        for key, decision in decisions.items():
            vip = self._by_key[key]
            if decision.action is Action.HOLD:
                self._unclaimed_since.pop(key, None)
                to_plumb.append(vip)  # plumbed below, in one batch with the new claims
                continue
            if decision.action not in (Action.WAIT, Action.CLAIM):
                self._unclaimed_since.pop(key, None)
                self._act(vip, decision, tally)
                continue
            if decision.action is Action.WAIT:
                since = self._unclaimed_since.setdefault(key, now)
                if now - since < decision.delay:
                    assert self._loop is not None
                    self._loop.kick_after(since + decision.delay - now)
                    continue  # a better-ranked node has its turn first
            gone_at = vanished.get(key)
            if gone_at is not None and now - gone_at < self.claim_step and key not in planned:
                assert self._loop is not None
                self._loop.kick_after(gone_at + self.claim_step - now)
                continue  # its planned successor's turn
            self._unclaimed_since.pop(key, None)
            if key not in in_flight:
                to_claim.append(vip)
        return to_claim, to_plumb

    def _act(self, vip: Vip, decision: Decision, tally: _Tally) -> None:
        """Carry out a RELEASE or NONE decision, recording it in ``tally``."""
        assert self._kernel is not None
        if decision.action is Action.RELEASE:
            self._handover(vip, decision.reason, run_hooks=True)
            tally.released.append(vip.key)
        elif not self._holds(vip.key) and self._kernel.remove(vip):
            logger.warning("%s: removed %s: %s", self._me, vip.key, decision.reason)
            self._emit(self._release, vip)

    def _holds(self, key: str) -> bool:
        """Whether the cache says this session holds ``key``'s claim now (not the snapshot)."""
        with self._lock:
            claim = self._facts.owners.get(key)
        return (
            claim is not None
            and claim.node == self._me
            and (claim.session == self.coordinator.session_id)
        )

    def _standby_ready(self) -> Claim | None:
        """The claim the standby may send now, or None (kazoo's event thread: no waiting)."""
        session = self.coordinator.session_id
        if self._stopping or self._kernel is None or self._fence_failed is not None:
            return None
        if session is None or not self._owning_valid():
            return None
        if self.fence is not None and not self.fence.healthy():
            return None
        with self._lock:
            if self._aside.active(time.monotonic()):
                return None
        return Claim(node=self._me, session=session, since=time.time())

    def _standby_won(self, keys: list[str], claim: Claim, gone_at: float) -> None:
        """Plumb the claims the standby won, in one batch (the standby's thread)."""
        with self._lock:
            for key in keys:
                self._facts.know(key, claim)
        claimed_at = time.monotonic()
        try:
            self._plumb_many([self._by_key[k] for k in keys])
        finally:
            # Told only now: the event thread and the log would delay the plumbing.
            self._step("gone", gone_at, len(keys))
            self._step("claimed", claimed_at, len(keys))
            for key in keys:
                logger.info("%s: claimed %s (its owner let go)", self._me, key)
            if self._loop is not None:
                self._loop.kick()

    def _reserve_plumb(self, keys: list[str], claim: Claim) -> None:
        """Plumb the VIPs this node owns by its reservations (kazoo's thread for a lone
        one, else the reserver's; see _reserve). The claims follow in _reserve_done."""
        with self._lock:
            for key in keys:
                self._facts.taking.add(key)
                self._facts.know(key, claim)
        self._plumb_many([self._by_key[k] for k in keys])

    def _reserve_done(
        self, keys: list[str], claim: Claim, gone_at: float, claimed: list[str]
    ) -> None:
        """The reservations of ``keys`` became ``claimed`` claims; remove the rest (the
        reserver's thread)."""
        assert self._kernel is not None
        with self._lock:
            for key in keys:
                self._facts.taking.discard(key)
                self._facts.know(key, claim if key in claimed else None)
        for key in keys:
            if key not in claimed and self._kernel.remove(self._by_key[key]):
                # Our reservation went meanwhile (fenced): not ours after all.
                logger.warning("%s: removed %s: its reservation was gone", self._me, key)
                self._emit(self._release, self._by_key[key])
        self._step("gone", gone_at, len(keys))
        if claimed:
            self._step("claimed", time.monotonic(), len(claimed))
        for key in claimed:
            logger.info("%s: took %s by its reservation (its owner let go)", self._me, key)
        if self._loop is not None:
            self._loop.kick()

    def _plumb_many(self, vips: list[Vip]) -> list[str]:
        """Plumb the owned ones of ``vips`` in one batch; return the addresses newly added."""
        assert self._kernel is not None
        session = self.coordinator.session_id
        with self._lock:
            claims = {v.key: self._facts.owners.get(v.key) for v in vips}
        mine = [
            v
            for v in vips
            if (claim := claims[v.key]) is not None
            and claim.node == self._me
            and claim.session == session
        ]
        if not mine:
            return []
        refused: PlumbingError | None = None
        try:
            batches = [self._kernel.add_many(mine)]
        except PlumbingError as exc:
            if len(mine) == 1:
                raise
            # One refused address must not keep the others off the wire:
            # one at a time, then report the first refusal (the loop retries).
            logger.warning("%s: batch of %d refused (%s); one by one", self._me, len(mine), exc)
            batches = []
            for vip in mine:
                try:
                    batches.append(self._kernel.add_many([vip]))
                except PlumbingError as single:
                    refused = refused or single
        new = [vip for added in batches for vip in added.new]
        for vip in new:
            logger.info("%s: acquired %s", self._me, vip.key)
            self._emit(self._acquire, vip)
        for added in batches:
            for step, at in added.steps:
                self._step(step, at, len(added.new))
        if refused is not None:
            raise refused
        return [vip.key for vip in new]

    def _claim(self, vips: list[Vip]) -> list[Vip]:
        """Create the claims of ``vips`` (pipelined); return the ones this node now holds."""
        session = self.coordinator.session_id
        if not vips or session is None or not self._owning_valid():
            return []
        if self.fence is not None and not self.fence.healthy():
            return []  # no VIP without a working fence
        z = self.coordinator.znodes
        claim = Claim(node=self._me, session=session, since=time.time())
        with self._lock:
            since = self._facts.events
        outcomes = self._create_claims(z, vips, claim)
        created = {owner_path(v.key): done for v, done in zip(vips, outcomes, strict=True)}
        lost = [v for v in vips if not created[owner_path(v.key)]]
        existing = z.get_many([owner_path(v.key) for v in lost]) if lost else {}
        won = []
        for vip in vips:
            node = existing.get(owner_path(vip.key))
            # Already ours (a retry after a reconnect in the same session) counts as won.
            if created[owner_path(vip.key)] or (
                node is not None and node.ephemeral_owner == session
            ):
                won.append(vip)
                logger.info("%s: claimed %s", self._me, vip.key)
        with self._lock:
            for vip in won:
                self._facts.know(vip.key, claim)
            for vip in lost:
                if vip not in won:  # someone else's: learn whose, no re-read needed
                    found = claim_of(existing.get(owner_path(vip.key)))
                    self._facts.learn_read(vip.key, found, since)
        return won

    def _create_claims(self, z: Znodes, vips: list[Vip], claim: Claim) -> list[bool]:
        """Create the claims of ``vips``, pipelined, each only while nobody holds its
        reservation (see _reserve); True for each one created."""

        def tx(key: str) -> list[Op]:
            return claim_ops(key, claim)

        keys = [v.key for v in vips]
        created = dict(zip(keys, z.transact_many([tx(k) for k in keys]), strict=True))
        refused = [k for k in keys if not created[k]]
        if refused:
            # A claim or a reservation exists, or (the first time only) the
            # VIP's folder does not: create the missing folders, try again.
            folders = z.get_many([_folder(k) for k in refused])
            missing = [k for k in refused if folders[_folder(k)] is None]
            for key in missing:
                z.ensure(_folder(key))
            if missing:
                created.update(zip(missing, z.transact_many([tx(k) for k in missing]), strict=True))
        return [created[k] for k in keys]

    def _handover(
        self, vip: Vip, reason: str, *, run_hooks: bool, end: float | None = None
    ) -> None:
        assert self._kernel is not None
        logger.info("%s: releasing %s: %s", self._me, vip.key, reason)
        if run_hooks and vip.key in self._kernel.plumbed():
            self._run_pre_release(vip)
        kernel = self._kernel
        removal: list[tuple[bool, float]] = []

        def remove() -> None:
            removal.append((kernel.remove(vip), time.monotonic()))

        try:
            # With beats the address goes inside the release, after the read
            # that proves the claim ours (_release_claim): off the outage.
            self._release_claim(vip, end, before=remove)
        finally:
            if not removal:
                remove()
        removed, removed_at = removal[0]
        released_at = time.monotonic()
        with self._lock:
            self._facts.know(vip.key, None)
        # Told only now: waking the event thread earlier would delay the release.
        if removed:
            self._step("removed", removed_at, 1)
            self._emit(self._release, vip)
        self._step("released", released_at, 1)

    def _release_claim(
        self, vip: Vip, end: float | None, before: Callable[[], None] | None = None
    ) -> None:
        """Delete this session's claim of ``vip``; ``before()`` removes its address first
        (called once the claim is known to be ours, or before anything else)."""
        if before is not None and self.beat is None:
            before()
        session = self.coordinator.session_id
        with self._lock:
            cached = self._facts.owners.get(vip.key)
        z = self._bounded(end)
        if self.beat is not None:
            # With beats a claim goes with a beat (see _beat): a survivor's
            # fence prepared before it then fails instead of deleting a
            # claim someone else made since. The claim is read first
            # (``own``): our cache may predate a fence we have just heard
            # of, and the claim may be somebody else's by now.

            def ops(listed: frozenset[str]) -> list[Op]:
                out: list[Op] = [Delete(owner_path(vip.key), 0)]
                if vip.key in listed:  # ours twice (a stale plan): it must not come back
                    out.append(Delete(next_path(vip.key), 0))
                return out

            own = [owner_path(vip.key)]
            if not self.beat.write_with(z, ops, unreserve=[vip.key], own=own, before=before):
                logger.warning("%s: the claim of %s was not ours to delete", self._me, vip.key)
        elif cached is not None and cached.session == session:
            # An ephemeral znode of our live session cannot belong to anyone
            # else while it exists, and claims are never rewritten (version 0):
            # one round trip instead of a read and a delete.
            z.delete(owner_path(vip.key), version=0)
        else:
            node = z.get(owner_path(vip.key))
            if node is not None and node.ephemeral_owner == session:
                z.delete(owner_path(vip.key), version=node.version)

    def _run_pre_release(self, vip: Vip) -> None:
        for hook in list(self._pre_release):
            worker = threading.Thread(target=_guarded, args=(hook, vip), daemon=True)
            worker.start()
            worker.join(self.drain_timeout)
            if worker.is_alive():
                logger.warning(
                    "pre_release hook %r for %s overran %.1f s", hook, vip.key, self.drain_timeout
                )


def _guarded(hook: VipCallback, vip: Vip) -> None:
    try:
        hook(vip)
    except Exception:
        logger.exception("pre_release hook failed for %s", vip.key)


def _folder(key: str) -> str:
    """``vips/<address>``: the parent of a VIP's claim and reservation."""
    return owner_path(key).rpartition("/")[0]


def _key(address: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address


def _vip_json(vip: Vip) -> bytes:
    import json

    return json.dumps(vip.to_dict(), sort_keys=True).encode()
