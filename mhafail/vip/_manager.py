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

Where the code is: this module holds :class:`VipManager`, the public face
(life cycle, callbacks, and the handlers of the ZooKeeper, lease, beat and
fence events); the placement pass is in
:mod:`mhafail.vip._converge`; what is done to ZooKeeper and the kernel
(claim, plumb, hand over, give up, stand aside) in
:mod:`mhafail.vip._actions`; the state the three share in
:mod:`mhafail.vip._state`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import attrs

from mhafail.coordination import (
    ClusterView,
    ConnectionState,
    ConvergeLoop,
    Coordinator,
    Dispatcher,
    LeaseState,
    Membership,
    Znode,
)
from mhafail.errors import InvalidVipSpec
from mhafail.vip._actions import Actions
from mhafail.vip._aside import Aside
from mhafail.vip._beat import Beat, BeatWatch
from mhafail.vip._converge import ConvergePass
from mhafail.vip._facts import watch_facts
from mhafail.vip._fence import FenceProcess
from mhafail.vip._kernel import Kernel
from mhafail.vip._paths import drained_path, node_from_json, target_path
from mhafail.vip._plumber import Plumber
from mhafail.vip._policy import RebalancePolicy
from mhafail.vip._reserve import Reserver
from mhafail.vip._spec import Vip, VipKind, validate_vips
from mhafail.vip._standby import Standby
from mhafail.vip._state import ManagerState, PassResult, StepCallback, VipCallback

