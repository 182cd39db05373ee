"""Typed access to the znodes under one cluster's root.

Components never touch kazoo: they read and write znodes through
:class:`Znodes`, with paths relative to the cluster root
``/mhafail/<cluster>``. "No" answers (absent node, version mismatch,
already exists) are return values; "don't know" answers (no connection)
are :class:`~mhafail.errors.CoordinationUnavailable`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from kazoo import exceptions as kex
from kazoo.protocol.states import EventType
from kazoo.recipe.watchers import ChildrenWatch, DataWatch

from mhafail.coordination._acl import AclPolicy
from mhafail.coordination._dispatch import Dispatcher
from mhafail.coordination._kazoo import translated
from mhafail.coordination._tx import Check, Create, Op, SetData
from mhafail.errors import AccessDenied, InvalidArgument

logger = logging.getLogger(__name__)


@attrs.frozen
class Znode:
    """One znode's data and the parts of its stat that components use.

    Attributes:
        path: path relative to the cluster root (``members/n1``).
        data: the znode's bytes.
        version: data version, for compare-and-set.
        ephemeral_owner: session id owning an ephemeral znode, else 0.
        created_zxid: zxid of the create; distinguishes incarnations.
        modified_ms: wall-clock time of the last change (server clock, ms).
    """

    path: str
    data: bytes
    version: int
    ephemeral_owner: int
    created_zxid: int
    modified_ms: int


@attrs.define
class Watch:
    """A registered watch; :meth:`cancel` stops further callbacks."""

    _cancelled: bool = False

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop delivering changes (kazoo's watcher ends at its next event)."""
        self._cancelled = True


@attrs.frozen
class Seen:
    """What a light watch (:meth:`Znodes.watch_seen`) read when it re-armed.

    Attributes:
        path: the watched path, relative to the cluster root.
        known: False when the re-arming read failed (connection trouble):
            nothing is known, re-read later.
        exists: whether the znode existed at the read.
        ephemeral_owner: its owning session when it exists and is
            ephemeral, else 0 (an existence watch only).
        children: its sorted child names (a children watch only; None
            for an existence watch or an absent znode).
    """

    path: str
    known: bool
    exists: bool = False
    ephemeral_owner: int = 0
    children: tuple[str, ...] | None = None


class Pending:
    """A request sent by :meth:`Znodes.create_soon` or :meth:`Znodes.transact_soon`,
    answered later."""

    def __init__(self, request: Any, *, transaction: bool = False) -> None:
        self._request = request
        self._transaction = transaction

    def outcome(self, timeout: float) -> bool | None:
        """Wait up to ``timeout`` s: True done, False refused (a create met an existing
        znode; in a transaction also a missing znode or another version), None failed
        or no answer.

        The waiting thread is woken by kazoo's reader directly (no hand-over).
        """
        if self._request is None:
            return None
        try:
            answer = self._request.get(timeout=timeout)
        except kex.NodeExistsError:
            return False
        except Exception:  # any failure or no answer yet: unknown, the caller reads again
            return None
        if self._transaction:
            return _tx_outcome(answer)
        return True


