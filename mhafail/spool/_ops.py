"""Operator functions behind ``mhafail spool``: status, list, show, import, drain.

Reads take no lock: they may see a message that is moving, never a torn
one (files are renamed whole). Orders are znodes under ``spoolops`` that
only operators may write; the nodes' :class:`~mhafail.spool.Takeover`
loops carry them out with proper tokens.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import attrs

from mhafail.coordination import Coordinator
from mhafail.errors import MalformedData, SpoolError, SpoolInvalidArgument, UnknownMessage
from mhafail.spool._fence import read_record
from mhafail.spool._files import MSG, STATE_SUFFIX
from mhafail.spool._journal import read_journal
from mhafail.spool._message import Message, apply_state, check_id, decode_header
from mhafail.spool._paths import NodePaths, check_root, node_names
from mhafail.spool._spool import count_messages, read_message
from mhafail.spool._wal import logged
from mhafail.spool._znodes import (
    OPS,
    SPOOL,
    Order,
    TakeoverRecord,
    lock_path,
    order_path,
    parse_order,
    parse_takeover,
    read_holder,
    takeover_path,
)


@attrs.frozen
class NodeStatus:
    """One node's spool as the cluster and the shared storage see it."""

    node: str
    live: bool
    holder: str | None = None
    purpose: str | None = None
    token: int | None = None
    messages: int | None = None
    file_token: int | None = None
    takeover: TakeoverRecord | None = None
    order: Order | None = None
    journal_moved: int = 0
    journal_complete: bool = True
    problems: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = attrs.asdict(self, recurse=False)
        out["takeover"] = None if self.takeover is None else attrs.asdict(self.takeover)
        out["order"] = None if self.order is None else attrs.asdict(self.order)
        out["problems"] = list(self.problems)
        return out


def spool_status(coordinator: Coordinator, root: Path | None = None) -> list[NodeStatus]:
    """Every node's spool: lock holder and token, order, takeover, and (with ``root``) disk.

    Raises:
        CoordinationUnavailable: ZooKeeper could not be asked.
        SpoolPathConflict: ``root`` belongs to another cluster.
    """
    znodes = coordinator.znodes
    live = set(znodes.children("members") or [])
    names = set(znodes.children(SPOOL) or []) | set(znodes.children(OPS) or []) | live
    if root is not None:
        check_root(root, coordinator.cluster, create=False)
        names |= set(node_names(root))
    out = []
    records = znodes.get_many([takeover_path(n) for n in sorted(names)])
    orders = znodes.get_many([order_path(n) for n in sorted(names)])
    for node in sorted(names):
        holder = read_holder(znodes, node)
        kwargs: dict[str, Any] = {}
        problems: list[str] = []
        if root is not None:
            spool = NodePaths(root, coordinator.cluster, node).spool
            try:
                kwargs["messages"] = count_messages(spool)
                record = read_record(spool)
                kwargs["file_token"] = None if record is None else record.token
            except (SpoolError, MalformedData) as exc:
                problems.append(str(exc))
            view = read_journal(spool)
            kwargs["journal_moved"] = view.moved()
            kwargs["journal_complete"] = view.complete or not view.entries
            problems += view.problems
        out.append(
            NodeStatus(
                node=node,
                live=node in live,
                holder=None if holder is None else holder.holder,
                purpose=None if holder is None else holder.purpose,
                token=None if holder is None else holder.token,
                takeover=parse_takeover(records[takeover_path(node)]),
                order=parse_order(orders[order_path(node)]),
                problems=tuple(problems),
                **kwargs,
            )
        )
    return out


