"""The converge pass: read, decide placement, act; run by the manager's converge loop.

Every pass (safety rule 2 of docs/architecture.md, liveness) recomputes
placement from the caches; watch events only update the caches and kick
the loop. A pass, in order:

1. restarts a failed fence (else tries again in a second), then starts,
   keeps or ends standing aside (:mod:`mhafail.vip._aside`);
2. refreshes the caches: the dirty keys only, or, when a full read is due
   (a reconnect, a new session, every ``reconcile_interval``), everything,
   declaring again and checking the kernel;
3. fences silent owners when beats are on (:mod:`mhafail.vip._beat`);
4. ranks and decides (:mod:`mhafail.vip._placement`), plans the standby and
   syncs the reservations for the VIPs this node is the successor of;
5. carries out the decisions through :class:`~mhafail.vip._actions.Actions`:
   releases and removals now, then the claims, then one plumbing batch,
   and records a :class:`~mhafail.vip._state.PassResult`.

All of it runs on the converge thread; the shared caches are read and
written under ``state.lock`` (never held across a ZooKeeper call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import attrs

from mhafail.coordination import Coordinator, Membership
from mhafail.vip._actions import Actions
from mhafail.vip._beat import fence
from mhafail.vip._facts import claim_of, read_declarations, read_dirty
from mhafail.vip._fence import FenceProcess
from mhafail.vip._paths import (
    declared_path,
    drained_path,
    next_path,
    node_from_json,
    owner_path,
    target_path,
)
from mhafail.vip._placement import Action, Decision, PlacementInput, decide, rank, successions
from mhafail.vip._policy import RebalancePolicy
from mhafail.vip._spec import Vip
from mhafail.vip._state import ManagerState, PassResult

logger = logging.getLogger(__name__)

MEMBERS = "members"  # Membership's folder (mhafail.coordination), read with the claims


@attrs.define
class _Tally:
    claimed: list[str] = attrs.field(factory=list)
    released: list[str] = attrs.field(factory=list)
    plumbed: list[str] = attrs.field(factory=list)


@attrs.define(kw_only=True, eq=False)
class ConvergePass:
    """One node's placement pass (see the module docstring); :meth:`run` is one pass.

    Args:
        coordinator: the manager's coordinator.
        membership: the manager's membership.
        fence: the manager's fence process, or None.
        rebalance: when VIPs move back to a better-ranked node.
        claim_step: seconds each rank waits behind the previous one.
        reconcile_interval: seconds between full re-reads and kernel checks.
        state: the manager's shared state.
        actions: what carries the decisions out.
        watch_claims: registers the claim, declaration and member watches
            again (after a new session; the manager's wiring).
    """

    coordinator: Coordinator
    membership: Membership
    fence: FenceProcess | None
    rebalance: RebalancePolicy
    claim_step: float
    reconcile_interval: float
    state: ManagerState
    actions: Actions
    watch_claims: Callable[[], None] = attrs.field(repr=False)
    _last_full: float = attrs.field(init=False, default=0.0)
    _unclaimed_since: dict[str, float] = attrs.field(init=False, factory=dict)

    def run(self) -> None:
        """One converge pass (the converge thread)."""
        st = self.state
        if st.stopping or st.kernel is None:
            return
        if self.fence is not None and not self.fence.healthy() and not self.actions.recover_fence():
            assert st.loop is not None
            st.loop.kick_after(1.0)
            return
        now = time.monotonic()
        self.actions.stand_aside(now)
        full = st.full_read_due or now - self._last_full >= self.reconcile_interval
        readded, stray = self._refresh(full)
        self._fence_overdue(now)
        read_at = time.monotonic()
        inp, contested = self._snapshot()
        stable_for = now - st.view_changed
        rankings = rank(inp)
        # No rebalancing while claims are vanishing (a takeover): the standby's
        # wins come before the member list says their owner died, and a pass
        # that still counted it as live (a third each, not half) shed them
        # again: moves between the survivors in the middle of the takeover.
        # The notices count too: a re-arming read that already shows the
        # standby's new claim records no vanished claim at all.
        with st.lock:
            last_gone = max(st.facts.vanished.values(), default=st.claim_gone_at)
        settled_at = max(last_gone, st.claim_gone_at) + self.claim_step
        decisions = decide(
            st.me,
            inp,
            rankings,
            rebalance_allowed=self.rebalance.allows(stable_for) and now >= settled_at,
            claim_step=self.claim_step,
        )
        if now < settled_at:
            assert st.loop is not None
            st.loop.kick_after(settled_at - now)
        wait = self.rebalance.wait_left(stable_for)
        if wait is not None and any(r and r[0] != inp.owners.get(a) for a, r in rankings.items()):
            assert st.loop is not None
            st.loop.kick_after(wait)
        tally = _Tally(plumbed=list(readded))
        assert st.standby is not None
        successor_of = successions(st.me, inp, rankings)
        planned = st.standby.plan(successor_of)
        if st.reserver is not None:
            held_by_others = {a for a in successor_of if inp.owners.get(a) not in (None, st.me)}
            # A reservation of a VIP the cache shows unowned is about to make
            # this node its owner (the deletion notice may still be on its
            # way, e.g. right after this node fenced the owner): keep it.
            unowned = {a for a in st.reserver.held() if inp.owners.get(a) is None}
            wanted = frozenset(held_by_others | unowned)
            st.reserver.sync(wanted, self.coordinator.session_id, frozenset(unowned))
        to_claim, to_plumb = self._carry_out(decisions, now, tally, planned)
        decided_at = time.monotonic()
        won = self.actions.claim(to_claim)
        if won:
            st.step("pass", now, len(won))  # when the pass that claimed them began
            st.step("read", read_at, len(won))  # its reads done
            st.step("decided", decided_at, len(won))  # placement done, claims sent
            st.step("claimed", time.monotonic(), len(won))
        tally.claimed += [vip.key for vip in won]
        tally.plumbed += self.actions.plumb_many(to_plumb + won)
        st.last = PassResult(
            decisions=tuple(decisions.values()),
            claimed=tuple(tally.claimed),
            released=tuple(tally.released),
            plumbed=tuple(tally.plumbed),
            removed=tuple(stray),
            conflicts=contested,
        )
        if full:
            with st.lock:
                st.last_full_result = st.last
                st.full_passes += 1

    # --- reading ---------------------------------------------------------------------

    def _refresh(self, full: bool) -> tuple[list[str], list[str]]:
        """Bring the caches up to date; a full refresh also checks the kernel.

        Returns:
            (addresses re-added to the kernel, stray addresses removed).
        """
        st = self.state
        assert st.kernel is not None
        with st.lock:
            aside = st.aside.active(time.monotonic())
        if st.rewatch:
            st.rewatch = False
            if not aside:
                self.actions.declare()  # the watches on declaration lists need them to exist
            self.watch_claims()
            if st.beats is not None:
                st.beats.start(self.coordinator.znodes)
        if not full:
            self._read_dirty()
            return [], []
        if not aside:
            self.actions.declare()
        self._read_all()
        readded, stray = st.kernel.verify(list(st.by_key.values()))
        for key in stray:
            logger.warning("%s: removed %s: present in the kernel but not owned here", st.me, key)
        return readded, stray

    def _read_dirty(self) -> None:
        """Read what the watch events could not tell (see :mod:`mhafail.vip._facts`)."""
        st = self.state
        read_dirty(self.coordinator.znodes, st.facts, st.lock, st.me)

    def _read_all(self) -> None:
        """Re-read every fact placement depends on (pipelined: a few round trips)."""
        st = self.state
        z = self.coordinator.znodes
        keys = list(st.by_key)
        with st.lock:  # this read supersedes what the watches marked, not what they applied
            st.facts.dirty_owners.clear()
            st.facts.dirty_declared.clear()
            since = st.facts.events
        owner_nodes = z.get_many([owner_path(k) for k in keys])
        target_nodes = z.get_many([target_path(k) for k in keys])
        lists = z.children_many([declared_path(k) for k in keys] + [MEMBERS])
        self.note_members(lists[MEMBERS])
        decl_paths = [
            declared_path(k, n) for k in keys for n in lists[declared_path(k)] or [] if n != st.me
        ]
        declared: dict[str, dict[str, Vip]] = {k: {} for k in keys}
        read_declarations(z.get_many(decl_paths), declared)
        targets: dict[str, str] = {}
        for k in keys:
            target = target_nodes[target_path(k)]
            if target is not None and (name := node_from_json(target.data)) is not None:
                targets[k] = name
        drained = frozenset(z.children(drained_path()) or [])
        with st.lock:
            facts = st.facts
            for k in keys:
                facts.learn_read(k, claim_of(owner_nodes[owner_path(k)]), since)
                if facts.fresher(facts.declared_event, k, since):
                    declared[k] = facts.declared.get(k, {})
            facts.declared, st.targets = declared, targets
            st.drained = drained
            st.full_read_due = False
        self._last_full = time.monotonic()

    def note_members(self, names: list[str] | None) -> None:
        """Remember which members of the view ZooKeeper no longer lists.

        A crashed node's member znode, claims and declarations vanish in
        one session expiry, but the membership view follows several round
        trips later; until then the survivors would count the dead node
        as live and have no room below their share for its VIPs (a mass
        takeover came in two waves, the second after the view). The member
        list's watch calls this as soon as the expiry is seen, and so does
        a full read; the departed node's claims
        went with its session, so they are dropped from the cache at once
        (a claim that still exists just makes a create fail).
        """
        st = self.state
        departed = frozenset(self.membership.view.names) - frozenset(names or [])
        with st.lock:
            new = departed - st.departed
            st.departed = departed
            for key, claim in st.facts.owners.items():
                if claim is not None and claim.node in new and claim.node != st.me:
                    st.facts.drop(key)
        if new:
            st.step("departed", time.monotonic(), len(new))

    def _fence_overdue(self, now: float) -> None:
        """Fence every node that holds claims and has not beaten for its budget (see _beat)."""
        st = self.state
        if st.beats is None:
            return
        # A node's silence is noticed by time, not by an event: wake then.
        if (due := st.beats.next_due(now)) is not None:
            st.kick_after(due + 0.001)
        if not self.actions.owning_valid():
            return
        for node, version in st.beats.overdue(now).items():
            if version is None:
                continue  # fenced already
            with st.lock:
                owners = st.facts.owners.items()
                keys = [k for k, c in owners if c is not None and c.node == node]
            reserved = sorted(st.beats.reserved(node, version) or ())
            if not keys and not reserved:
                continue
            paths = [owner_path(k) for k in keys]
            nexts = [next_path(a) for a in reserved]
            z = self.coordinator.znodes
            done = fence(z, st.me, node, version, paths, reservations=nexts)
            if not done and nexts:
                # Only a reservation deleted by hand can be listed and gone: fence
                # with those that exist, or the node could never be fenced.
                found = z.get_many(nexts)
                nexts = [p for p in nexts if found[p] is not None]
                done = fence(z, st.me, node, version, paths, reservations=nexts)
            if done:
                logger.warning(
                    "%s: fenced %s at beat version %d (silent for its budget): %s",
                    st.me,
                    node,
                    version,
                    keys,
                )
                with st.lock:
                    for key in keys:
                        st.facts.drop(key)
                st.step("silenced", now, len(keys))
            else:
                with st.lock:  # it beat again, or a claim went: look again
                    st.facts.dirty_owners.update(keys)

    # --- deciding and acting ------------------------------------------------------------

    def _snapshot(self) -> tuple[PlacementInput, tuple[str, ...]]:
        st = self.state
        with st.lock:
            departed = st.departed
        live = frozenset(self.membership.view.names) - departed
        if st.beats is not None:  # silent or fenced: out until it beats again
            live -= frozenset(st.beats.overdue(time.monotonic()))
        with st.lock:
            vips: dict[str, Vip] = {}
            declared_by: dict[str, frozenset[str]] = {}
            contested: set[str] = set()
            for key, mine in st.by_key.items():
                decls = dict(st.facts.declared.get(key, {}))
                decls[st.me] = mine
                prefs = {d.preference for d in decls.values() if d.preference is not None}
                shapes = {(d.kind, d.binding, d.follow) for d in decls.values()}
                if len(prefs) > 1 or len(shapes) > 1:
                    contested.add(key)
                preference = next(iter(prefs)) if len(prefs) == 1 else None
                vips[key] = attrs.evolve(mine, preference=preference)
                declared_by[key] = frozenset(decls)
            owners = {k: c.node for k, c in st.facts.owners.items() if c is not None}
            # Standing aside, this node counts as drained in its own placement.
            aside = {st.me} if st.aside.active(time.monotonic()) else set()
            inp = PlacementInput(
                vips=vips,
                declared_by=declared_by,
                live=live | {st.me},
                drained=st.drained | aside,
                targets=dict(st.targets),
                owners=owners,
                contested=frozenset(contested),
            )
        return inp, tuple(sorted(contested))

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
        st = self.state
        assert st.standby is not None
        in_flight = st.standby.in_flight()  # the standby's claims, answered soon
        if st.reserver is not None:
            # Ours by reservation once unowned: the reserver takes those (a
            # claim would only meet our own reservation).
            in_flight |= st.reserver.held()
        with st.lock:
            vanished = dict(st.facts.vanished)
        to_claim, to_plumb = [], []
        for key, decision in decisions.items():
            vip = st.by_key[key]
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
                    assert st.loop is not None
                    st.loop.kick_after(since + decision.delay - now)
                    continue  # a better-ranked node has its turn first
            gone_at = vanished.get(key)
            if gone_at is not None and now - gone_at < self.claim_step and key not in planned:
                assert st.loop is not None
                st.loop.kick_after(gone_at + self.claim_step - now)
                continue  # its planned successor's turn
            self._unclaimed_since.pop(key, None)
            if key not in in_flight:
                to_claim.append(vip)
        return to_claim, to_plumb

    def _act(self, vip: Vip, decision: Decision, tally: _Tally) -> None:
        """Carry out a RELEASE or NONE decision, recording it in ``tally``."""
        st = self.state
        assert st.kernel is not None
        if decision.action is Action.RELEASE:
            self.actions.handover(vip, decision.reason, run_hooks=True)
            tally.released.append(vip.key)
        elif not self._holds(vip.key) and st.kernel.remove(vip):
            logger.warning("%s: removed %s: %s", st.me, vip.key, decision.reason)
            st.emit(st.release, vip)

    def _holds(self, key: str) -> bool:
        """Whether the cache says this session holds ``key``'s claim now (not the snapshot)."""
        st = self.state
        with st.lock:
            claim = st.facts.owners.get(key)
        return (
            claim is not None
            and claim.node == st.me
            and (claim.session == self.coordinator.session_id)
        )
