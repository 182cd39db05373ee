"""ZooKeeper paths and documents of mhafail.vip (relative to the cluster root).

::

    vips/<address>/owner            ephemeral   {"node", "session", "since"}: the claim
    vips/<address>/next             ephemeral   the same: the planned successor's reservation
    vips/<address>/declared/<node>  ephemeral   the node's Vip declaration
    targets/<address>               persistent  {"node", "time"}: an explicit move
    drained/<node>                  persistent  {"node", "time"}: the node gives up its VIPs

Move targets live outside ``vips/<address>`` on purpose: nodes must be able
to create children there (claims, declarations), and ZooKeeper grants
CREATE per parent, not per child name; ``targets`` and ``drained`` are
writable by operators only (docs/security.md).

Every document here is read with a schema and size caps: a malformed one
reads as absent (logged by the caller), never as an exception.
"""

from __future__ import annotations

import json
import math
import time

import attrs

from mhafail._json import decode_object
from mhafail.coordination import check_name
from mhafail.errors import InvalidArgument

VIPS = "vips"
TARGETS = "targets"
DRAINED = "drained"

MAX_DOC_BYTES = 4096
"""Claims, targets and drain markers are a few dozen bytes."""


def owner_path(address: str) -> str:
    """The claim znode of ``address``."""
    return f"{VIPS}/{address}/owner"


def next_path(address: str) -> str:
    """The reservation znode of ``address`` (see :mod:`mhafail.vip._reserve`)."""
    return f"{VIPS}/{address}/next"


def declared_path(address: str, node: str | None = None) -> str:
    """The declarations folder of ``address``, or one node's declaration."""
    base = f"{VIPS}/{address}/declared"
    return base if node is None else f"{base}/{node}"


def target_path(address: str) -> str:
    """The explicit move target of ``address`` (operator-controlled)."""
    return f"{TARGETS}/{address}"


def drained_path(node: str | None = None) -> str:
    """The drained-nodes folder, or one node's drain marker."""
    return DRAINED if node is None else f"{DRAINED}/{node}"


@attrs.frozen
class Claim:
    """Who holds a VIP, as recorded in its claim znode."""

    node: str
    session: int
    since: float

    def to_json(self) -> bytes:
        """Encode for the claim znode."""
        return json.dumps(
            {"node": self.node, "session": f"{self.session:#x}", "since": self.since}
        ).encode()

    @classmethod
    def from_json(cls, data: bytes, session: int) -> Claim | None:
        """Decode a claim znode (None when malformed: treated as held by nobody known).

        Never raises: the claim's existence, not its content, is what
        ownership rests on; the content only names the holder.
        """
        try:
            raw = decode_object(data, what="claim", max_bytes=MAX_DOC_BYTES)
        except InvalidArgument:
            return None
        node, since = _node_field(raw), raw.get("since")
        if node is None or isinstance(since, bool) or not isinstance(since, int | float):
            return None
        try:
            since_f = float(since)
        except OverflowError:
            return None
        return cls(node=node, session=session, since=since_f) if math.isfinite(since_f) else None


def node_json(node: str) -> bytes:
    """A small ``{"node", "time"}`` document (move targets, drain markers)."""
    return json.dumps({"node": node, "time": time.time()}).encode()


def node_from_json(data: bytes) -> str | None:
    """The ``node`` field of a :func:`node_json` document or claim, or None.

    None when the document is malformed, too large (over 4 KiB) or names
    no valid node; never raises.
    """
    try:
        return _node_field(decode_object(data, what="node document", max_bytes=MAX_DOC_BYTES))
    except InvalidArgument:
        return None


def _node_field(raw: dict[str, object]) -> str | None:
    value = raw.get("node")
    if not isinstance(value, str):
        return None
    try:
        check_name("node name", value)
    except InvalidArgument:
        return None
    return value
