"""NodeSettings: where one cluster node finds ZooKeeper, its secrets, storage and VIPs."""

from __future__ import annotations

import argparse
import ipaddress
import math
from collections.abc import Iterable
from pathlib import Path

import attrs

from mhafail.errors import InvalidArgument
from mhafail.spool import NodePaths
from mhafail.vip import RebalancePolicy, Vip, parse_vip


def _vips(values: object) -> tuple[Vip, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, list | tuple):
        raise InvalidArgument(f"vips {values!r}: must be a list of VIP specs")
    return tuple(v if isinstance(v, Vip) else parse_vip(str(v)) for v in values)


def _names(values: Iterable[str]) -> tuple[str, ...]:
    if isinstance(values, str | bytes):
        raise InvalidArgument(f"managers {values!r}: must be a list of names")
    return tuple(values)


def _rebalance(value: object) -> RebalancePolicy:
    return value if isinstance(value, RebalancePolicy) else RebalancePolicy.parse(str(value))


def _optional_path(value: object) -> Path | None:
    return None if value is None else Path(str(value))


def _address(_instance: object, _attribute: object, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise InvalidArgument(f"address {value!r}: must be this node's own IP address") from None


def _plumber(_instance: object, _attribute: object, value: str) -> None:
    if value != "netlink" and not (value.startswith("fake:") and len(value) > len("fake:")):
        raise InvalidArgument(f"plumber {value!r}: use netlink, or fake:PATH (tests, demos)")


def _seconds(_instance: object, attribute: attrs.Attribute[float], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{attribute.name} {value!r}: must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{attribute.name} {value!r}: must be positive and finite")


@attrs.frozen(kw_only=True)
class NodeSettings:
    """One node's deployment settings: the input of :class:`NodeServices`.

    Build it from the command line with :meth:`add_arguments` and
    :meth:`from_args`, or directly. Everything is checked here, before
    anything starts.

    Args:
        zk: ZooKeeper ``host:port[,...]``.
        cluster: the cluster name (``mhafail init``).
        node: this node's name.
        address: this node's own IP address (not a VIP): the git, jlog and
            audit ports listen there, and mail leaves from it while the
            node owns no binding VIP.
        root: the shared storage root (spools, jlogs).
        config_dir: this node's config directory (needed for a config
            repository).
        zk_auth: the node credentials file (``mhafail zk credentials``).
        open_acl: run without ZooKeeper credentials and ACLs (a throwaway
            ZooKeeper in tests); exactly one of ``zk_auth`` and ``open_acl``.
        secret_file: the cluster secret for the jlog and audit ports.
        vips: the VIPs this node may carry (specs or :class:`Vip` values).
        managers: log manager names (a jlog subscriber each).
        plumber: ``netlink``, or ``fake:PATH`` for the fake plumber
            (``mhafail.testing``; loopback tests and demos).
        rebalance: ``immediate``, ``never`` or ``after:SECONDS``.
        session_timeout: the ZooKeeper session timeout asked for.
        grace: seconds a node must be gone before its spool is taken over.

    Raises:
        InvalidArgument: a malformed value (its message names it);
            ``InvalidVipSpec`` for a VIP or rebalance policy,
            ``SpoolInvalidArgument`` for a cluster or node name.
    """

    zk: str
    cluster: str
    node: str
    address: str = attrs.field(validator=_address)
    root: Path = attrs.field(converter=Path)
    config_dir: Path | None = attrs.field(default=None, converter=_optional_path)
    zk_auth: Path | None = attrs.field(default=None, converter=_optional_path)
    open_acl: bool = False
    secret_file: Path | None = attrs.field(default=None, converter=_optional_path)
    vips: tuple[Vip, ...] = attrs.field(default=(), converter=_vips)
    managers: tuple[str, ...] = attrs.field(default=(), converter=_names)
    plumber: str = attrs.field(default="netlink", validator=_plumber)
    rebalance: RebalancePolicy = attrs.field(
        factory=lambda: RebalancePolicy.after(30.0), converter=_rebalance
    )
    session_timeout: float = attrs.field(default=10.0, validator=_seconds)
    grace: float = attrs.field(default=10.0, validator=_seconds)

    def __attrs_post_init__(self) -> None:
        if not self.zk.strip():
            raise InvalidArgument("zk: name at least one ZooKeeper host:port")
        if (self.zk_auth is None) != self.open_acl:
            raise InvalidArgument(
                "ZooKeeper credentials: give a credentials file (zk_auth, --zk-auth) or "
                "choose an open cluster (open_acl, --zk-open), exactly one of them"
            )
        NodePaths(self.root, self.cluster, self.node)  # checks both names, touches nothing

    @property
    def paths(self) -> NodePaths:
        """This node's directories on the shared storage."""
        return NodePaths(self.root, self.cluster, self.node)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the standard node options (``--zk``, ``--node``, ``--vip``, ...) to ``parser``.

        Change a default with ``parser.set_defaults(session_timeout=3.0)``.
        """
        add = parser.add_argument
        add("--zk", required=True, help="ZooKeeper host:port[,...]")
        add("--cluster", required=True, help="the cluster name")
        add("--zk-auth", help="node credentials file (mhafail zk credentials)")
        add("--zk-open", action="store_true", help="no ZooKeeper ACLs (throwaway test servers)")
        add("--secret-file", help="cluster secret for the jlog and audit ports")
        add("--node", required=True, help="this node's name")
        add("--address", required=True, help="this node's own address (not a VIP)")
        add("--vip", action="append", default=[], help="ADDR/PREFIX@IFACE[,...] (repeat)")
        add("--root", required=True, help="shared storage root (spools, jlogs)")
        add("--config-dir", help="this node's config directory")
        add("--manager", action="append", default=[], help="log manager name (repeat)")
        add("--plumber", default="netlink", help="netlink, or fake:PATH on loopback")
        add("--rebalance", default="after:30", help="immediate, never or after:SECONDS")
        add("--session-timeout", type=float, default=10.0, help="ZooKeeper session, seconds")
        add("--grace", type=float, default=10.0, help="seconds gone before a spool takeover")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> NodeSettings:
        """The settings from options added by :meth:`add_arguments`.

        Raises:
            InvalidArgument: as the constructor.
        """
        return cls(
            zk=args.zk,
            cluster=args.cluster,
            node=args.node,
            address=args.address,
            root=args.root,
            config_dir=args.config_dir,
            zk_auth=args.zk_auth,
            open_acl=args.zk_open,
            secret_file=args.secret_file,
            vips=list(args.vip),
            managers=tuple(args.manager),
            plumber=args.plumber,
            rebalance=args.rebalance,
            session_timeout=args.session_timeout,
            grace=args.grace,
        )
