"""SpoolLock: a node's exclusive, fenced right to its own spool.

Held in two places:

* ZooKeeper: the ephemeral znode ``spool/<node>/lock``. Only one session
  can hold it; its creation zxid is the *fencing token*, larger for every
  later holder (zxids only grow).
* the spool directory: the lock file, rewritten with the token under an
  exclusive OFD lock when the lock is taken (see ``_fence.py``).

Every state change of the :class:`~mhafail.spool.Spool` enters a fence
section: the lease must be valid and the lock file must still name our
token. When the coordinator's lease runs out the lock becomes FENCED at
once, before the server can expire the session and a survivor can take the
spool over; listeners hear it (stop accepting mail: answer 421). A fenced
lock revives only by :meth:`SpoolLock.acquire`, which waits for any
takeover to finish and starts on what is left: by hand, or automatically
with ``reacquire=True`` (a background thread retries until the lock is held
again or :meth:`SpoolLock.release` is called).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator

import attrs

from mhafail.coordination import Coordinator, LeaseState, Znode
from mhafail.errors import (
    CoordinationError,
    MhafailError,
    SpoolError,
    SpoolFenced,
    SpoolInvalidArgument,
)
from mhafail.spool._fence import FileFence
from mhafail.spool._journal import read_journal, resolve, retire
from mhafail.spool._paths import NODES, NodePaths
from mhafail.spool._znodes import LockHolder, lock_path, order_path, parse_order, read_holder

logger = logging.getLogger(__name__)


class LockState(enum.Enum):
    """Where a :class:`SpoolLock` stands.

    * ``RELEASED``: not held (never acquired, or released).
    * ``HELD``: held with a valid lease; the spool may be changed.
    * ``FENCED``: the lease ran out, or someone took the spool: refuse
      mail (421) and deliver nothing until :meth:`SpoolLock.acquire` again.
    """

    RELEASED = "released"
    HELD = "held"
    FENCED = "fenced"


def take_lock(coordinator: Coordinator, node: str, holder: str, purpose: str) -> Znode | None:
    """Create ``node``'s spool lock znode for ``holder``; None when someone holds it.

    An existing lock of our own session is returned as ours.

    Raises:
        CoordinationUnavailable: ZooKeeper could not be asked.
    """
    znodes = coordinator.znodes
    path = lock_path(node)
    session = coordinator.session_id or 0
    if znodes.create(
        path, LockHolder.encode(holder, purpose, session), ephemeral=True, makepath=True
    ):
        return znodes.get(path)
    found = znodes.get(path)
    if found is not None and found.ephemeral_owner == session and session:
        return found
    return None


def drop_lock(coordinator: Coordinator, node: str, token: int, *, timeout: float) -> None:
    """Delete ``node``'s lock znode if it is still the one with ``token`` (bounded)."""
    znodes = coordinator.znodes.bounded(timeout)
    try:
        found = znodes.get(lock_path(node))
        if found is not None and found.created_zxid == token:
            znodes.delete(lock_path(node), version=found.version)
    except CoordinationError:
        logger.info("could not delete the lock of %s; it goes with the session", node)