logger = logging.getLogger(__name__)


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

    Inside, three parts share one :class:`~mhafail.vip._state.ManagerState`:
    this class (life cycle, and the event handlers: watches only update the
    caches and kick the loop; a lapsed lease, a fence by a survivor or a
    failed fence process remove every address at once), the converge pass
    (:class:`~mhafail.vip._converge.ConvergePass`) and the actions that it,
    the standby, the reserver and :meth:`stop` take
    (:class:`~mhafail.vip._actions.Actions`).
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

    _state: ManagerState = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: ManagerState(aside=Aside(self.lapse_holddown)), takes_self=True
        ),
    )
    _actions: Actions = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(
            lambda self: Actions(
                coordinator=self.coordinator,
                beat=self.beat,
                fence=self.fence,
                drain_timeout=self.drain_timeout,
                claim_step=self.claim_step,
                state=self._state,
            ),
            takes_self=True,
        ),
    )
    _pass: ConvergePass = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(
            lambda self: ConvergePass(
                coordinator=self.coordinator,
                membership=self.membership,
                fence=self.fence,
                rebalance=self.rebalance,
                claim_step=self.claim_step,
                reconcile_interval=self.reconcile_interval,
                state=self._state,
                actions=self._actions,
                watch_claims=self._watch_claims,
            ),
            takes_self=True,
        ),
    )

    # --- application API ----------------------------------------------------------

    def on_acquire(self, callback: VipCallback) -> None:
        """Call ``callback(vip)`` after this node plumbed a VIP."""
        self._state.acquire.append(callback)

    def on_release(self, callback: VipCallback) -> None:
        """Call ``callback(vip)`` after this node removed a VIP."""
        self._state.release.append(callback)

    def pre_release(self, hook: VipCallback) -> None:
        """Run ``hook(vip)`` before a planned handover removes a VIP (drain connections).

        Runs on the manager's thread, bounded by ``drain_timeout``; not run
        when the lease expires (there is no time then).
        """
        self._state.pre_release.append(hook)

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
        self._state.steps.append(callback)

    def owned(self) -> frozenset[Vip]:
        """The VIPs this node holds now (claimed and plumbed)."""
        return self._state.owned()

    def owner_of(self, address: str) -> str | None:
        """The node holding the claim for ``address`` as last seen, or None."""
        with self._state.lock:
            claim = self._state.facts.owners.get(_key(address))
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
        return self._state.last

    # --- life cycle ---------------------------------------------------------------

    def start(self) -> VipManager:
        """Validate, remove stale addresses (clean slate), declare, and join.

        Raises:
            InvalidVipSpec: a VIP is refused (nothing was changed).
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        st, actions = self._state, self._actions
        if not 0 <= self.lapse_holddown < math.inf:
            raise InvalidVipSpec(
                f"lapse_holddown must be 0 or more seconds, not {self.lapse_holddown}"
            )
        st.me = self.membership.info.name
        st.members = frozenset(self.membership.view.names)
        # The plumber leaves out addresses it marked as its own (an earlier
        # agent's leftovers): they are not the host's, and go just below.
        host = self.plumber.interfaces() if self.validate_host else None
        st.by_key = {v.key: v for v in validate_vips(list(self.vips), host_addresses=host)}
        # Clean slate: nothing is ours before we claim.
        self.plumber.ensure_absent_many(list(st.by_key.values()))
        st.kernel = Kernel(
            self.plumber,
            actions.owning_valid,
            fence=self.fence,
            announce_schedule=self.announce_schedule,
            lease_deadline=actions.owning_deadline if self.kernel_lifetimes else None,
        )
        if self.fence is not None:
            self.fence.on_failure(self._on_fence_failure)
        st.events = Dispatcher(f"mhafail-vip-events-{st.me}")
        st.standby = Standby(
            lambda: self.coordinator.znodes,
            actions.standby_ready,
            actions.standby_won,
            lambda: st.loop.kick() if st.loop is not None else None,
            name=f"mhafail-vip-standby-{st.me}",
        )
        self.coordinator.add_lease_listener(self._on_lease)
        if self.beat is not None:
            self.beat.add_listener(self._on_lease)
            self.beat.on_fenced(self._on_fenced)
            st.beats = BeatWatch(st.me, st.kick_after)
            st.reserver = Reserver(
                lambda: self.coordinator.znodes,
                self.beat,
                actions.standby_ready,
                plumb=actions.reserve_plumb,
                done=actions.reserve_done,
                name=f"mhafail-vip-reserver-{st.me}",
            )
            self.beat.start()
        self.coordinator.add_state_listener(self._on_state)
        self.coordinator.add_session_listener(self._on_session)
        self.membership.add_listener(self._on_view)
        actions.declare()
        st.loop = ConvergeLoop(
            f"mhafail-vip-{st.me}", self._pass.run, period=self.reconcile_interval, retry=0.2
        )
        self._watch()
        st.loop.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop; with ``release`` hand every VIP over first (graceful shutdown).

        A graceful release removes each address, then deletes its claim, so
        the next owner can take it at once.
        """
        st = self._state
        if st.loop is None or st.stopping:
            return
        st.stopping = True
        if st.standby is not None:
            st.standby.stop()
        if st.reserver is not None:
            st.reserver.stop()  # its znodes go with the beat and the session
        # A pass blocked in a ZooKeeper call is not waited for: the kernel is
        # closed first, so whatever it does next cannot plumb anything.
        st.loop.stop(timeout=0.5)
        assert st.kernel is not None
        st.kernel.close()
        # Every ZooKeeper call on the way out is bounded: with ZooKeeper
        # unreachable, stop drops the addresses and gives up on the claims
        # (the session's end removes them) instead of waiting for kazoo.
        end = time.monotonic() + self.stop_timeout
        if release and self._zk_usable():
            self._actions.hand_over_all(end)
        for vip in st.kernel.remove_all():
            st.emit(st.release, vip)
        if self._zk_usable():
            self._actions.withdraw(end)
        st.kernel.stop()
        if st.beats is not None:
            st.beats.stop()
        if self.beat is not None:
            self.beat.stop()
        if self.fence is not None:
            self.fence.close()
        if st.events is not None:
            st.events.stop()

    def _zk_usable(self) -> bool:
        return self.coordinator.state is ConnectionState.CONNECTED and (
            self.coordinator.session_id is not None
        )

    def reconcile_now(self, timeout: float = 10.0) -> PassResult:
        """Force a full pass (re-read, kernel check) and return what it did.

        Raises:
            TimeoutError: no full pass completed within ``timeout``.
        """
        st = self._state
        assert st.loop is not None
        with st.lock:
            wanted = st.full_passes + 1
            st.full_read_due = True
        st.loop.kick()
        end = time.monotonic() + timeout
        while True:
            with st.lock:
                # A pass that started before our request may finish first: wait for the next.
                if st.full_passes > wanted or (st.full_passes == wanted and not st.full_read_due):
                    return st.last_full_result
            if time.monotonic() > end:
                raise TimeoutError("no full reconcile pass completed in time")
            st.loop.wait_passes(st.loop.passes + 1, 0.05)

    # --- fence, beat and lease events -----------------------------------------------

    def _on_fence_failure(self, reason: str) -> None:
        """The fence failed (feed thread): drop every address now, recover in a pass."""
        st = self._state
        st.fence_failed = reason
        if st.kernel is not None:
            for vip in st.kernel.remove_all():
                logger.error("%s: no working fence (%s): removed %s", st.me, reason, vip.key)
                st.emit(st.release, vip)
        if st.loop is not None:
            st.loop.kick()

    def _on_fenced(self) -> None:
        """A survivor fenced this node (the beat thread, before it beats again).

        The fence deleted our claims: forget them before the beat lease can
        be valid again, so nothing is plumbed on a stale cache.
        """
        st = self._state
        assert st.kernel is not None
        for vip in st.kernel.remove_all():
            logger.warning("%s: fenced: removed %s", st.me, vip.key)
            st.emit(st.release, vip)
        mine = self._actions.my_claims()
        if st.reserver is not None:
            st.reserver.forget()  # the fence deleted them with the claims
        with st.lock:
            for key in mine:
                st.facts.know(key, None)
            st.full_read_due = True
        if st.loop is not None:
            st.loop.kick()

    def _on_lease(self, state: LeaseState) -> None:
        st = self._state
        session = self.coordinator.session_id
        if state is LeaseState.EXPIRED and st.kernel is not None:
            for vip in st.kernel.remove_all():
                logger.warning("%s: lease expired: removed %s", st.me, vip.key)
                st.emit(st.release, vip)
            with st.lock:
                claims = st.facts.owners.values()
                held = any(c is not None and c.session == session for c in claims)
                st.aside.lapsed(session, held)
        elif state is LeaseState.VALID and self._actions.owning_valid():
            with st.lock:
                aside = st.aside.lease_back(session, time.monotonic())
            if aside:
                logger.warning(
                    "%s: the lease lapsed while the session lived on: standing aside for %.0f s",
                    st.me,
                    self.lapse_holddown,
                )
        if st.loop is not None:
            st.loop.kick()

    # --- ZooKeeper events -----------------------------------------------------------

    def _on_state(self, state: ConnectionState) -> None:
        st = self._state
        if state is ConnectionState.CONNECTED and st.loop is not None:
            with st.lock:
                st.full_read_due = True
            st.loop.kick()

    def _on_session(self, _session: int) -> None:
        st = self._state
        with st.lock:
            st.full_read_due = True
            st.facts.owners = dict.fromkeys(st.facts.owners)
        if st.loop is not None:
            st.rewatch = True  # raw watches died with the old session
            st.loop.kick()

    def _on_view(self, view: ClusterView) -> None:
        st = self._state
        st.view_changed = time.monotonic()
        with st.lock:
            # A member leaves when its session ends, and ZooKeeper deletes all
            # of a session's ephemerals together: its claims are gone too. Act
            # on that now instead of waiting for hundreds of watch events (a
            # claim that still exists just makes our create fail: safe).
            for key, claim in st.facts.owners.items():
                if claim is not None and claim.node not in view and claim.node != st.me:
                    st.facts.drop(key)
            names = frozenset(view.names)
            gone, st.members = st.members - names, names
        if gone:
            st.step("member-left", st.view_changed, len(gone))
        if st.loop is not None:
            st.loop.kick()

    def _watch(self) -> None:
        """Watch what placement depends on; events only mark keys dirty and kick."""
        st = self._state
        z = self.coordinator.znodes
        assert st.loop is not None
        kick = st.loop.kick
        self._watch_claims()
        if st.beats is not None:
            st.beats.start(z)
        for key in st.by_key:

            def on_target(node: Znode | None, key: str = key) -> None:
                with st.lock:
                    target = node_from_json(node.data) if node is not None else None
                    if target is None:
                        st.targets.pop(key, None)
                    else:
                        st.targets[key] = target
                kick()

            z.watch_data(target_path(key), on_target)

        def on_drained(names: list[str]) -> None:
            with st.lock:
                st.drained = frozenset(names)
            kick()

        z.watch_children(drained_path(), on_drained)

    def _watch_claims(self) -> None:
        """Light watches on every claim and declaration list and on the member list.

        Applied to the caches straight from the events (see
        :func:`mhafail.vip._facts.watch_facts`); a claim's deletion also
        reaches the standby at once.
        """
        st = self._state
        assert st.loop is not None and st.standby is not None
        watch_facts(
            self.coordinator.znodes,
            list(st.by_key),
            facts=st.facts,
            lock=st.lock,
            me=st.me,
            session=lambda: self.coordinator.session_id,
            changed=st.loop.kick,
            gone=self._claim_gone,
            members=self._pass.note_members,
        )

    def _claim_gone(self, key: str) -> None:
        """A claim's deletion was notified (kazoo's event thread): note when; tell the standby."""
        st = self._state
        st.claim_gone_at = time.monotonic()
        assert st.standby is not None
        if st.reserver is not None and key in st.reserver.held():
            return  # ours by the reservation: the reserver's own watch has it
        st.standby.gone(key)


def _key(address: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return address
