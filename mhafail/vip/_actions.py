"""What the VIP manager does to ZooKeeper and the kernel: claim, plumb, let go.

The converge pass (:mod:`mhafail.vip._converge`) decides and these carry
its decisions out; the standby's and the reserver's callbacks, the lease
events and a graceful stop use them too. Each keeps the safety rules'
order (see :mod:`mhafail.vip._manager`):

* :meth:`Actions.claim` creates claims only in a live session, while the
  leases are valid and the fence works; :meth:`Actions.plumb_many` adds
  only the addresses whose claim the cache shows in this session, through
  the kernel, which checks the leases again and tells the fence first;
* :meth:`Actions.handover` runs the ``pre_release`` hooks, removes the
  address, and only then deletes the claim (:meth:`Actions.give_up_all`
  and :meth:`Actions.recover_fence` likewise remove every address before
  any claim goes);
* :meth:`Actions.standby_ready` gives the standby and the reserver a claim
  only under the conditions :meth:`Actions.claim` checks, and only while
  the node is not stopping nor standing aside; what they win is plumbed by
  :meth:`Actions.standby_won` and :meth:`Actions.reserve_plumb` through
  :meth:`Actions.plumb_many` like any other claim.

Threads: the converge thread calls most of these; :meth:`Actions.hand_over_all`
runs in :meth:`VipManager.stop`; the callbacks run on kazoo's, the
standby's and the reserver's threads. The shared caches are read and
written under ``state.lock``, never held across a ZooKeeper or netlink call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import attrs

from mhafail.coordination import Coordinator, Delete, Op, Znodes
from mhafail.errors import CoordinationError, PlumbingError, VipError
from mhafail.vip._beat import Beat, earliest
from mhafail.vip._facts import claim_of
from mhafail.vip._fence import FenceProcess
from mhafail.vip._paths import Claim, declared_path, next_path, owner_path
from mhafail.vip._reserve import claim_ops
from mhafail.vip._spec import Vip
from mhafail.vip._state import ManagerState, VipCallback

logger = logging.getLogger(__name__)

HANDOVER_SETTLE = 0.05
"""Seconds a graceful stop waits after its withdrawal, and after its handovers."""


@attrs.define(kw_only=True, eq=False)
class Actions:
    """Claims, plumbs, hands over and gives up this node's VIPs (see the module docstring).

    Args:
        coordinator: the manager's coordinator.
        beat: the manager's beat, or None.
        fence: the manager's fence process, or None.
        drain_timeout: the longest a ``pre_release`` hook may run.
        claim_step: seconds each rank waits behind the previous one.
        state: the manager's shared state.
    """

    coordinator: Coordinator
    beat: Beat | None
    fence: FenceProcess | None
    drain_timeout: float
    claim_step: float
    state: ManagerState

    # --- the leases and this node's znodes ------------------------------------------

    def owning_valid(self) -> bool:
        """Both leases run: the session's, and the beat's when beats are on."""
        return self.coordinator.lease_valid() and (self.beat is None or self.beat.valid())

    def owning_deadline(self) -> float | None:
        """The earlier of the two leases' deadlines (see ``Coordinator.lease_deadline``)."""
        if self.beat is None:
            return self.coordinator.lease_deadline()
        return earliest(self.coordinator.lease_deadline, self.beat.deadline)()

    def my_claims(self) -> list[str]:
        """The keys whose claim the cache says this session holds."""
        st = self.state
        session = self.coordinator.session_id
        with st.lock:
            return [k for k, c in st.facts.owners.items() if c is not None and c.session == session]

    def bounded(self, end: float | None) -> Znodes:
        """The znodes, with every call bounded to end by ``end`` when given."""
        z = self.coordinator.znodes
        return z if end is None else z.bounded(max(0.05, end - time.monotonic()))

    def declare(self) -> None:
        """Make sure this node's declarations exist in its current session."""
        st = self.state
        z = self.coordinator.znodes
        session = self.coordinator.session_id
        paths = {declared_path(k, st.me): v for k, v in st.by_key.items()}
        missing = []
        for path, znode in z.get_many(list(paths)).items():
            if znode is not None and znode.ephemeral_owner == session:
                continue
            if znode is not None:
                z.delete(path, version=znode.version)  # a stale one from our old session
            missing.append((path, _vip_json(paths[path])))
        if missing:
            z.create_many(missing, ephemeral=True, makepath=True)

    def withdraw(self, end: float | None = None) -> None:
        """Delete this node's declarations (it no longer offers to carry its VIPs)."""
        st = self.state
        session = self.coordinator.session_id
        try:
            z = self.bounded(end)
            paths = [declared_path(key, st.me) for key in st.by_key]
            for path, node in z.get_many(paths).items():
                if node is not None and node.ephemeral_owner == session:
                    self.bounded(end).delete(path, version=node.version)
        except CoordinationError:
            return

    # --- the standby's and the reserver's callbacks ---------------------------------

    def standby_ready(self) -> Claim | None:
        """The claim the standby may send now, or None (kazoo's event thread: no waiting)."""
        st = self.state
        session = self.coordinator.session_id
        if st.stopping or st.kernel is None or st.fence_failed is not None:
            return None
        if session is None or not self.owning_valid():
            return None
        if self.fence is not None and not self.fence.healthy():
            return None
        with st.lock:
            if st.aside.active(time.monotonic()):
                return None
        return Claim(node=st.me, session=session, since=time.time())

    def standby_won(self, keys: list[str], claim: Claim, gone_at: float) -> None:
        """Plumb the claims the standby won, in one batch (the standby's thread)."""
        st = self.state
        with st.lock:
            for key in keys:
                st.facts.know(key, claim)
        claimed_at = time.monotonic()
        try:
            self.plumb_many([st.by_key[k] for k in keys])
        finally:
            # Told only now: the event thread and the log would delay the plumbing.
            st.step("gone", gone_at, len(keys))
            st.step("claimed", claimed_at, len(keys))
            for key in keys:
                logger.info("%s: claimed %s (its owner let go)", st.me, key)
            if st.loop is not None:
                st.loop.kick()

    def reserve_plumb(self, keys: list[str], claim: Claim) -> None:
        """Plumb the VIPs this node owns by its reservations (kazoo's thread for a lone
        one, else the reserver's; see _reserve). The claims follow in reserve_done."""
        st = self.state
        with st.lock:
            for key in keys:
                st.facts.taking.add(key)
                st.facts.know(key, claim)
        self.plumb_many([st.by_key[k] for k in keys])

    def reserve_done(
        self, keys: list[str], claim: Claim, gone_at: float, claimed: list[str]
    ) -> None:
        """The reservations of ``keys`` became ``claimed`` claims; remove the rest (the
        reserver's thread)."""
        st = self.state
        assert st.kernel is not None
        with st.lock:
            for key in keys:
                st.facts.taking.discard(key)
                st.facts.know(key, claim if key in claimed else None)
        for key in keys:
            if key not in claimed and st.kernel.remove(st.by_key[key]):
                # Our reservation went meanwhile (fenced): not ours after all.
                logger.warning("%s: removed %s: its reservation was gone", st.me, key)
                st.emit(st.release, st.by_key[key])
        st.step("gone", gone_at, len(keys))
        if claimed:
            st.step("claimed", time.monotonic(), len(claimed))
        for key in claimed:
            logger.info("%s: took %s by its reservation (its owner let go)", st.me, key)
        if st.loop is not None:
            st.loop.kick()

    # --- claim and plumb ------------------------------------------------------------

    def plumb_many(self, vips: list[Vip]) -> list[str]:
        """Plumb the owned ones of ``vips`` in one batch; return the addresses newly added."""
        st = self.state
        assert st.kernel is not None
        session = self.coordinator.session_id
        with st.lock:
            claims = {v.key: st.facts.owners.get(v.key) for v in vips}
        mine = [
            v
            for v in vips
            if (claim := claims[v.key]) is not None
            and claim.node == st.me
            and claim.session == session
        ]
        if not mine:
            return []
        refused: PlumbingError | None = None
        try:
            batches = [st.kernel.add_many(mine)]
        except PlumbingError as exc:
            if len(mine) == 1:
                raise
            # One refused address must not keep the others off the wire:
            # one at a time, then report the first refusal (the loop retries).
            logger.warning("%s: batch of %d refused (%s); one by one", st.me, len(mine), exc)
            batches = []
            for vip in mine:
                try:
                    batches.append(st.kernel.add_many([vip]))
                except PlumbingError as single:
                    refused = refused or single
        new = [vip for added in batches for vip in added.new]
        for vip in new:
            logger.info("%s: acquired %s", st.me, vip.key)
            st.emit(st.acquire, vip)
        for added in batches:
            for step, at in added.steps:
                st.step(step, at, len(added.new))
        if refused is not None:
            raise refused
        return [vip.key for vip in new]

    def claim(self, vips: list[Vip]) -> list[Vip]:
        """Create the claims of ``vips`` (pipelined); return the ones this node now holds."""
        st = self.state
        session = self.coordinator.session_id
        if not vips or session is None or not self.owning_valid():
            return []
        if self.fence is not None and not self.fence.healthy():
            return []  # no VIP without a working fence
        z = self.coordinator.znodes
        claim = Claim(node=st.me, session=session, since=time.time())
        with st.lock:
            since = st.facts.events
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
                logger.info("%s: claimed %s", st.me, vip.key)
        with st.lock:
            for vip in won:
                st.facts.know(vip.key, claim)
            for vip in lost:
                if vip not in won:  # someone else's: learn whose, no re-read needed
                    found = claim_of(existing.get(owner_path(vip.key)))
                    st.facts.learn_read(vip.key, found, since)
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

    # --- letting go -----------------------------------------------------------------

    def handover(self, vip: Vip, reason: str, *, run_hooks: bool, end: float | None = None) -> None:
        """Hand ``vip`` over: run the hooks (``run_hooks``), remove the address, then
        delete the claim (every ZooKeeper call bounded by ``end`` when given).

        With beats the address goes inside the release, after the read that
        proves the claim ours and right before the transaction that deletes it.
        """
        st = self.state
        assert st.kernel is not None
        logger.info("%s: releasing %s: %s", st.me, vip.key, reason)
        if run_hooks and vip.key in st.kernel.plumbed():
            self._run_pre_release(vip)
        kernel = st.kernel
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
        with st.lock:
            st.facts.know(vip.key, None)
        # Told only now: waking the event thread earlier would delay the release.
        if removed:
            st.step("removed", removed_at, 1)
            st.emit(st.release, vip)
        st.step("released", released_at, 1)

    def _release_claim(
        self, vip: Vip, end: float | None, before: Callable[[], None] | None = None
    ) -> None:
        """Delete this session's claim of ``vip``; ``before()`` removes its address first
        (called once the claim is known to be ours, or before anything else)."""
        if before is not None and self.beat is None:
            before()
        st = self.state
        session = self.coordinator.session_id
        with st.lock:
            cached = st.facts.owners.get(vip.key)
        z = self.bounded(end)
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
                logger.warning("%s: the claim of %s was not ours to delete", st.me, vip.key)
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
        for hook in list(self.state.pre_release):
            worker = threading.Thread(target=_guarded, args=(hook, vip), daemon=True)
            worker.start()
            worker.join(self.drain_timeout)
            if worker.is_alive():
                logger.warning(
                    "pre_release hook %r for %s overran %.1f s", hook, vip.key, self.drain_timeout
                )

    def hand_over_all(self, end: float) -> None:
        """A graceful stop's releases: withdraw, drop reservations, hand every VIP over."""
        st = self.state
        assert st.kernel is not None
        # Withdraw first, so that no survivor ranks this node first and
        # waits for it to claim again; reservations go too, or a VIP whose
        # owner lets go meanwhile would wait for this session's end.
        self.withdraw(end)
        if st.reserver is not None:
            try:
                st.reserver.drop(st.reserver.held(), self.bounded(end))
            except CoordinationError:
                logger.warning("%s: reservations go with the session's end", st.me)
        if st.owned():
            # Let the survivors' passes on the withdrawal run now, not
            # during the handover: on a busy host they would hold the CPU
            # while the clients wait for the successor's announcement.
            time.sleep(min(HANDOVER_SETTLE, max(0.0, end - time.monotonic())))
        handed = sorted(st.owned(), key=lambda v: v.key)
        for vip in handed:
            try:
                self.handover(vip, "shutting down", run_hooks=True, end=end)
            except (CoordinationError, VipError):
                logger.warning("release of %s failed; the session's end will do it", vip.key)
                st.kernel.remove(vip)
        if handed:
            # The teardown that follows is heavy (the fence's exit frees its
            # locked memory, the session's close notifies every node): on a
            # host shared with the successors, let them announce first.
            time.sleep(min(HANDOVER_SETTLE, max(0.0, end - time.monotonic())))

    def recover_fence(self) -> bool:
        """Release everything, restart the fence; True when it works again."""
        st = self.state
        assert st.kernel is not None and self.fence is not None
        for vip in st.kernel.remove_all():
            st.emit(st.release, vip)
        mine = self.my_claims()
        for key in mine:
            # Claims go too: without a fence this node must not hold VIPs,
            # and a survivor should not wait for it.
            try:
                self.handover(st.by_key[key], "the fence failed", run_hooks=False)
            except CoordinationError:
                logger.warning("%s: could not release the claim of %s", st.me, key)
        try:
            self.fence.restart()
        except VipError as exc:
            logger.error("%s: the fence did not restart: %s", st.me, exc)
            return False
        logger.warning("%s: fence restarted after: %s", st.me, st.fence_failed)
        st.fence_failed = None
        return True

    # --- standing aside (see _aside) ------------------------------------------------

    def stand_aside(self, now: float) -> None:
        """Start, keep or end standing aside (the converge thread; see ``_aside``)."""
        st = self.state
        with st.lock:
            start = st.aside.take_start()
        if start:
            try:
                self.give_up_all()
            except CoordinationError:
                with st.lock:
                    st.aside.retry_start()
                raise  # the loop retries the pass
        with st.lock:
            if not st.aside.active(now):
                if st.aside.over(now):
                    logger.warning("%s: back after standing aside", st.me)
                    st.full_read_due = True  # declare again in this pass
                return
            unowned = [k for k in st.by_key if st.facts.owners.get(k) is None]
            limit = max(1.0, self.claim_step * (len(st.members) + 2))
            back = not start and st.aside.watch_unowned(unowned, now, limit)
            left = st.aside.left(now)
        if back:
            logger.warning("%s: back early: a VIP had no owner for %.1f s", st.me, limit)
            st.full_read_due = True  # re-declare and re-read now
        else:
            assert st.loop is not None
            st.loop.kick_after(min(left, limit))

    def give_up_all(self) -> None:
        """Remove every address, then withdraw all declarations and claims in one transaction.

        One round trip, because a node that stands aside is usually short of
        CPU: survivors must not wait for a pass per VIP.
        """
        st = self.state
        assert st.kernel is not None
        for vip in st.kernel.remove_all():
            st.emit(st.release, vip)
        mine = self.my_claims()
        # Our ephemerals while our session lives: nobody else's (see handover).
        paths = [declared_path(k, st.me) for k in st.by_key]
        z = self.coordinator.znodes
        if self.beat is None:
            z.delete_all(paths + [owner_path(k) for k in mine])
        else:  # claims and reservations go with a beat (see handover, _reserve)
            z.delete_all(paths)
            held = self.beat.reserved()
            own = [owner_path(k) for k in mine]  # read: the cache may predate a fence

            def ops(listed: frozenset[str]) -> list[Op]:
                claims: list[Op] = [Delete(path, 0) for path in own]
                return claims + [Delete(next_path(a), 0) for a in sorted(listed)]

            done = self.beat.write_with(z, ops, unreserve=held, own=own)
            if done and st.reserver is not None:
                st.reserver.forget()
        with st.lock:
            for key in mine:
                st.facts.know(key, None)
        logger.warning("%s: stood aside: released %s", st.me, ", ".join(mine) or "nothing")


def _guarded(hook: VipCallback, vip: Vip) -> None:
    try:
        hook(vip)
    except Exception:
        logger.exception("pre_release hook failed for %s", vip.key)


def _folder(key: str) -> str:
    """``vips/<address>``: the parent of a VIP's claim and reservation."""
    return owner_path(key).rpartition("/")[0]


def _vip_json(vip: Vip) -> bytes:
    import json

    return json.dumps(vip.to_dict(), sort_keys=True).encode()