@attrs.define(kw_only=True, eq=False)
class SpoolLock:
    """This node's lock on its own spool; the :class:`Spool`'s fence.

    Args:
        coordinator: a started coordinator.
        paths: this node's paths (``NodePaths(...).create()``).
        lock_timeout: the longest a fence section waits for the lock file.
        stop_timeout: bound on ZooKeeper calls in :meth:`release`.
        reacquire: once the lock was acquired, take it back automatically
            whenever it becomes FENCED (session loss, lease run out, or a
            survivor took the spool): a daemon thread calls
            :meth:`acquire` every ``reacquire_interval`` seconds until the
            lock is HELD again or :meth:`release` is called. Each retry
            waits for a takeover of this spool to finish, exactly as a
            manual :meth:`acquire` does; failures are logged, never raised.
        reacquire_interval: seconds per retry (each try is bounded by it).

    Listeners (``add_listener``) get each new :class:`LockState` on the
    coordinator's lease thread, the re-acquiring thread or the caller's;
    they must not block (wrap with ``mhafail.coordination.in_loop`` for
    asyncio).

    Raises:
        SpoolInvalidArgument: ``reacquire_interval`` is not positive.
    """

    coordinator: Coordinator
    paths: NodePaths
    lock_timeout: float = 2.0
    stop_timeout: float = 1.0
    reacquire: bool = False
    reacquire_interval: float = attrs.field(default=1.0)

    _state: LockState = attrs.field(init=False, default=LockState.RELEASED)
    _fence: FileFence | None = attrs.field(init=False, default=None)
    _listeners: list[Callable[[LockState], None]] = attrs.field(init=False, factory=list)
    _mutex: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _registered: bool = attrs.field(init=False, default=False)
    _session: int | None = attrs.field(init=False, default=None)
    _released: threading.Event = attrs.field(init=False, factory=threading.Event)
    _taking: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _relocker: threading.Thread | None = attrs.field(init=False, default=None)

    @reacquire_interval.validator
    def _check_interval(self, _attribute: object, value: float) -> None:
        if not isinstance(value, int | float) or not 0 < value <= 3600:
            raise SpoolInvalidArgument(
                f"reacquire_interval {value!r}: must be a number of seconds in (0, 3600]"
            )

    @property
    def state(self) -> LockState:
        """The current state."""
        return self._state

    @property
    def token(self) -> int:
        """The fencing token (0 when never held)."""
        fence = self._fence
        return 0 if fence is None else fence.token

    def add_listener(self, listener: Callable[[LockState], None]) -> None:
        """Call ``listener(state)`` on every state change."""
        self._listeners.append(listener)

    def acquire(self, timeout: float = 30.0) -> int:
        """Take the spool: the ZooKeeper lock, then the lock file; return the token.

        Waits while someone else holds the ZooKeeper lock (a survivor
        importing this spool), then resolves an interrupted import and
        starts on what is left.

        Raises:
            SpoolFenced: the lock stayed taken for ``timeout`` seconds, or
                the lease ran out while taking it.
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        self._released.clear()
        return self._take(timeout)

    def _take(self, timeout: float) -> int:
        # One taker at a time: the application's acquire() and the
        # re-acquiring thread must not claim the lock file twice.
        with self._taking:
            fence = self._fence
            if fence is not None and self.valid():
                return fence.token  # already held: nothing to take
            return self._take_locked(timeout)

    def _take_locked(self, timeout: float) -> int:
        if not self._registered:
            self.coordinator.add_lease_listener(self._on_lease)
            self._registered = True
        node = self.paths.node
        order = parse_order(self.coordinator.znodes.get(order_path(node)))
        if order is not None and order.action == "drain":
            raise SpoolFenced(
                f"spool of {node} is drained by an operator: accept no mail until "
                f"`mhafail spool drain --clear {node}`"
            )
        end = time.monotonic() + timeout
        while True:
            if not self.coordinator.wait_for_lease(max(0.0, end - time.monotonic())):
                raise SpoolFenced(f"spool of {node}: no valid lease to take the lock with")
            found = take_lock(self.coordinator, node, node, "own")
            if found is not None:
                break
            if time.monotonic() >= end:
                holder = read_holder(self.coordinator.znodes, node)
                raise SpoolFenced(
                    f"spool of {node} is held by {holder.holder if holder else 'someone'} "
                    f"({holder.purpose if holder else '?'}); still after {timeout:g} s"
                )
            time.sleep(0.05)
        fence = FileFence(
            self.paths.spool,
            holder=node,
            token=found.created_zxid,
            lease_valid=self.coordinator.lease_valid,
            lock_timeout=self.lock_timeout,
        )
        try:
            view = read_journal(self.paths.spool)
            if view.entries and not view.complete:
                removed = resolve(self.paths.spool, self.paths.root / NODES, view)
                logger.warning(
                    "spool of %s: an import was interrupted; %d copies removed", node, removed
                )
            fence.claim(timeout=max(self.lock_timeout, end - time.monotonic()))
            retire(self.paths.spool)
        except (SpoolError, OSError) as exc:
            fence.close()
            drop_lock(self.coordinator, node, found.created_zxid, timeout=self.stop_timeout)
            if isinstance(exc, SpoolError):
                raise
            raise SpoolFenced(f"spool of {node}: cannot take the lock file: {exc}") from exc
        with self._mutex:
            old, self._fence = self._fence, fence
            self._session = self.coordinator.session_id
        if old is not None:
            old.close()
        self._set(LockState.HELD)
        logger.info("spool of %s: lock held with token %#x", node, fence.token)
        return fence.token

    def release(self) -> None:
        """Stop changing the spool and give the lock up (bounded even without ZooKeeper).

        Also ends automatic re-acquiring: a retry in flight gives back what
        it takes.
        """
        self._released.set()
        with self._mutex:
            fence, self._fence = self._fence, None
        if fence is None:
            return
        fence.close()
        self._set(LockState.RELEASED)
        if self.coordinator.lease_valid():
            drop_lock(self.coordinator, self.paths.node, fence.token, timeout=self.stop_timeout)

    def holder(self) -> LockHolder | None:
        """Who holds this node's spool lock in ZooKeeper now (None: nobody)."""
        return read_holder(self.coordinator.znodes, self.paths.node)

    # --- Fence -------------------------------------------------------------

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """One state change's hold on the spool (see :class:`~mhafail.spool.Fence`).

        Raises:
            SpoolFenced: not held, lease invalid, or the token is stale.
        """
        fence = self._fence
        if fence is None or self._state is not LockState.HELD:
            raise SpoolFenced(f"spool of {self.paths.node}: the lock is {self._state.value}")
        if self.coordinator.session_id != self._session:
            # The lock znode went with the old session, even if the lease
            # listener has not told us yet.
            self._fenced()
            raise SpoolFenced(f"spool of {self.paths.node}: the session that held it ended")
        try:
            with fence.section():
                yield
        except SpoolFenced:
            self._fenced()
            raise

    def valid(self) -> bool:
        """True while held and the lease is valid."""
        fence = self._fence
        return (
            fence is not None
            and self._state is LockState.HELD
            and self.coordinator.session_id == self._session
            and fence.valid()
        )

    # --- internals -----------------------------------------------------------

    def _on_lease(self, state: LeaseState) -> None:
        if state is LeaseState.EXPIRED:
            self._fenced()

    def _fenced(self) -> None:
        fence = self._fence
        if fence is not None and self._state is LockState.HELD:
            fence.revoke()
            logger.warning("spool of %s: fenced (lease ran out or token stale)", self.paths.node)
            self._set(LockState.FENCED)
            if self.reacquire and not self._released.is_set():
                self._start_relocker()

    def _start_relocker(self) -> None:
        with self._mutex:
            if self._relocker is not None:
                return  # the running one sees the new FENCED state before it ends
            self._relocker = threading.Thread(
                target=self._relock, name=f"mhafail-spool-relock-{self.paths.node}", daemon=True
            )
            self._relocker.start()

    def _relock(self) -> None:
        while True:
            with self._mutex:  # decided under the mutex _set() changes the state under
                if self._released.is_set() or self._state is not LockState.FENCED:
                    self._relocker = None
                    return
            began = time.monotonic()
            try:
                # Short tries, so that release() is heard within one interval;
                # a try polls the lock while it lasts, so a finished import is
                # seen at once.
                self._take(self.reacquire_interval)
            except MhafailError as exc:
                logger.info("spool of %s: not taken back yet: %s", self.paths.node, exc)
                rest = self.reacquire_interval - (time.monotonic() - began)
                self._released.wait(max(0.05, rest))
                continue
            if self._released.is_set():  # release() ran meanwhile: give back what we took
                self.release()
            else:
                logger.warning("spool of %s: lock taken back automatically", self.paths.node)

    def _set(self, state: LockState) -> None:
        with self._mutex:
            if self._state is state:
                return
            self._state = state
        for listener in list(self._listeners):
            try:
                listener(state)
            except Exception:
                logger.exception("spool lock listener %r failed", listener)
