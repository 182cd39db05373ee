"""The spool's znodes and their validated records.

::

    spool/<node>/lock       ephemeral  {"holder", "purpose": own|takeover, "session", "since"}
                                       its creation zxid is the fencing token
    spool/<node>/takeover   persistent {"by", "token", "state": importing|complete,
                                        "moved", "started", "finished", "order"}
    spoolops/<node>         persistent operators only: {"action": drain|import, "to", "since"}

Nodes may create and delete locks and write takeover records; only
operators may write ``spoolops`` (the ACL policy, coordination/_acl.py).
Every record is shared data: parsed with size and depth caps, and a bad
one is reported and treated as absent.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import attrs

from mhafail._json import decode_object
from mhafail.coordination import Znode, Znodes, check_name
from mhafail.errors import InvalidArgument, MalformedData

logger = logging.getLogger(__name__)

SPOOL = "spool"
OPS = "spoolops"


def lock_path(node: str) -> str:
    """The lock znode of ``node``'s spool."""
    return f"{SPOOL}/{node}/lock"


def takeover_path(node: str) -> str:
    """The takeover record of ``node``'s spool."""
    return f"{SPOOL}/{node}/takeover"


def order_path(node: str) -> str:
    """The operator's order for ``node``'s spool."""
    return f"{OPS}/{node}"


def _dumps(value: dict[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def _str(doc: dict[str, Any], key: str, what: str, *, optional: bool = False) -> Any:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise MalformedData(f"malformed {what}: {key!r} must be a string")
    return value


def _one_of(doc: dict[str, Any], key: str, allowed: tuple[str, ...], what: str) -> str:
    """The string field ``key``, which must be one of ``allowed``."""
    value: str = _str(doc, key, what)
    if value not in allowed:
        raise MalformedData(f"malformed {what}: unknown {key} {value!r}")
    return value


def _node(value: Any, what: str) -> str:
    try:
        return check_name("node name", value)
    except InvalidArgument as exc:
        raise MalformedData(f"malformed {what}: {exc}") from exc


@attrs.frozen
class LockHolder:
    """Who holds a spool's ZooKeeper lock, and the token it holds it with."""

    holder: str
    purpose: str
    session: int
    token: int

    @staticmethod
    def encode(holder: str, purpose: str, session: int) -> bytes:
        """Data for a new lock znode."""
        return _dumps(
            {"holder": holder, "purpose": purpose, "session": session, "since": time.time()}
        )

    @classmethod
    def from_znode(cls, node: Znode) -> LockHolder:
        """Parse a lock znode; the token is its creation zxid.

        Raises:
            MalformedData: the data breaks the schema.
        """
        what = f"lock znode {node.path}"
        doc = decode_object(node.data, what=what, max_bytes=4096, max_depth=1)
        purpose = _one_of(doc, "purpose", ("own", "takeover"), what)
        return cls(
            holder=_node(doc.get("holder"), what),
            purpose=purpose,
            session=node.ephemeral_owner,
            token=node.created_zxid,
        )


@attrs.frozen
class TakeoverRecord:
    """The state of the latest takeover of a spool."""

    by: str
    token: int
    state: str
    moved: int = 0
    started: float = 0.0
    finished: float | None = None
    order: int = 0

    def to_json(self) -> bytes:
        """Serialise for the znode."""
        return _dumps(attrs.asdict(self))

    @classmethod
    def from_znode(cls, node: Znode) -> TakeoverRecord:
        """Parse a takeover znode.

        Raises:
            MalformedData: the data breaks the schema.
        """
        what = f"takeover znode {node.path}"
        doc = decode_object(node.data, what=what, max_bytes=4096, max_depth=1)
        state = _one_of(doc, "state", ("importing", "complete"), what)
        ints = [doc.get(k, 0) for k in ("token", "moved", "order")]
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in ints):
            raise MalformedData(f"malformed {what}: token, moved and order must be integers")
        started, finished = doc.get("started", 0.0), doc.get("finished")
        if not isinstance(started, int | float) or not (
            finished is None or isinstance(finished, int | float)
        ):
            raise MalformedData(f"malformed {what}: bad times")
        return cls(
            by=_node(doc.get("by"), what),
            token=ints[0],
            state=state,
            moved=ints[1],
            started=float(started),
            finished=None if finished is None else float(finished),
            order=ints[2],
        )


@attrs.frozen
class Order:
    """An operator's order for one node's spool.

    Attributes:
        action: ``drain`` (the node releases its spool, the others import
            it, and it takes no mail until the order is cleared) or
            ``import`` (take over a dead node's spool now, without grace).
        to: the node that should import it (None: placement decides).
        zxid: the order's creation zxid (an import is done once per order).
    """

    action: str
    to: str | None
    zxid: int = 0

    def to_json(self) -> bytes:
        """Serialise for the znode."""
        return _dumps({"action": self.action, "to": self.to, "since": time.time()})

    @classmethod
    def from_znode(cls, node: Znode) -> Order:
        """Parse an order znode.

        Raises:
            MalformedData: the data breaks the schema.
        """
        what = f"order znode {node.path}"
        doc = decode_object(node.data, what=what, max_bytes=4096, max_depth=1)
        action = _str(doc, "action", what)
        if action not in ("drain", "import"):
            raise MalformedData(f"malformed {what}: unknown action {action!r}")
        to = doc.get("to")
        return cls(
            action=action, to=None if to is None else _node(to, what), zxid=node.created_zxid
        )


def read_holder(znodes: Znodes, node: str) -> LockHolder | None:
    """The holder of ``node``'s spool lock; None when free or malformed (reported)."""
    found = znodes.get(lock_path(node))
    if found is None:
        return None
    try:
        return LockHolder.from_znode(found)
    except MalformedData as exc:
        logger.warning("%s; treating the lock as held by nobody we know", exc)
        return LockHolder(
            holder="?", purpose="own", session=found.ephemeral_owner, token=found.created_zxid
        )


def parse_takeover(found: Znode | None) -> TakeoverRecord | None:
    """A takeover record, or None when absent or malformed (reported)."""
    if found is None:
        return None
    try:
        return TakeoverRecord.from_znode(found)
    except MalformedData as exc:
        logger.warning("%s (ignored)", exc)
        return None


def parse_order(found: Znode | None) -> Order | None:
    """An order, or None when absent or malformed (reported)."""
    if found is None:
        return None
    try:
        return Order.from_znode(found)
    except MalformedData as exc:
        logger.warning("%s (ignored)", exc)
        return None
