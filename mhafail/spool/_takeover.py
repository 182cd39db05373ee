"""Takeover: survivors import the spool of a node that is gone, exactly once.

The protocol, run by every node's :class:`Takeover` (a ConvergeLoop kicked
by the membership view, the list of spools, every other spool's lock znode,
the operator orders, and a timer that only repairs a missed watch):

1. A spool needs a takeover when it holds messages (or an unfinished
   import) and nobody holds its ZooKeeper lock, and either its node has
   been gone from the membership for ``grace`` seconds, or an operator
   ordered it (``spool import``, ``spool drain``: no grace).
2. Survivors rank themselves for it by rendezvous hashing
   (``_placement.py``); rank ``p`` waits ``p * step`` seconds.
3. One survivor creates the spool's ZooKeeper lock (purpose
   ``takeover``); the zxid is its token, higher than the dead node's. Only
   one can; the others see it held and leave it.
4. It claims the spool's lock file with that token (an exclusive OFD lock:
   the dead holder, if only frozen, can change nothing afterwards), finishes
   any interrupted import (``_journal.py``), takes the spool's commit log
   over by renaming it into its own (``CommitLog.adopt``: what the node
   acknowledged last, with no file made per message), and moves the filed
   messages into its own spool in batches, by rename, journalled. Its own
   spool's fence and the source's are both checked for every step.
5. It records the takeover complete and drops the lock.

Killed midway, its lock vanishes with its session and another survivor
resumes from what is left: renames make every message be in exactly one
spool at every instant, so there is neither loss nor duplicate. The node
itself, returning, waits for the lock (held during the import) and starts
on what is left; its old process, if it was only frozen, is fenced by the
token in the lock file.
"""

from __future__ import annotations

import enum
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from mhafail.coordination import ConvergeLoop, Coordinator, Membership, Watch
from mhafail.errors import CoordinationError, MalformedData, SpoolError, SpoolFenced
from mhafail.spool._fence import FileFence
from mhafail.spool._files import MSG, STATE_SUFFIX
from mhafail.spool._journal import Journal, read_journal, resolve
from mhafail.spool._lock import LockState, SpoolLock, drop_lock, take_lock
from mhafail.spool._message import Message, check_id
from mhafail.spool._paths import NODES, NodePaths, node_names
from mhafail.spool._placement import rank
from mhafail.spool._spool import Spool, count_messages
from mhafail.spool._wal import pending as wal_pending
from mhafail.spool._znodes import (
    OPS,
    SPOOL,
    LockHolder,
    Order,
    TakeoverRecord,
    lock_path,
    order_path,
    parse_order,
    parse_takeover,
    takeover_path,
)

logger = logging.getLogger(__name__)


class EventKind(enum.Enum):
    """What a :class:`TakeoverEvent` reports."""

    STARTED = "started"  # we hold a spool by takeover and begin moving
    BATCH = "batch"  # one batch moved
    COMPLETE = "complete"  # the spool is empty; the lock dropped
    FAILED = "failed"  # the takeover stopped (fenced, I/O); another may resume
    DRAINED = "drained"  # an operator drained this node: its lock was released


@attrs.frozen
class TakeoverEvent:
    """One step of a takeover (for logs, tests and the application)."""

    kind: EventKind
    node: str
    token: int = 0
    moved: int = 0
    detail: str = ""


def _ids(spool: os.PathLike[str]) -> list[str]:
    names = os.listdir(os.path.join(spool, MSG))
    out = []
    for name in names:
        if name.endswith(STATE_SUFFIX):
            continue
        try:
            out.append(check_id(name))
        except ValueError:
            logger.warning("spool %s: ignoring a file that is not a message: %r", spool, name)
    return sorted(out)


