"""Beats: a failure detector for DuraVIP that need not wait for ZooKeeper's session expiry.

Without beats, survivors take a crashed owner's VIPs when ZooKeeper expires
its session: ``T`` after its last request, and its requests are frequent, so
about ``T`` after the crash. With beats (``VipManager(beat=Beat(...))``) a
node proves it is alive by rewriting its beat znode ``beats/<node>`` every
``budget / per_budget`` seconds, each write conditional on the version it
wrote last. Its *beat lease* runs ``budget - margin`` from the send time of
its latest answered write; its addresses are valid only while both its
session lease and its beat lease are (the kernel, the announcements, the
kernel lifetimes and the fence process all use the earlier deadline).

A survivor that has seen no new version of ``beats/<n>`` for
``budget x (1 + DRIFT) + SLACK`` since it saw the last one (``n``'s budget,
read from its beat) *fences* ``n`` in one transaction: check that the beat
is still at the version it saw, overwrite it with a fence marker (which
bumps its version), and delete ``n``'s claims. Each VIP's planned successor
claims it on the deletion notice, as after an expiry. Until ``n`` beats
again, every survivor leaves it out of placement.

Why that keeps one owner per VIP (safety rule 1 still holds, beats only add
a second lease the owner must hold):

* The survivor saw version ``v`` after ``n`` wrote it, so after ``n`` sent
  it. ``n``'s lease from ``v`` ends ``budget - margin`` after the send on
  ``n``'s clock; the survivor acts ``budget x (1 + DRIFT) + SLACK`` after a
  later instant on its own clock: the lease is over (clock rates differ by
  less than ``DRIFT``).
* The check fails if ``n`` wrote any later beat (its lease may be newer);
  the survivor then waits for that one to run out.
* A later beat of ``n`` still in flight meets the bumped version and fails,
  so ``n``'s lease never extends past the fence. That failure is how ``n``
  learns it was fenced: it forgets every claim it cached and removes its
  addresses before it beats again.
* ``n`` deletes its own claims (handover, standing aside) in a transaction
  that also rewrites its beat, so a survivor whose cache still shows such a
  claim as ``n``'s cannot delete the claim another node made since: its
  check fails.
* The other way round too: ``n`` reads a claim it is about to delete once
  it knows the beat version its transaction checks, and deletes it only if
  it is still an ephemeral of its session; a reservation it deletes only
  if its beat lists it at that version. A belief that a claim is its own
  may predate a fence ``n`` has only just heard of; once ``n`` has beaten
  again after that fence the version check passes, and claims are all at
  version 0, so without the read ``n`` would delete the claim the new
  owner made (found by the namespace lab: two owners).
* ``n``'s beat is ephemeral: the end of its session deletes it with its
  claims, and a fence prepared against it fails.
* ``n``'s beat lists its reservations (:mod:`mhafail.vip._reserve`): it
  makes and drops each in a transaction that rewrites its beat, so the
  list at a version is exactly the reservations ``n`` held then, and the
  fence deletes them with its claims. A reservation is a claim in waiting:
  a silent node must not keep one.

A node without a beat (beats off, or an older version) is never fenced:
its session expiry is its detector, as before.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import attrs

from mhafail._json import decode_object
from mhafail.coordination import (
    Coordinator,
    Delete,
    LeaseState,
    Op,
    SetData,
    Watch,
    Znode,
    Znodes,
    default_margin,
    oldest_proof,
)
from mhafail.errors import CoordinationError, InvalidArgument, InvalidVipSpec

logger = logging.getLogger(__name__)

BEATS = "beats"
DRIFT = 0.001
"""The largest difference of clock rates between two nodes (1000 ppm; NTP keeps it far lower)."""
SLACK = 0.005
"""Seconds a survivor adds to every wait: timer granularity only.

