"""Membership: this node's ephemeral ``members/<name>`` znode and the live view.

Registration is an ephemeral znode, so it lives exactly as long as the
session: a crashed node leaves every view when its session times out. The
view is rebuilt by a ConvergeLoop kicked by the children watch, by every
reconnect and every new session, and by a timer, so a missed watch only
delays it (safety rule 2).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from mhafail.coordination._coordinator import Coordinator
from mhafail.coordination._loop import ConvergeLoop
from mhafail.coordination._members import ClusterView, NodeInfo
from mhafail.coordination._state import ConnectionState
from mhafail.coordination._store import Watch
from mhafail.errors import CoordinationError, InvalidArgument, NodeNameTaken

logger = logging.getLogger(__name__)

MEMBERS = "members"


def process_alive(pid: int) -> bool:
    """True when ``pid`` names a running process on this host (zombies count as dead)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the parenthesised command name, which may contain spaces.
    return stat[stat.rfind(")") + 2 : stat.rfind(")") + 3] not in ("Z", "X")


@attrs.define(kw_only=True, eq=False)
class Membership:
    """Registers this node and keeps the current :class:`ClusterView`.

    Args:
        coordinator: a started coordinator.
        info: what to publish about this node.
        stale_wait: how long :meth:`start` waits for a dead predecessor with
            the same name (same host, its process gone) to leave, before
            giving up; default twice the session timeout plus a second.
        refresh: seconds between periodic re-reads of the member list.

    Listeners get each new view on the membership's own thread, in order.
    """

    coordinator: Coordinator
    info: NodeInfo
    stale_wait: float | None = None
    refresh: float = 5.0
    stop_timeout: float = 1.0

    _view: ClusterView = attrs.field(init=False, factory=ClusterView)
    _lock: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    # name -> (created zxid, info or None when malformed: skipped, logged once)
    _cache: dict[str, tuple[int, NodeInfo | None]] = attrs.field(init=False, factory=dict)
    _listeners: list[Callable[[ClusterView], None]] = attrs.field(init=False, factory=list)
    _loop: ConvergeLoop | None = attrs.field(init=False, default=None)
    _watch: Watch | None = attrs.field(init=False, default=None)
    _registered: bool = attrs.field(init=False, default=False)

    @property
    def path(self) -> str:
        """This node's member znode, relative to the cluster root."""
        return f"{MEMBERS}/{self.info.name}"

    @property
    def view(self) -> ClusterView:
        """The latest cluster view (immutable)."""
        with self._lock:
            return self._view

    def add_listener(self, listener: Callable[[ClusterView], None]) -> None:
        """Call ``listener(view)`` after every change of the view."""
        self._listeners.append(listener)

    def start(self) -> Membership:
        """Register this node and start tracking the view.

        Raises:
            NodeNameTaken: another live process holds this node name.
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        if self._loop is not None:
            raise CoordinationError("membership already started")
        self.coordinator.znodes.ensure(MEMBERS)
        self._register()
        self._registered = True
        self._loop = ConvergeLoop(
            f"mhafail-members-{self.info.name}", self._converge, period=self.refresh
        )
        self.coordinator.add_state_listener(self._on_state)
        self.coordinator.add_session_listener(self._loop.kick)
        self._loop.start()
        self._watch = self.coordinator.znodes.watch_children(MEMBERS, self._loop.kick)
        return self

    def stop(self) -> None:
        """Leave the cluster: delete the member znode (if still ours) and stop."""
        if self._loop is None:
            return
        self._registered = False
        if self._watch is not None:
            self._watch.cancel()
        self._loop.stop(timeout=self.stop_timeout)
        if self.coordinator.state is not ConnectionState.CONNECTED:
            return  # nothing to ask: the member znode goes with the session
        try:
            # Bounded: leaving must not wait for an unreachable ZooKeeper.
            z = self.coordinator.znodes.bounded(self.stop_timeout)
            node = z.get(self.path)
            if node is not None and node.ephemeral_owner == self.coordinator.session_id:
                z.delete(self.path, version=node.version)
        except CoordinationError:
            logger.info("could not delete %s; it goes with the session", self.path)

    def wait_for(self, predicate: Callable[[ClusterView], bool], timeout: float) -> ClusterView:
        """Block until ``predicate(view)`` holds and return that view.

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        with self._lock:
            if not self._lock.wait_for(lambda: predicate(self._view), timeout):
                raise TimeoutError(f"cluster view did not reach the expected state: {self._view}")
            return self._view

    # --- internals --------------------------------------------------------------

    def _on_state(self, state: ConnectionState) -> None:
        if state is ConnectionState.CONNECTED and self._loop is not None:
            self._loop.kick()

    def _register(self) -> None:
        znodes = self.coordinator.znodes
        wait = self.stale_wait
        if wait is None:
            wait = 2 * self.coordinator.effective_timeout + 1
        give_up = time.monotonic() + wait
        while True:
            if znodes.create(self.path, self.info.to_json(), ephemeral=True) is not None:
                logger.info("registered %s", self.path)
                return
            node = znodes.get(self.path)
            if node is None:
                continue  # it left between our create and our read
            if node.ephemeral_owner == self.coordinator.session_id:
                return  # already ours: a reconnect within the same session
            try:
                other = NodeInfo.from_json(node.data)
            except InvalidArgument:
                other = NodeInfo(name=self.info.name)
            stale = (
                other.host == self.info.host
                and other.pid != os.getpid()
                and not process_alive(other.pid)
            )
            if not stale or time.monotonic() >= give_up:
                raise NodeNameTaken(
                    f"node name {self.info.name!r} is held by a live process "
                    f"(pid {other.pid} on {other.host or 'unknown host'}, "
                    f"session {node.ephemeral_owner:#x})"
                    + ("; it did not leave in time" if stale else "")
                )
            # A predecessor of ours died; its session expires on its own.
            time.sleep(0.1)

    def _converge(self) -> None:
        if self._registered and self.coordinator.state is ConnectionState.CONNECTED:
            self._register()
        names = self.coordinator.znodes.children(MEMBERS) or []
        members: dict[str, NodeInfo] = {}
        for name in names:
            node = self.coordinator.znodes.get(f"{MEMBERS}/{name}")
            if node is None:
                continue
            cached = self._cache.get(name)
            if cached is None or cached[0] != node.created_zxid:
                try:
                    info: NodeInfo | None = NodeInfo.from_json(node.data)
                except InvalidArgument as exc:  # shared data: skip it, never fail the view
                    logger.warning("ignoring malformed member znode %s: %s", name, exc)
                    info = None
                cached = (node.created_zxid, info)
                self._cache[name] = cached
            if cached[1] is not None:
                members[name] = cached[1]
        for gone in set(self._cache) - set(names):
            del self._cache[gone]
        with self._lock:
            if members == dict(self._view.members):
                return
            self._view = ClusterView(members=members, generation=self._view.generation + 1)
            view = self._view
            self._lock.notify_all()
        logger.info("cluster view %d: %s", view.generation, ", ".join(view.names))
        for listener in list(self._listeners):
            try:
                listener(view)
            except Exception:
                logger.exception("membership listener %r failed", listener)