@attrs.define(kw_only=True, eq=False)
class Takeover:
    """Takes over the spools of nodes that are gone, into this node's spool.

    Args:
        coordinator: a started coordinator.
        membership: a started membership (who is alive).
        paths: this node's paths (the shared root and cluster come from it).
        spool: this node's open spool (messages are moved into it).
        lock: this node's spool lock (released when an operator drains us).
        grace: seconds a node must be gone before its spool is taken.
        step: seconds each placement rank waits behind the one before.
        batch: messages per journalled batch.
        refresh: seconds between passes when nothing happens (a repair: every
            change that can make a takeover due kicks a pass by a watch).
        on_import: called with each imported message after its batch is
            durable (an application hook: logging, re-routing with
            ``defer``); exceptions are logged, never undo the import.
        stop_timeout: bound on :meth:`stop`.
    """

    coordinator: Coordinator
    membership: Membership
    paths: NodePaths
    spool: Spool
    lock: SpoolLock
    grace: float = 10.0
    step: float = 1.0
    batch: int = 1000
    refresh: float = 2.0
    on_import: Callable[[Message], None] | None = None
    stop_timeout: float = 2.0

    _loop: ConvergeLoop | None = attrs.field(init=False, default=None)
    _gone_since: dict[str, float] = attrs.field(init=False, factory=dict)
    _orders_seen: dict[tuple[str, int], float] = attrs.field(init=False, factory=dict)
    _listeners: list[Callable[[TakeoverEvent], None]] = attrs.field(init=False, factory=list)
    _watches: list[Watch] = attrs.field(init=False, factory=list)
    _lock_watches: dict[str, Watch] = attrs.field(init=False, factory=dict)
    _watch_session: int | None = attrs.field(init=False, default=None)
    _watch_guard: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _stopping: threading.Event = attrs.field(init=False, factory=threading.Event)

    def add_listener(self, listener: Callable[[TakeoverEvent], None]) -> None:
        """Call ``listener(event)`` for every takeover event (on the takeover thread)."""
        self._listeners.append(listener)

    def start(self) -> Takeover:
        """Start watching and taking over."""
        me = self.paths.node
        self._loop = ConvergeLoop(f"mhafail-takeover-{me}", self._converge, period=self.refresh)
        self.membership.add_listener(self._loop.kick)
        self.coordinator.add_session_listener(self._loop.kick)
        self.coordinator.znodes.ensure(SPOOL)
        self._loop.start()
        self._watch(())
        return self

    def stop(self) -> None:
        """Stop after the current batch (bounded by ``stop_timeout``)."""
        self._stopping.set()
        self._unwatch()
        if self._loop is not None:
            self._loop.stop(timeout=self.stop_timeout)

    def kick(self) -> None:
        """Ask for a pass now."""
        if self._loop is not None:
            self._loop.kick()

    # --- watches ---------------------------------------------------------------

    def _watch(self, nodes: Iterable[str]) -> None:
        """Kick a pass on any change of the folders or of ``nodes``' lock znodes.

        A spool's lock znode (``spool/<node>/lock``) is below the watched
        child list of ``spool``: its deletion changes neither that list nor
        the membership when its node had left the membership before the
        lock went (a node stopping in that order, a partition that ends the
        session later, a takeover that failed and dropped the lock). Without
        a watch of its own a survivor heard of it only at its next periodic
        pass, up to ``refresh`` seconds later (2 s of a 3 s benchmark
        takeover, docs/benchmarks.md). Watches end with their session: all
        are placed again under a new one.
        """
        loop, znodes = self._loop, self.coordinator.znodes
        session = self.coordinator.session_id
        with self._watch_guard:
            # Under the guard: stop() sets _stopping before it cancels under it.
            if loop is None or self._stopping.is_set():
                return
            if session is not None and session != self._watch_session:
                self._cancel_locked()
                self._watch_session = session
                for path in (SPOOL, OPS):
                    self._watches.append(znodes.watch_changes(path, loop.kick, children=True))
            wanted = set(nodes)
            for node in set(self._lock_watches) - wanted:
                self._lock_watches.pop(node).cancel()
            for node in sorted(wanted - set(self._lock_watches)):
                self._lock_watches[node] = znodes.watch_changes(lock_path(node), loop.kick)

    def _unwatch(self) -> None:
        with self._watch_guard:
            self._cancel_locked()

    def _cancel_locked(self) -> None:
        for watch in [*self._watches, *self._lock_watches.values()]:
            watch.cancel()
        self._watches.clear()
        self._lock_watches.clear()
        self._watch_session = None

    # --- one pass ------------------------------------------------------------

    def _converge(self) -> None:
        if self._stopping.is_set() or not self.coordinator.lease_valid():
            return
        me = self.paths.node
        znodes = self.coordinator.znodes
        live = set(self.membership.view.names)
        names = set(node_names(self.paths.root)) | set(znodes.children(SPOOL) or [])
        order_names = znodes.children(OPS) or []
        orders = {
            n: parse_order(z)
            for n, z in znodes.get_many([order_path(n) for n in order_names]).items()
        }
        orders_by_node = {p.rpartition("/")[2]: o for p, o in orders.items() if o is not None}
        self._obey(orders_by_node.get(me))
        drained = {n for n, o in orders_by_node.items() if o.action == "drain"}
        others = sorted(names - {me})
        self._watch(others)  # before the read: no deletion can fall between the two
        found = znodes.get_many([lock_path(n) for n in others])
        records = znodes.get_many([takeover_path(n) for n in others])
        now = time.monotonic()
        for node in others:
            if self._stopping.is_set():
                return
            if found[lock_path(node)] is not None:
                self._gone_since.pop(node, None)
                continue
            order = orders_by_node.get(node)
            record = parse_takeover(records[takeover_path(node)])
            ordered = order is not None and (
                order.action == "drain" or order.zxid > (record.order if record else 0)
            )
            if node in live and not (order is not None and order.action == "drain"):
                self._gone_since.pop(node, None)
                continue
            if not self._has_work(node):
                continue
            since = self._gone_since.setdefault(node, now)
            ready_at = since + self.grace
            if ordered and order is not None:
                # Ranks count from when the order was seen, not from the death:
                # otherwise every survivor's wait would be over already.
                ready_at = self._orders_seen.setdefault((node, order.zxid), now)
            survivors = live - drained - {node}
            ranking = rank(node, survivors, preferred=order.to if order else None)
            if me not in ranking:
                continue
            start_at = ready_at + ranking.index(me) * self.step
            if now < start_at:
                if self._loop is not None:
                    self._loop.kick_after(start_at - now)
                continue
            self._take(node, order if ordered else None)

    def _obey(self, order: Order | None) -> None:
        if order is not None and order.action == "drain" and self.lock.state is LockState.HELD:
            logger.warning("spool of %s: drained by an operator; releasing it", self.paths.node)
            self.lock.release()
            self._emit(TakeoverEvent(EventKind.DRAINED, self.paths.node))

    def _has_work(self, node: str) -> bool:
        spool = self.paths.root / NODES / node / "spool"
        try:
            if count_messages(spool) > 0:
                return True
        except SpoolError as exc:
            logger.warning("cannot read the spool of %s: %s", node, exc)
            return False
        if wal_pending(spool):
            return True  # acknowledged messages may be in its commit log only
        view = read_journal(spool)
        return bool(view.entries) and not view.complete

    # --- the takeover itself -----------------------------------------------------

    def _take(self, node: str, order: Order | None) -> None:
        me = self.paths.node
        found = take_lock(self.coordinator, node, me, "takeover")
        if found is None:
            return  # another survivor was first
        token = found.created_zxid
        try:
            if not self._has_work(node):
                return  # finished by someone else between our look and our lock
            moved = self._import(node, token, order)
            self._gone_since.pop(node, None)
            self._emit(TakeoverEvent(EventKind.COMPLETE, node, token, moved))
        except (SpoolError, CoordinationError, OSError) as exc:
            logger.warning("takeover of %s stopped: %s", node, exc)
            self._emit(TakeoverEvent(EventKind.FAILED, node, token, detail=str(exc)))
        finally:
            drop_lock(self.coordinator, node, token, timeout=self.stop_timeout)

    def _import(self, node: str, token: int, order: Order | None) -> int:
        me = self.paths.node
        source = NodePaths(self.paths.root, self.paths.cluster, node).check()
        fence = FileFence(
            source.spool,
            holder=me,
            token=token,
            lease_valid=self.coordinator.lease_valid,
            purpose="takeover",
        )
        try:
            old = fence.claim()
            logger.warning(
                "taking over the spool of %s with token %#x (it was held with %s)",
                node,
                token,
                f"{old.token:#x} by {old.holder}" if old else "no token",
            )
            view = read_journal(source.spool)
            if view.open_batch() is not None:
                resolve(source.spool, self.paths.root / NODES, view)
            record = TakeoverRecord(
                by=me,
                token=token,
                state="importing",
                started=time.time(),
                order=order.zxid if order is not None and order.action == "import" else 0,
            )
            self._record(node, record)
            self._emit(TakeoverEvent(EventKind.STARTED, node, token))
            moved = self._move_all(source, fence, token)
            self._record(
                node, attrs.evolve(record, state="complete", moved=moved, finished=time.time())
            )
            return moved
        finally:
            fence.close()

    def _move_all(self, source: NodePaths, fence: FileFence, token: int) -> int:
        journal = Journal(source.spool)
        try:
            # Our checkpointer files nothing on its own until the moves are done.
            with self.spool.importing():
                return self._move_journalled(source, fence, token, journal)
        finally:
            journal.close()

    def _move_journalled(
        self, source: NodePaths, fence: FileFence, token: int, journal: Journal
    ) -> int:
        me = self.paths.node
        moved = 0
        journal.append("begin", by=me, token=token)
        # What the node acknowledged last may be in its commit log only:
        # the log comes over whole, by one rename (no file per message).
        logged = self.spool.adopt_log(source.spool, fence, f"{source.node}.{token:x}")
        # Each step's record goes out with the next step's announcement:
        # one fsync per batch, not two (see Journal.extend).
        done: list[tuple[str, dict[str, Any]]] = [("log", {"to": me, "count": len(logged)})]
        if logged:
            moved += len(logged)
            self._emit(
                TakeoverEvent(EventKind.BATCH, source.node, token, moved, detail="commit log")
            )
            self._hook(logged)
        ids = _ids(source.spool)
        for number, start in enumerate(range(0, len(ids), self.batch), 1):
            if self._stopping.is_set():
                journal.extend(done)
                raise SpoolFenced("stopping: the takeover is left for another node")
            chunk = ids[start : start + self.batch]
            journal.extend([*done, ("batch", {"n": number, "to": me, "ids": chunk})])
            adopted = self.spool.adopt(source.spool, fence, chunk)
            done = [("moved", {"n": number, "count": len(adopted)})]
            moved += len(adopted)
            self._emit(TakeoverEvent(EventKind.BATCH, source.node, token, moved))
            self._hook(adopted)
        journal.extend([*done, ("complete", {"by": me, "token": token, "moved": moved})])
        return moved

    def _hook(self, ids: list[str]) -> None:
        if self.on_import is None:
            return
        for mid in ids:
            try:
                self.on_import(self.spool.get(mid))
            except Exception:
                logger.exception("import hook failed for %s (the message stays imported)", mid)

    def _record(self, node: str, record: TakeoverRecord) -> None:
        znodes = self.coordinator.znodes
        if znodes.create(takeover_path(node), record.to_json(), makepath=True) is None:
            znodes.set(takeover_path(node), record.to_json())

    def _emit(self, event: TakeoverEvent) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                logger.exception("takeover listener %r failed", listener)


def drain_order(coordinator: Coordinator, node: str) -> Order | None:
    """The operator's standing order for ``node``, if any (malformed: None, reported)."""
    try:
        return parse_order(coordinator.znodes.get(order_path(node)))
    except MalformedData:
        return None


def holder_of(coordinator: Coordinator, node: str) -> LockHolder | None:
    """Who holds ``node``'s spool lock (None: nobody)."""
    from mhafail.spool._znodes import read_holder

    return read_holder(coordinator.znodes, node)
