"""ZooKeeper paths and documents of mhafail.vip (relative to the cluster root).

::

    vips/<address>/owner            ephemeral   {"node", "session", "since"}: the claim
    vips/<address>/declared/<node>  ephemeral   the node's Vip declaration
    vips/<address>/target           persistent  {"node", "time"}: an explicit move
    drained/<node>                  persistent  {"time"}: the node gives up its VIPs
"""

from __future__ import annotations

import json
import time

import attrs

VIPS = "vips"
DRAINED = "drained"


def owner_path(address: str) -> str:
    """The claim znode of ``address``."""
    return f"{VIPS}/{address}/owner"


def declared_path(address: str, node: str | None = None) -> str:
    """The declarations folder of ``address``, or one node's declaration."""
    base = f"{VIPS}/{address}/declared"
    return base if node is None else f"{base}/{node}"


def target_path(address: str) -> str:
    """The explicit move target of ``address``."""
    return f"{VIPS}/{address}/target"


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
        """Decode a claim znode (None when unreadable: treated as held by nobody known)."""
        try:
            raw = json.loads(data)
            return cls(node=str(raw["node"]), session=session, since=float(raw["since"]))
        except (ValueError, KeyError, TypeError):
            return None


def node_json(node: str) -> bytes:
    """A small ``{"node", "time"}`` document (move targets, drain markers)."""
    return json.dumps({"node": node, "time": time.time()}).encode()


def node_from_json(data: bytes) -> str | None:
    """The ``node`` field of a :func:`node_json` document, or None."""
    try:
        value = json.loads(data)["node"]
    except (ValueError, KeyError, TypeError):
        return None
    return str(value)