def list_messages(
    root: Path, cluster: str, node: str, *, limit: int | None = None
) -> tuple[list[Message], list[str]]:
    """The messages in ``node``'s spool, oldest first, and the files that failed validation.

    Raises:
        SpoolPathConflict: wrong cluster or layout.
    """
    paths = NodePaths(root, cluster, node).check()
    problems: list[str] = []
    messages: list[Message] = []
    try:
        names = sorted(os.listdir(paths.spool / MSG))
    except FileNotFoundError:
        names = []
    in_log = logged(paths.spool)  # acknowledged, not filed yet (or filed lately)
    for name in sorted(set(names) | in_log.keys()):
        if name.endswith(STATE_SUFFIX):
            continue
        try:
            check_id(name)
            message = _read(paths.spool, name, in_log)
        except FileNotFoundError:
            continue  # moved or finished while we looked
        except (SpoolInvalidArgument, MalformedData, OSError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        messages.append(message)
        if limit is not None and len(messages) >= limit:
            break
    return messages, problems


def _read(spool: Path, name: str, in_log: dict[str, bytes]) -> Message:
    """A message from its file, or from the commit log when it has none yet."""
    try:
        return read_message(spool / MSG / name)[0]
    except FileNotFoundError:
        if name not in in_log:
            raise
    message, _ = decode_header(in_log[name], what=f"logged message {name}")
    state = spool / MSG / (name + STATE_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        message = apply_state(message, state.read_bytes(), what=f"state file {state.name}")
    return message


def show_message(root: Path, cluster: str, node: str, message_id: str) -> Message:
    """One message of ``node``'s spool.

    Raises:
        UnknownMessage: not there.
        SpoolInvalidArgument: a malformed id.
        SpoolError: the file is malformed.
    """
    paths = NodePaths(root, cluster, node).check()
    try:
        message = _read(paths.spool, check_id(message_id), logged(paths.spool))
    except FileNotFoundError as exc:
        raise UnknownMessage(f"no message {message_id} in the spool of {node}") from exc
    except (MalformedData, OSError) as exc:
        raise SpoolError(f"message {message_id}: {exc}") from exc
    return message


def _check_node(kind: str, value: str | None) -> None:
    if value is not None:
        NodePaths(".", "c", value)  # validates the name


def order_import(coordinator: Coordinator, node: str, *, to: str | None = None) -> int:
    """Order an import of ``node``'s spool now (no grace); return the order's zxid.

    The node must be gone (not a member); the survivors' ``Takeover`` loops
    carry it out, ``to`` first if given and alive. Operators only.

    Raises:
        SpoolInvalidArgument: malformed names, or ``node`` is alive
            (drain it instead).
        AccessDenied: not an operator.
    """
    _check_node("node", node)
    _check_node("to", to)
    if node in (coordinator.znodes.children("members") or []):
        raise SpoolInvalidArgument(
            f"node {node} is alive: drain it (`mhafail spool drain {node}`) instead of importing"
        )
    return _order(coordinator, node, Order(action="import", to=to))


def order_drain(
    coordinator: Coordinator, node: str, *, to: str | None = None, clear: bool = False
) -> bool:
    """Drain ``node``'s spool to the others (planned maintenance), or clear the drain.

    A drained node releases its spool lock and takes no mail until cleared.

    Returns:
        True when something changed.

    Raises:
        SpoolInvalidArgument: malformed names.
        AccessDenied: not an operator.
    """
    _check_node("node", node)
    _check_node("to", to)
    if clear:
        current = parse_order(coordinator.znodes.get(order_path(node)))
        if current is None or current.action != "drain":
            return False
        return coordinator.znodes.delete(order_path(node))
    _order(coordinator, node, Order(action="drain", to=to))
    return True


def _order(coordinator: Coordinator, node: str, order: Order) -> int:
    znodes = coordinator.znodes
    znodes.delete(order_path(node))
    znodes.create(order_path(node), order.to_json(), makepath=True)
    created = znodes.get(order_path(node))
    return 0 if created is None else created.created_zxid


def wait_imported(
    coordinator: Coordinator, node: str, *, order: int = 0, timeout: float = 30.0
) -> TakeoverRecord | None:
    """Wait until ``node``'s spool is empty and unlocked after a takeover (or ``order``).

    Returns:
        The completed takeover record, or None if none completed in time.
    """
    end = time.monotonic() + timeout
    while True:
        record = parse_takeover(coordinator.znodes.get(takeover_path(node)))
        held = coordinator.znodes.get(lock_path(node)) is not None
        done = record is not None and record.state == "complete" and not held
        if done and record is not None and record.order >= order:
            return record
        if time.monotonic() >= end:
            return None
        time.sleep(0.1)