Safety does not rest on it: the survivor measures from when it saw a beat,
which is after the owner sent it, and the owner's lease ends ``margin``
before the budget from that send; the margin is what covers the owner's
fence process acting on its deadline. (It was 20 ms; every millisecond of
it is a millisecond of every failover.)"""
MIN_BUDGET = 0.1
MAX_BUDGET = 600.0
MAX_BEAT_BYTES = 64 * 1024
"""A beat with 1,500 reservations of IPv6 addresses still fits."""


def check_budget(budget: float) -> None:
    """Refuse a beat budget out of range.

    Raises:
        InvalidVipSpec: not ``MIN_BUDGET`` to ``MAX_BUDGET`` seconds.
    """
    if not MIN_BUDGET <= budget <= MAX_BUDGET or not math.isfinite(budget):
        raise InvalidVipSpec(f"beat budget must be {MIN_BUDGET} to {MAX_BUDGET} s, not {budget}")


def session_for(budget: float, tick: float | None = None) -> float:
    """The shortest session timeout (to 0.1 s) that never ends a lease before beats do.

    The session lease rests on heartbeat rounds, so it runs from a proof up
    to :func:`mhafail.coordination.oldest_proof` old; the beat lease runs
    ``budget - margin`` from the latest beat. With a session at least this
    long, an owner that is paused or cut off keeps its addresses until its
    beat deadline, the beat margin before survivors fence it; with a shorter
    one it may let go up to a heartbeat round earlier, and clients wait
    that much longer (safety is the same either way).

    Args:
        budget: the beat budget in seconds.
        tick: the ZooKeeper servers' tickTime in seconds, if known (else
            the largest a session allows is assumed, as the lease does).
    """
    check_budget(budget)
    if tick is not None and not 0 < tick <= MAX_BUDGET:
        raise InvalidVipSpec(f"tickTime must be positive seconds, not {tick}")
    need = budget - default_margin(budget)
    timeout = round(budget, 1)
    while timeout - default_margin(timeout) - oldest_proof(timeout, tick) < need:
        timeout = round(timeout + 0.1, 1)
    return timeout


def beat_path(node: str | None = None) -> str:
    """The beats folder, or one node's beat znode."""
    return BEATS if node is None else f"{BEATS}/{node}"


def overdue_after(budget: float) -> float:
    """Seconds of silence after which a survivor may fence a node of ``budget``."""
    return budget * (1 + DRIFT) + SLACK


