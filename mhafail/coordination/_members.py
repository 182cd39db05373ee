"""Node identity (NodeInfo) and the cluster view (ClusterView): frozen values."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from mhafail.coordination._names import check_name
from mhafail.errors import InvalidArgument


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
        """Decode a member znode.

        Raises:
            InvalidArgument: the data is not a NodeInfo document.
        """
        try:
            raw = json.loads(data)
            known = {f.name for f in attrs.fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise InvalidArgument(f"malformed member info: {exc}") from exc


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
