"""Node identity (NodeInfo) and the cluster view (ClusterView): frozen values."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from mhafail._json import decode_object
from mhafail.coordination._names import check_name
from mhafail.errors import InvalidArgument, MalformedData

# Caps for a member znode written by another process (safety rule 8).
MAX_MEMBER_BYTES = 16 * 1024
MAX_LIST_ITEMS = 64
MAX_ENDPOINTS = 32
MAX_TEXT = 255


def _str_tuple(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def _sorted_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    return dict(sorted(value.items()))


def _valid_node_name(_: object, __: object, value: str) -> None:
    check_name("node name", value)


@attrs.frozen
class NodeInfo:
    """What a node tells the cluster about itself (``members/<name>``).

    Attributes:
        name: the node name (unique in the cluster).
        addresses: the node's own addresses, e.g. where its services listen.
        interfaces: the network interfaces it manages (for VIPs).
        roles: free-form roles ("mta", "manager", ...).
        version: the application's version string.
        started_at: wall-clock start time (seconds since the epoch).
        host: the host name the process runs on.
        pid: the process id; with ``host`` it lets a restarted node tell its
            own dead predecessor from another live process.
        endpoints: named service endpoints ("git" -> "198.18.0.11:9418").
    """

    name: str = attrs.field(validator=_valid_node_name)
    addresses: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    interfaces: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    roles: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    version: str = ""
    started_at: float = 0.0
    host: str = ""
    pid: int = 0
    endpoints: Mapping[str, str] = attrs.field(factory=dict, converter=_sorted_dict)

    def to_json(self) -> bytes:
        """Encode for the member znode."""
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> NodeInfo:
        """Decode a member znode, checking every field's type and size.

        Unknown keys are ignored (a newer peer may add some); missing ones
        take their defaults, except ``name``.

        Raises:
            MalformedData: (an InvalidArgument) the data is not a NodeInfo
                document within the caps: at most 16 KiB, lists of at most
                64 strings, 32 endpoints, 255 characters per string.
        """
        raw = decode_object(data, what="member info", max_bytes=MAX_MEMBER_BYTES)
        try:
            return cls(
                name=_text(raw, "name", required=True),
                addresses=_texts(raw, "addresses"),
                interfaces=_texts(raw, "interfaces"),
                roles=_texts(raw, "roles"),
                version=_text(raw, "version"),
                started_at=_number(raw, "started_at"),
                host=_text(raw, "host"),
                pid=_pid(raw),
                endpoints=_endpoints(raw),
            )
        except MalformedData:
            raise
        except InvalidArgument as exc:  # the node name rule
            raise MalformedData(f"malformed member info: {exc}") from exc


def _bad(field: str, rule: str) -> MalformedData:
    return MalformedData(f"malformed member info: {field} {rule}")


def _text(raw: Mapping[str, Any], field: str, *, required: bool = False) -> str:
    value = raw.get(field, None if required else "")
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise _bad(field, f"must be a string of at most {MAX_TEXT} characters")
    return value


def _texts(raw: Mapping[str, Any], field: str) -> tuple[str, ...]:
    value = raw.get(field, [])
    if (
        not isinstance(value, list)
        or len(value) > MAX_LIST_ITEMS
        or not all(isinstance(v, str) and len(v) <= MAX_TEXT for v in value)
    ):
        raise _bad(field, f"must be a list of at most {MAX_LIST_ITEMS} short strings")
    return tuple(value)


def _number(raw: Mapping[str, Any], field: str) -> float:
    value = raw.get(field, 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(field, "must be a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise _bad(field, "is out of range") from exc
    if not math.isfinite(number):
        raise _bad(field, "must be finite")
    return number


def _pid(raw: Mapping[str, Any]) -> int:
    value = raw.get("pid", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise _bad("pid", "must be an integer in 0 to 2**31-1")
    return value


def _endpoints(raw: Mapping[str, Any]) -> dict[str, str]:
    value = raw.get("endpoints", {})
    if (
        not isinstance(value, dict)
        or len(value) > MAX_ENDPOINTS
        or not all(
            len(k) <= MAX_TEXT and isinstance(v, str) and len(v) <= MAX_TEXT
            for k, v in value.items()
        )
    ):
        raise _bad("endpoints", f"must map at most {MAX_ENDPOINTS} names to short strings")
    return dict(value)


@attrs.frozen
class ClusterView:
    """The live members of the cluster at one moment.

    Attributes:
        members: NodeInfo per node name, sorted by name.
        generation: increases by one with every change this process saw.
    """

    members: Mapping[str, NodeInfo] = attrs.field(factory=dict, converter=_sorted_dict)
    generation: int = 0

    @property
    def names(self) -> tuple[str, ...]:
        """The live node names, sorted."""
        return tuple(self.members)

    def __contains__(self, name: object) -> bool:
        return name in self.members

    def __iter__(self) -> Iterator[NodeInfo]:
        return iter(self.members.values())

    def __len__(self) -> int:
        return len(self.members)

    def get(self, name: str) -> NodeInfo | None:
        """Return the member called ``name``, or None if it is not live."""
        return self.members.get(name)