@attrs.define(eq=False)
class Beat:
    """This node's beat and its beat lease (the owner's side).

    Attributes:
        coordinator: a started coordinator.
        node: this node's name.
        budget: the detection budget in seconds: survivors fence this node
            once they have seen no beat of it for this long (plus drift).
        per_budget: beats written per budget (2: one late write is tolerated;
            ZooKeeper loses no write, it only delays one).
        margin: seconds the lease ends before the budget (default:
            :func:`mhafail.coordination.default_margin` of the budget); it
            covers the fence process and the kernel acting on the deadline.
    """

    coordinator: Coordinator
    node: str
    budget: float
    per_budget: int = 2
    margin: float | None = None

    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _write: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _version: int | None = attrs.field(init=False, default=None)
    _reserved: frozenset[str] = attrs.field(init=False, default=frozenset())
    _reserved_in: int | None = attrs.field(init=False, default=None)  # their session
    _proof: float | None = attrs.field(init=False, default=None)
    _announced: LeaseState = attrs.field(init=False, default=LeaseState.EXPIRED)
    _listeners: list[Callable[[LeaseState], None]] = attrs.field(init=False, factory=list)
    _fenced: list[Callable[[], None]] = attrs.field(init=False, factory=list)
    _stop: threading.Event = attrs.field(init=False, factory=threading.Event)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)

    @property
    def interval(self) -> float:
        """Seconds between two beats."""
        return self.budget / self.per_budget

    @property
    def lease_margin(self) -> float:
        """The margin in force."""
        return default_margin(self.budget) if self.margin is None else self.margin

    def add_listener(self, listener: Callable[[LeaseState], None]) -> None:
        """Call ``listener(LeaseState)`` when the beat lease expires or is valid again."""
        self._listeners.append(listener)

    def on_fenced(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` when a survivor fenced this node (before it beats again)."""
        self._fenced.append(listener)

    def start(self) -> Beat:
        """Validate and start beating (a thread).

        Raises:
            InvalidVipSpec: the budget, beats per budget or margin are refused.
        """
        check_budget(self.budget)
        if not 2 <= self.per_budget <= 10:
            raise InvalidVipSpec(f"beats per budget must be 2 to 10, not {self.per_budget}")
        if not 0 <= self.lease_margin < self.budget / 2:
            raise InvalidVipSpec(f"beat margin must be 0 to half the budget, not {self.margin}")
        if self.coordinator.effective_timeout < (
            needed := session_for(self.budget, self.coordinator.server_tick)
        ):
            logger.warning(
                "%s: session timeout %.2f s is below %.1f s, the shortest that outlasts "
                "a beat budget of %.2f s: a paused or cut-off owner may let go up to a "
                "heartbeat round before survivors fence it (docs/vip.md, Beats)",
                self.node,
                self.coordinator.effective_timeout,
                needed,
                self.budget,
            )
        self._thread = threading.Thread(target=self._run, name=f"mhafail-beat-{self.node}")
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self, timeout: float = 1.0) -> None:
        """Stop beating and delete the beat (bounded by ``timeout``; else it goes with
        the session). Survivors then neither wait for it nor fence it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._set_proof(None)
        with self._write:
            version, self._version = self._version, None
        if version is not None:
            z = self.coordinator.znodes.bounded(timeout)
            with contextlib.suppress(CoordinationError):  # else its session's end deletes it
                z.delete(beat_path(self.node), version=version)

    def deadline(self) -> float | None:
        """Monotonic time the beat lease runs out, or None before any beat."""
        with self._lock:
            if self._proof is None:
                return None
            return self._proof + self.budget - self.lease_margin

    def valid(self) -> bool:
        """True while the beat lease runs."""
        deadline = self.deadline()
        return deadline is not None and time.monotonic() < deadline

    def reserved(self) -> frozenset[str]:
        """The reservations the beat lists now (see :mod:`mhafail.vip._reserve`)."""
        # Reservations are ephemerals: a new session means they are gone.
        if self._reserved_in != self.coordinator.session_id:
            return frozenset()
        return self._reserved

    def _carry(self, reserved: frozenset[str], session: int | None) -> None:
        """Record the reservation list the beat now carries, made in ``session`` (read
        before the write was sent: a session that changed since reads as gone)."""
        self._reserved = reserved
        self._reserved_in = session

    def write_with(
        self,
        znodes: Znodes,
        ops: Sequence[Op] | Callable[[frozenset[str]], Sequence[Op] | None],
        *,
        reserve: Iterable[str] = (),
        unreserve: Iterable[str] = (),
        own: Sequence[str] = (),
        before: Callable[[], object] | None = None,
    ) -> bool:
        """Run ``ops`` together with a beat, in one transaction: the owner's claim
        deletions, and reservations made (listed in ``reserve``) and dropped or
        claimed (``unreserve``); the beat's list changes with them.

        Args:
            znodes: where to write.
            ops: the operations to run with the beat, or a function of the
                reservations the beat lists now (exactly this node's at the
                version the transaction checks: a fence empties the list)
                giving them, None to write nothing. A reservation deletion
                must be built from that list: a list read before the write
                lock may predate a fence, after which somebody else may
                have reserved the VIP again.
            reserve: reservations ``ops`` make.
            unreserve: reservations ``ops`` drop or claim.
            own: claims ``ops`` delete as this node's own. They are read once
                the beat version this write checks is known, and a ``Delete``
                of one that is not an ephemeral of this session is left out.
                A node's belief that a claim is its own may predate a fence
                it has only just heard of, after which somebody else may have
                claimed again (claims are all at version 0): the version
                check alone cannot tell once the beat was written again after
                the fence. Read after the version, the claims are seen after
                any fence that version follows; a later fence fails the
                transaction.
            before: called after that read, right before the transaction (a
                handover removes the address here, so the read is not part
                of the clients' outage).

        Returns:
            True when done. False when this node's beat was fenced (or is
            not written yet), one of ``ops`` was refused, or there was
            nothing of ours to change: nothing happened, and a fence is
            handled.
        """
        with self._write:
            version = self._version
            if version is None:
                return False
            session = self.coordinator.session_id
            held = self.reserved()
            todo = ops(held) if callable(ops) else list(ops)
            if todo is None:
                return False
            if own:
                read = znodes.get_many(list(own))
                foreign = {
                    path
                    for path in own
                    if (znode := read.get(path)) is None or znode.ephemeral_owner != session
                }
                todo = [op for op in todo if not (isinstance(op, Delete) and op.path in foreign)]
            if before is not None:
                before()
            listed = (held | frozenset(reserve)) - frozenset(unreserve)
            if not todo and listed == held:
                return False  # nothing of ours to change
            sent = time.monotonic()
            data = self._data(listed)
            done = znodes.transact([*todo, SetData(beat_path(self.node), data, version)])
            if done:
                self._carry(listed, session)
                self._wrote(version + 1, sent)
                return True
            # Failed on our beat (fenced), or on one of ``ops`` (a claim gone already)?
            found = znodes.get(beat_path(self.node))
            moved = found is None or found.version != version
            if moved and not self._adopt_own(znodes):
                self._was_fenced()
            return False

    # --- the beat thread ---------------------------------------------------------

    def _data(self, reserved: frozenset[str] | None = None) -> bytes:
        doc: dict[str, object] = {"node": self.node, "budget": self.budget}
        listed = self.reserved() if reserved is None else reserved
        if listed:
            doc["reserved"] = sorted(listed)
        return json.dumps(doc).encode()

    def _run(self) -> None:
        next_beat = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + self.interval
                # Bounded by the lease: a write that hangs (ZooKeeper cut off)
                # must not keep this thread from announcing the expiry.
                deadline = self.deadline()
                limit = self.interval if deadline is None else min(self.interval, deadline - now)
                try:
                    self._beat_once(max(0.01, limit))
                except CoordinationError as exc:
                    logger.warning("%s: beat failed: %s", self.node, exc)
            deadline = self.deadline()
            if deadline is not None and time.monotonic() >= deadline:
                self._set_proof(None)  # announces EXPIRED
                deadline = None
            waits = [next_beat - time.monotonic()]
            if deadline is not None:
                waits.append(deadline - time.monotonic())
            self._stop.wait(max(0.0, min(waits)))

    def _beat_once(self, limit: float) -> None:
        z = self.coordinator.znodes.bounded(limit)
        if not self._write.acquire(timeout=limit):
            return  # a claim deletion is writing the beat right now
        try:
            if self._version is None and not self._establish(z):
                return
            assert self._version is not None
            sent = time.monotonic()
            node = z.set(beat_path(self.node), self._data(), version=self._version)
            if node is not None:
                self._wrote(node.version, sent)
            elif not self._adopt_own(z):
                self._was_fenced()
        finally:
            self._write.release()

    def _adopt_own(self, z: Znodes) -> bool:
        """After a failed write: True when the beat is still ours (an earlier write that
        timed out was carried out later); its version is taken, without a proof."""
        found = z.get(beat_path(self.node))
        if (
            found is None
            or found.ephemeral_owner != self.coordinator.session_id
            or beat_budget(found.data, self.node) is None
        ):
            return False
        self._version = found.version
        self._carry(beat_reserved(found.data) or frozenset(), found.ephemeral_owner)
        return True

    def _establish(self, z: Znodes) -> bool:
        """Find or create this session's beat znode (write lock held); True when ready."""
        session = self.coordinator.session_id
        if session is None:
            return False
        path = beat_path(self.node)
        found = z.get(path)
        if found is not None and found.ephemeral_owner != session:
            # Ours by name, from an old session that has not ended yet.
            z.delete(path, version=found.version)
            found = None
        if found is None:
            if z.create(path, self._data(), ephemeral=True, makepath=True) is None:
                return False  # someone was faster: look again next time
            found = z.get(path)
            if found is None or found.ephemeral_owner != session:
                return False
        self._version = found.version
        # A fence marker lists nothing: the fence deleted them.
        self._carry(beat_reserved(found.data) or frozenset(), found.ephemeral_owner)
        return True

    def _wrote(self, version: int, sent: float) -> None:
        self._version = version
        self._set_proof(sent)

    def _was_fenced(self) -> None:
        """A write met another version, or no beat: fenced (or the session changed)."""
        self._version = None
        self._carry(frozenset(), None)  # the fence deleted them with the claims
        self._set_proof(None)
        logger.warning("%s: the beat was fenced (or its session ended): claims are gone", self.node)
        for listener in list(self._fenced):
            try:
                listener()
            except Exception:
                logger.exception("beat fenced listener failed")

    def _set_proof(self, sent: float | None) -> None:
        with self._lock:
            if sent is not None and self._proof is not None and sent <= self._proof:
                return
            self._proof = sent
            state = LeaseState.VALID if sent is not None else LeaseState.EXPIRED
            if state is self._announced:
                return
            self._announced = state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                logger.exception("beat lease listener failed")


@attrs.frozen
class Seen:
    """One node's beat as a survivor last saw it change.

    Attributes:
        version: the beat's version.
        at: monotonic time it was seen (after the write: later is safer).
        budget: the node's budget; None when the beat is unreadable (the
            node is then never fenced, as a node without a beat).
        fenced: the beat holds a fence marker: the node is fenced until it
            beats again.
        reserved: the reservations the beat lists.
    """

    version: int
    at: float
    budget: float | None
    fenced: bool = False
    reserved: frozenset[str] = frozenset()


@attrs.define(eq=False)
class BeatWatch:
    """What this node has seen of the other nodes' beats (the survivors' side).

    Attributes:
        me: this node's name (its own beat is not watched).
        changed: called with the seconds after which some node may be
            overdue (the caller kicks its loop then).
    """

    me: str
    changed: Callable[[float], None]
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _seen: dict[str, Seen] = attrs.field(init=False, factory=dict)
    _watches: dict[str, Watch] = attrs.field(init=False, factory=dict)
    _list: Watch | None = attrs.field(init=False, default=None)

    def start(self, znodes: Znodes) -> None:
        """Watch ``beats/`` and every other node's beat (again after a new session)."""
        self.stop()
        znodes.ensure(BEATS)
        self._list = znodes.watch_children(BEATS, lambda names: self._on_list(znodes, names))

    def stop(self) -> None:
        """Cancel every watch."""
        with self._lock:
            watches = [*self._watches.values(), *([self._list] if self._list else [])]
            self._watches.clear()
            self._list = None
        for watch in watches:
            watch.cancel()

    def _on_list(self, znodes: Znodes, names: list[str]) -> None:
        with self._lock:
            gone = [n for n in self._watches if n not in names]
            new = [n for n in names if n != self.me and n not in self._watches]
            for name in gone:
                self._watches.pop(name).cancel()
                self._seen.pop(name, None)
        for name in new:
            watch = znodes.watch_data(beat_path(name), functools.partial(self._on_beat, name))
            with self._lock:
                self._watches[name] = watch

    def _on_beat(self, node: str, znode: Znode | None) -> None:
        now = time.monotonic()
        with self._lock:
            if znode is None:
                self._seen.pop(node, None)
                return
            old = self._seen.get(node)
            if old is not None and old.version == znode.version:
                return  # seen already: keep the earlier time (a re-armed watch)
            budget = beat_budget(znode.data, node)
            fenced = budget is None and is_fence_marker(znode.data)
            reserved = beat_reserved(znode.data) or frozenset()
            self._seen[node] = Seen(znode.version, now, budget, fenced, reserved)
        if budget is not None:
            self.changed(overdue_after(budget))

    def next_due(self, now: float) -> float | None:
        """Seconds until the next node becomes overdue (None: no node is pending)."""
        with self._lock:
            seen = list(self._seen.values())
        waits = [
            s.at + overdue_after(s.budget) - now
            for s in seen
            if not s.fenced and s.budget is not None and s.at + overdue_after(s.budget) > now
        ]
        return min(waits) if waits else None

    def reserved(self, node: str, version: int) -> frozenset[str] | None:
        """The reservations ``node``'s beat listed at ``version`` (None: not that version)."""
        with self._lock:
            seen = self._seen.get(node)
        return seen.reserved if seen is not None and seen.version == version else None

    def overdue(self, now: float) -> dict[str, int | None]:
        """Nodes with no beat for their budget: name -> version to fence (None: fenced already)."""
        with self._lock:
            seen = dict(self._seen)
        out: dict[str, int | None] = {}
        for node, s in seen.items():
            if s.fenced:
                out[node] = None
            elif s.budget is not None and now - s.at >= overdue_after(s.budget):
                out[node] = s.version
        return out


def beat_budget(data: bytes, node: str) -> float | None:
    """The budget a node's beat declares, or None (a fence marker, or malformed).

    A beat whose reservation list is malformed reads as malformed as a
    whole: its node is then never fenced, since its reservations could not
    be deleted with its claims (as a node without a beat).
    """
    try:
        raw = decode_object(data, what="beat", max_bytes=MAX_BEAT_BYTES)
    except InvalidArgument:
        return None
    budget = raw.get("budget")
    if raw.get("node") != node or isinstance(budget, bool) or not isinstance(budget, int | float):
        return None
    if _reserved_field(raw) is None:
        return None
    value = float(budget)
    return value if MIN_BUDGET <= value <= MAX_BUDGET else None


def beat_reserved(data: bytes) -> frozenset[str] | None:
    """The reservations a beat lists (empty for a fence marker), or None when malformed."""
    try:
        raw = decode_object(data, what="beat", max_bytes=MAX_BEAT_BYTES)
    except InvalidArgument:
        return None
    return _reserved_field(raw)


def _reserved_field(raw: dict[str, object]) -> frozenset[str] | None:
    listed = raw.get("reserved", [])
    if not isinstance(listed, list):
        return None
    out = set()
    for item in listed:
        if not isinstance(item, str) or len(item) > 64:
            return None
        try:
            if str(ipaddress.ip_address(item)) != item:
                return None  # VIP keys are canonical addresses
        except ValueError:
            return None
        out.add(item)
    return frozenset(out)


def fence_marker(by: str) -> bytes:
    """What a survivor writes into a beat it fences."""
    return json.dumps({"fenced_by": by, "time": time.time()}).encode()


def is_fence_marker(data: bytes) -> bool:
    """Whether a beat holds a fence marker (written by :func:`fence_marker`)."""
    try:
        raw = decode_object(data, what="beat", max_bytes=512)
    except InvalidArgument:
        return False
    return isinstance(raw.get("fenced_by"), str)


def fence(
    znodes: Znodes,
    me: str,
    node: str,
    version: int,
    claims: Sequence[str],
    *,
    reservations: Sequence[str] = (),
) -> bool:
    """Fence ``node``: bump its beat from ``version`` and delete its ``claims`` and
    ``reservations`` (znode paths; the latter as its beat listed them at
    ``version``), all at once.

    Returns:
        True when done; False when its beat changed (it beat again, or its
        session ended) or a claim was gone: nothing happened then.
    """
    ops: list[Op] = [SetData(beat_path(node), fence_marker(me), version)]
    # Claims and reservations are never rewritten: version 0.
    ops += [Delete(path, 0) for path in [*claims, *reservations]]
    return znodes.transact(ops)


def earliest(*deadlines: Callable[[], float | None]) -> Callable[[], float | None]:
    """A deadline function giving the earliest of ``deadlines`` (None if any is None).

    For the fence process and the kernel: a node owns its VIPs while both
    its session lease and its beat lease run.
    """

    def deadline() -> float | None:
        values = [d() for d in deadlines]
        if any(v is None for v in values):
            return None
        return min(v for v in values if v is not None)

    return deadline