class Znodes:
    """Znode operations under ``root``; obtained from ``Coordinator.znodes``.

    All methods are thread-safe (kazoo serialises requests) and block until
    ZooKeeper answers, the connection drops, or ``timeout`` seconds pass
    (then :class:`~mhafail.errors.CoordinationUnavailable`): kazoo itself
    waits without limit while the connection is down, which once made
    ``VipManager.stop`` hang for minutes with ZooKeeper unreachable. A
    request that timed out may still be carried out later, when the
    connection returns: callers that must know use compare-and-set.
    Every znode created here, parents included, gets the ACL the cluster's
    policy gives its path.
    """

    def __init__(
        self,
        client: Any,
        root: str,
        dispatcher: Dispatcher,
        acls: AclPolicy | None = None,
        *,
        timeout: float = 15.0,
    ) -> None:
        self._client = client
        self._root = root
        self._dispatcher = dispatcher
        self._acls = acls if acls is not None else AclPolicy(open=True)
        self._timeout = timeout

    @property
    def timeout(self) -> float:
        """The longest any call waits (seconds)."""
        return self._timeout

    def bounded(self, timeout: float) -> Znodes:
        """The same znodes, with calls that wait at most ``timeout`` seconds."""
        return Znodes(self._client, self._root, self._dispatcher, self._acls, timeout=timeout)

    @staticmethod
    def _left(end: float) -> float:
        # One deadline for a whole pipelined batch, not one per answer.
        return max(0.0, end - time.monotonic())

    @property
    def root(self) -> str:
        """The absolute path of the cluster root."""
        return self._root

    def _abs(self, path: str) -> str:
        if path.startswith("/") or ".." in path.split("/") or "//" in path:
            raise InvalidArgument(f"invalid znode path {path!r}: must be relative, without '..'")
        return f"{self._root}/{path}" if path else self._root

    def create(
        self,
        path: str,
        data: bytes = b"",
        *,
        ephemeral: bool = False,
        sequence: bool = False,
        makepath: bool = False,
    ) -> str | None:
        """Create a znode.

        Returns:
            The created path relative to the root (with the sequence suffix),
            or None when the znode already exists.

        Raises:
            CoordinationUnavailable: ZooKeeper could not be asked.
            CoordinationError: the parent is missing and ``makepath`` is False.
        """
        abs_path = self._abs(path)
        acl = self._acls.acl_for(path)
        with translated(f"create {path}"):
            try:
                try:
                    created: str = self._client.create_async(
                        abs_path, data, acl=acl, ephemeral=ephemeral, sequence=sequence
                    ).get(timeout=self._timeout)
                except kex.NoNodeError:
                    if not makepath:
                        raise
                    self._ensure_parents(path)
                    created = self._client.create_async(
                        abs_path, data, acl=acl, ephemeral=ephemeral, sequence=sequence
                    ).get(timeout=self._timeout)
            except kex.NodeExistsError:
                return None
        return created[len(self._root) + 1 :]

    def ensure(self, path: str) -> None:
        """Create ``path`` and its parents as empty persistent znodes if missing.

        Raises:
            AccessDenied: a missing level may only be created by an operator
                (the message says to run ``mhafail init``).
        """
        with translated(f"ensure {path}"):
            if self._client.exists_async(self._abs(path)).get(timeout=self._timeout) is not None:
                return  # the usual case: one round trip
        parts = path.split("/") if path else []
        for i in range(1, len(parts) + 1):
            self._ensure_one("/".join(parts[:i]))

    def _ensure_parents(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent:
            self.ensure(parent)

    def _ensure_one(self, path: str) -> None:
        # exists() first: ZooKeeper checks CREATE on the parent before it
        # says "exists", so a node creating an existing operator folder
        # would be refused instead of finding it.
        with translated(f"ensure {path}"):
            if self._client.exists_async(self._abs(path)).get(timeout=self._timeout) is not None:
                return
            try:
                self._client.create_async(self._abs(path), b"", acl=self._acls.acl_for(path)).get(
                    timeout=self._timeout
                )
            except kex.NodeExistsError:
                return
            except kex.NoAuthError as exc:
                raise AccessDenied(
                    f"ensure {path}: only an operator may create it "
                    "(run `mhafail init` with operator credentials)"
                ) from exc

    def get(self, path: str) -> Znode | None:
        """Return the znode at ``path``, or None when it does not exist."""
        with translated(f"get {path}"):
            try:
                data, stat = self._client.get_async(self._abs(path)).get(timeout=self._timeout)
            except kex.NoNodeError:
                return None
        return _znode(path, data, stat)

    def children(self, path: str) -> list[str] | None:
        """Return the sorted child names of ``path``, or None when it does not exist."""
        with translated(f"children {path}"):
            try:
                names: list[str] = self._client.get_children_async(self._abs(path)).get(
                    timeout=self._timeout
                )
            except kex.NoNodeError:
                return None
        return sorted(names)

    def set(self, path: str, data: bytes, *, version: int = -1) -> Znode | None:
        """Replace the data of ``path`` if its version is ``version`` (-1: any).

        Returns:
            The new znode, or None when it does not exist or its version
            differs (compare-and-set lost).
        """
        with translated(f"set {path}"):
            try:
                stat = self._client.set_async(self._abs(path), data, version=version).get(
                    timeout=self._timeout
                )
            except (kex.NoNodeError, kex.BadVersionError):
                return None
        return _znode(path, data, stat)

    def delete(self, path: str, *, version: int = -1, recursive: bool = False) -> bool:
        """Delete ``path`` if its version is ``version`` (-1: any).

        Returns:
            True when deleted, False when absent or the version differs.
        """
        with translated(f"delete {path}"):
            try:
                if recursive:  # kazoo has no asynchronous recursive delete
                    self._client.delete(self._abs(path), version=version, recursive=True)
                else:
                    self._client.delete_async(self._abs(path), version=version).get(
                        timeout=self._timeout
                    )
            except (kex.NoNodeError, kex.BadVersionError):
                return False
        return True

    def get_many(self, paths: Sequence[str]) -> dict[str, Znode | None]:
        """Read many znodes at once (requests pipelined on the session).

        Returns:
            path -> Znode, or None for paths that do not exist.
        """
        with translated(f"get {len(paths)} znodes"):
            end = time.monotonic() + self._timeout
            pending = [(p, self._client.get_async(self._abs(p))) for p in paths]
            result: dict[str, Znode | None] = {}
            for path, answer in pending:
                try:
                    data, stat = answer.get(timeout=self._left(end))
                except kex.NoNodeError:
                    result[path] = None
                else:
                    result[path] = _znode(path, data, stat)
        return result

    def children_many(self, paths: Sequence[str]) -> dict[str, list[str] | None]:
        """List the children of many znodes at once (pipelined); None when absent."""
        with translated(f"children of {len(paths)} znodes"):
            end = time.monotonic() + self._timeout
            pending = [(p, self._client.get_children_async(self._abs(p))) for p in paths]
            result: dict[str, list[str] | None] = {}
            for path, answer in pending:
                try:
                    result[path] = sorted(answer.get(timeout=self._left(end)))
                except kex.NoNodeError:
                    result[path] = None
        return result

    def create_many(
        self, items: Sequence[tuple[str, bytes]], *, ephemeral: bool = False, makepath: bool = False
    ) -> dict[str, bool]:
        """Create many znodes at once (pipelined, each on its own, not a transaction).

        Returns:
            path -> True if created, False if it already existed.
        """
        with translated(f"create {len(items)} znodes"):
            result, orphans = self._create_batch(items, ephemeral)
            if orphans and makepath:
                # Parents are missing only the first time: no extra round
                # trips on the usual path (a failover's claims).
                for parent in sorted({p.rpartition("/")[0] for p, _ in orphans}):
                    if parent:
                        self.ensure(parent)
                again, orphans = self._create_batch(orphans, ephemeral)
                result.update(again)
            if orphans:
                raise kex.NoNodeError(f"parent of {orphans[0][0]} does not exist")
        return result

    def _create_batch(
        self, items: Sequence[tuple[str, bytes]], ephemeral: bool
    ) -> tuple[dict[str, bool], list[tuple[str, bytes]]]:
        end = time.monotonic() + self._timeout
        pending = [
            (
                (p, d),
                self._client.create_async(
                    self._abs(p), d, acl=self._acls.acl_for(p), ephemeral=ephemeral
                ),
            )
            for p, d in items
        ]
        result: dict[str, bool] = {}
        orphans: list[tuple[str, bytes]] = []
        for item, answer in pending:
            try:
                answer.get(timeout=self._left(end))
            except kex.NodeExistsError:
                result[item[0]] = False
            except kex.NoNodeError:
                orphans.append(item)
            else:
                result[item[0]] = True
        return result, orphans

    def create_all(
        self, items: Sequence[tuple[str, bytes]], *, meanwhile: Callable[[], None] | None = None
    ) -> str | None:
        """Create every znode of ``items`` in one transaction: all of them or none.

        One request and one round trip however many znodes, and cheaper
        per znode than :meth:`create` (kazoo hands each plain create's
        answer over to another thread once more).

        Args:
            items: (path, data) pairs; persistent znodes with the policy's ACLs.
            meanwhile: called after the transaction is sent and before its
                answer is awaited (overlap local work with the round trip);
                what it raises is raised, the transaction still happens.

        Returns:
            None when every znode was created; else the first path that
            already existed (then none was created).

        Raises:
            CoordinationUnavailable: ZooKeeper could not be asked (the
                transaction may or may not have happened).
            AccessDenied: the ACLs refuse one of them (none was created).
            CoordinationError: a parent is missing (none was created).
        """
        if not items:
            if meanwhile is not None:
                meanwhile()
            return None
        with translated(f"create {len(items)} znodes"):
            tx = self._client.transaction()
            for path, data in items:
                tx.create(self._abs(path), data, acl=self._acls.acl_for(path))
            answer = tx.commit_async()
            if meanwhile is not None:
                meanwhile()
            results = answer.get(timeout=self._timeout)
            failure = _first_failure(results)
            if failure is None:
                return None
            index, exc = failure
            if isinstance(exc, kex.NodeExistsError):
                return items[index][0]
            raise exc

    def create_each(
        self, items: Sequence[tuple[str, bytes]], *, meanwhile: Callable[[], None] | None = None
    ) -> dict[str, bool]:
        """Create the znodes of ``items`` that do not exist, in as few transactions as possible.

        The usual case (none exists) is one transaction; each znode found
        existing costs one more.

        Returns:
            path -> True if created, False if it already existed.

        Raises:
            as :meth:`create_all` (``meanwhile`` runs once, with the first
            transaction).
        """
        result: dict[str, bool] = {}
        rest = list(items)
        while rest:
            existing = self.create_all(rest, meanwhile=meanwhile)
            meanwhile = None
            if existing is None:
                result.update((path, True) for path, _ in rest)
                break
            result[existing] = False
            rest = [(p, d) for p, d in rest if p != existing]
        return result

    def transact(self, ops: Sequence[Op]) -> bool:
        """Run ``ops`` as one ZooKeeper transaction: all of them or none.

        Returns:
            True when every operation happened; False when one found its
            znode absent, at another version, or (a create) present: then
            none happened.

        Raises:
            CoordinationUnavailable: ZooKeeper could not be asked (the
                transaction may or may not have happened).
            AccessDenied: the ACLs refuse one of them (none happened).
        """
        if not ops:
            return True
        with translated(f"transaction of {len(ops)}"):
            results = self._send_tx(ops).get(timeout=self._timeout)
            outcome = _tx_outcome(results)
            if outcome is None:
                failure = _first_failure(results)
                assert failure is not None
                raise failure[1]
            return outcome

    def transact_many(self, transactions: Sequence[Sequence[Op]]) -> list[bool]:
        """Run each of ``transactions`` on its own, pipelined (one round trip for all).

        Returns:
            One outcome per transaction, as :meth:`transact` gives it.

        Raises:
            as :meth:`transact` (the first transaction that raised; the
            others may or may not have happened).
        """
        with translated(f"{len(transactions)} transactions"):
            end = time.monotonic() + self._timeout
            sent = [self._send_tx(ops) for ops in transactions]
            outcomes = []
            for answer in sent:
                results = answer.get(timeout=self._left(end))
                outcome = _tx_outcome(results)
                if outcome is None:
                    failure = _first_failure(results)
                    assert failure is not None
                    raise failure[1]
                outcomes.append(outcome)
            return outcomes

    def transact_soon(self, ops: Sequence[Op]) -> Pending:
        """Send a transaction without waiting for it; :meth:`Pending.outcome` waits.

        Like :meth:`create_soon`: never blocks, never raises (safe on
        kazoo's own threads).
        """
        try:
            request = self._send_tx(ops)
        except Exception:  # not even sent (closed client, bad path): unknown
            request = None
        return Pending(request, transaction=True)

    def _send_tx(self, ops: Sequence[Op]) -> Any:
        tx = self._client.transaction()
        for op in ops:
            if isinstance(op, Create):
                acl = self._acls.acl_for(op.path)
                tx.create(self._abs(op.path), op.data, acl=acl, ephemeral=op.ephemeral)
            elif isinstance(op, Check):
                tx.check(self._abs(op.path), op.version)
            elif isinstance(op, SetData):
                tx.set_data(self._abs(op.path), op.data, version=op.version)
            else:
                tx.delete(self._abs(op.path), version=op.version)
        return tx.commit_async()

    def delete_all(self, paths: Sequence[str]) -> int:
        """Delete the znodes of ``paths`` that exist, in as few transactions as possible.

        Deleted together, they reach a watcher of their parent as one change.

        Returns:
            How many were deleted.
        """
        rest = list(dict.fromkeys(paths))
        while rest:
            with translated(f"delete {len(rest)} znodes"):
                tx = self._client.transaction()
                for path in rest:
                    tx.delete(self._abs(path))
                failure = _first_failure(tx.commit_async().get(timeout=self._timeout))
                if failure is not None and not isinstance(failure[1], kex.NoNodeError):
                    raise failure[1]
            if failure is None:
                return len(rest)
            del rest[failure[0]]  # gone already: the rest again, without it
        return 0

    def acl_problems(self) -> list[tuple[str, str]]:
        """Every znode under the root whose ACL the cluster's policy does not allow.

        Walks the whole tree (one pipelined round trip per level); for
        ``mhafail init`` and audits, not for hot paths.

        Returns:
            (path relative to the root, problem) pairs, sorted by path.
        """
        from mhafail.coordination._root import tree_problems

        return tree_problems(self._client, self._root, self._acls)

    def repair_acls(self) -> int:
        """Give every znode under the root exactly the policy's ACL; returns how many changed.

        Raises:
            AccessDenied: these credentials may not change some ACL (an
                operator's, with ADMIN, can).
        """
        from mhafail.coordination._root import repair_tree

        return repair_tree(self._client, self._root, self._acls)

    def watch_changes(
        self, path: str, callback: Callable[[str], None], *, children: bool = False
    ) -> Watch:
        """Call ``callback(path)`` whenever ``path`` (or, with ``children``, its
        child list) may have changed; nothing is read for you.

        A light alternative to :meth:`watch_data` for many znodes: kazoo's
        watch recipes re-read the znode synchronously on its single event
        thread for every event, so a burst of events (a dead session's
        hundreds of ephemerals) queues up there. This re-arms the one-shot
        ZooKeeper watch asynchronously and leaves reading to the caller
        (e.g. one pipelined :meth:`get_many`). Read *after* the callback:
        the watch is re-armed before it runs, so no change is missed. The
        callback also runs once at registration. Watches do not survive a
        new session: register again then.
        """
        watch = Watch()
        abs_path = self._abs(path)

        def arm() -> None:
            if watch.cancelled:
                return
            answer = self._read_armed(abs_path, children, on_event)
            # A missing parent for a children watch is fine: the periodic
            # re-read covers it; errors only mean the session is going away.
            answer.rawlink(lambda _: None)

        def on_event(_event: Any) -> None:
            # kazoo's event thread: re-arm without waiting, hand over, return.
            arm()
            if not watch.cancelled:
                self._dispatcher.post(callback, path)

        with translated(f"watch {path}"):
            arm()
        self._dispatcher.post(callback, path)
        return watch

    def watch_list(self, path: str, callback: Callable[[list[str] | None], None]) -> Watch:
        """Call ``callback(sorted_children)`` soon and after every change of ``path``'s child list.

        One round trip per change: the read that re-arms the watch is the
        list handed over, asynchronously (kazoo's ``ChildrenWatch`` recipe,
        behind :meth:`watch_children`, reads synchronously on kazoo's event
        thread and adds a session listener per watch). The callback gets
        None when ``path`` does not exist; the watch then ends (register
        again once it exists). Callbacks run on the dispatcher thread, in
        order. Watches do not survive a new session: register again then;
        a read that fails (the connection going away) delivers nothing, so
        callers also re-read on reconnect and on a timer (safety rule 2).
        """
        watch = Watch()
        abs_path = self._abs(path)

        def arm() -> None:
            if not watch.cancelled:
                self._client.get_children_async(abs_path, watch=on_event).rawlink(listed)

        def listed(answer: Any) -> None:
            # kazoo's completion thread: hand over, return.
            if watch.cancelled:
                return
            if answer.successful():
                self._dispatcher.post(callback, sorted(answer.value))
            elif isinstance(answer.exception, kex.NoNodeError):
                self._dispatcher.post(callback, None)

        def on_event(_event: Any) -> None:
            arm()

        with translated(f"watch list {path}"):
            arm()
        return watch

    def _read_armed(self, abs_path: str, children: bool, on_event: Callable[[Any], None]) -> Any:
        """Send the read that (re-)arms a light watch: ``get_children`` or ``exists``."""
        if children:
            return self._client.get_children_async(abs_path, watch=on_event)
        return self._client.exists_async(abs_path, watch=on_event)

    def watch_seen(
        self,
        path: str,
        callback: Callable[[Seen], None],
        *,
        children: bool = False,
        on_gone: Callable[[], None] | None = None,
    ) -> Watch:
        """Like :meth:`watch_changes`, but hand over what the re-arming read saw.

        Every ZooKeeper watch has to be re-armed with a read (``exists``,
        or ``get_children`` with ``children``), and that read is the fresh
        state: the callback gets it as a :class:`Seen`, so a burst of
        events (a dead session's hundreds of ephemerals) needs no second
        read. Callbacks run on the dispatcher thread in the order of the
        reads, so the latest one holds the latest state; a later change
        fires the watch the read armed. One callback also follows the
        registration. A ``Seen`` with ``known`` False means the read
        failed: read again before trusting a cache. Watches do not survive
        a new session: register again then.

        ``on_gone``, if given, runs on kazoo's event thread the moment a
        deletion of ``path`` is notified, before the re-arming read: it is
        for sending one request at once (:meth:`create_soon`), must not
        block, and its exceptions are logged and dropped.
        """
        watch = Watch()
        abs_path = self._abs(path)

        def seen(answer: Any) -> None:
            # kazoo's completion thread, in request order: hand over, return.
            if watch.cancelled:
                return
            try:
                value = answer.get_nowait()
            except kex.NoNodeError:
                result = Seen(path, known=True)
            except Exception:  # any failure only means "unknown"
                result = Seen(path, known=False)
            else:
                if children:
                    result = Seen(path, known=True, exists=True, children=tuple(sorted(value)))
                elif value is None:
                    result = Seen(path, known=True)
                else:
                    result = Seen(
                        path, known=True, exists=True, ephemeral_owner=value.ephemeralOwner
                    )
            self._dispatcher.post(callback, result)

        def arm() -> None:
            if watch.cancelled:
                return
            self._read_armed(abs_path, children, on_event).rawlink(seen)

        def on_event(event: Any) -> None:
            # kazoo's event thread: never wait here.
            if on_gone is not None and not watch.cancelled and event.type == EventType.DELETED:
                try:
                    on_gone()
                except Exception:
                    logger.exception("on_gone hook for %s failed", path)
            arm()

        with translated(f"watch {path}"):
            arm()
        return watch

    def watch_gone(self, path: str, callback: Callable[[], None]) -> Watch:
        """Call ``callback()`` once, when ``path`` is first seen absent *after* this call.

        An ``exists`` read is sent now and arms a watch; the callback runs
        when that read finds no znode, or on the deletion the watch reports
        (re-armed after any other event). Either one is ZooKeeper's word
        that the znode was absent at a point after every request this
        session sent before the call, never a deletion from before it.
        The callback runs on one of kazoo's threads: it must be quick and
        must not wait for ZooKeeper; its exceptions are logged and dropped.
        Cancel the watch to stop it; it does not survive a new session.
        """
        watch = Watch()
        abs_path = self._abs(path)
        fired = threading.Event()

        def fire() -> None:
            if watch.cancelled or fired.is_set():
                return
            fired.set()
            try:
                callback()
            except Exception:
                logger.exception("watch_gone callback for %s failed", path)

        def seen(answer: Any) -> None:
            try:
                value = answer.get_nowait()
            except Exception:  # a failed read means nothing (the session is going)
                return
            if value is None:
                fire()

        def arm() -> None:
            if not watch.cancelled and not fired.is_set():
                self._client.exists_async(abs_path, watch=on_event).rawlink(seen)

        def on_event(event: Any) -> None:
            if event.type == EventType.DELETED:
                fire()
            elif event.type in (EventType.CREATED, EventType.CHANGED):
                arm()  # still there: wait for the next change
            # Other events (the session lost): nothing more will come.

        with translated(f"watch {path} for its deletion"):
            arm()
        return watch

    def create_soon(self, path: str, data: bytes, *, ephemeral: bool = False) -> Pending:
        """Send a create without waiting for it; :meth:`Pending.outcome` waits.

        Safe to call from kazoo's own threads (it never blocks): for sending
        a request the moment an event arrives (``watch_seen``'s ``on_gone``).
        Never raises: a request that cannot even be sent is a Pending whose
        outcome is None.
        """
        try:
            request = self._client.create_async(
                self._abs(path), data, acl=self._acls.acl_for(path), ephemeral=ephemeral
            )
        except Exception:  # not even sent (closed client, bad path): unknown
            request = None
        return Pending(request)

    def watch_children(self, path: str, callback: Callable[[list[str]], None]) -> Watch:
        """Call ``callback(sorted_children)`` now and after every change of ``path``.

        The callback runs on the coordinator's dispatcher thread, never on
        kazoo's. It gets ``[]`` while ``path`` does not exist. kazoo re-arms
        the watch across reconnects; components still re-read on reconnect
        (safety rule 2) because a change can fall between two watches.
        """
        watch = Watch()
        self.ensure(path)

        def on_children(children: list[str]) -> bool | None:
            if watch.cancelled:
                return False
            self._dispatcher.post(callback, sorted(children))
            return None

        with translated(f"watch children {path}"):
            ChildrenWatch(self._client, self._abs(path), on_children)
        return watch

    def watch_data(self, path: str, callback: Callable[[Znode | None], None]) -> Watch:
        """Call ``callback(znode_or_None)`` now and after every change of ``path``.

        Runs on the dispatcher thread; None means the znode does not exist.
        """
        watch = Watch()

        def on_data(data: bytes | None, stat: Any) -> bool | None:
            if watch.cancelled:
                return False
            node = None if stat is None else _znode(path, data or b"", stat)
            self._dispatcher.post(callback, node)
            return None

        with translated(f"watch data {path}"):
            DataWatch(self._client, self._abs(path), on_data)
        return watch


def _tx_outcome(results: Sequence[Any]) -> bool | None:
    """True: a transaction happened; False: refused by the state of a znode; None: an error."""
    failure = _first_failure(results)
    if failure is None:
        return True
    refused = (kex.NoNodeError, kex.BadVersionError, kex.NodeExistsError)
    return False if isinstance(failure[1], refused) else None


def _first_failure(results: Sequence[Any]) -> tuple[int, Exception] | None:
    """The index and error of the operation that failed a transaction (None: it succeeded)."""
    for index, result in enumerate(results):
        rolled_back = isinstance(result, (kex.RolledBackError, kex.RuntimeInconsistency))
        if isinstance(result, Exception) and not rolled_back:
            return index, result
    return None


def _znode(path: str, data: bytes, stat: Any) -> Znode:
    return Znode(
        path=path,
        data=data,
        version=stat.version,
        ephemeral_owner=stat.ephemeralOwner,
        created_zxid=stat.czxid,
        modified_ms=stat.mtime,
    )
