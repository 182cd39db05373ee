"""VIP declarations: the frozen ``Vip`` value, parsing and validation. Pure.

A VIP is declared by every node that may carry it. Validation refuses,
with a message naming the problem, everything that could later lead to an
address being plumbed where it must not be.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

from mhafail.coordination import check_name
from mhafail.errors import InvalidVipSpec

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


class VipKind(enum.Enum):
    """What a VIP is for.

    * ``LISTENER``: an injection address clients connect to.
    * ``BINDING``: an outbound source address (a Momentum binding).
    """

    LISTENER = "listener"
    BINDING = "binding"


def _address(value: object) -> IPAddress:
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return value
    if not isinstance(value, str):  # str() of a 5000-digit int raises ValueError itself
        raise InvalidVipSpec(f"invalid VIP address: a {type(value).__name__}, not text")
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidVipSpec(f"invalid VIP address {value[:64]!r}: {exc}") from exc


@attrs.frozen
class Vip:
    """One virtual IP address and how it is to be owned.

    Attributes:
        address: the IPv4 or IPv6 address.
        prefix: the network prefix length the address belongs to (for
            validation against the interface's subnet); the kernel always
            gets a host address (/32 or /128). Default /32 or /128.
        interface: the network interface to plumb it on.
        kind: listener (injection) or binding (outbound).
        binding: the binding's name (bindings only).
        preference: the *name* of the preferred node, or None. A name, not
            a flag, so that copied configs cannot make two nodes both claim
            preference.
        follow: for a listener, the binding (name or address) whose owner
            it must follow.
    """

    address: IPAddress = attrs.field(converter=_address)
    prefix: int | None = None
    interface: str = ""
    kind: VipKind = VipKind.LISTENER
    binding: str | None = None
    preference: str | None = None
    follow: str | None = None

    def __attrs_post_init__(self) -> None:
        full = self.address.max_prefixlen
        if self.prefix is None:
            object.__setattr__(self, "prefix", full)
        elif not 0 < self.prefix <= full:
            raise InvalidVipSpec(f"VIP {self.address}: prefix /{self.prefix} is not in 1-{full}")
        if self.interface and not _IFNAME_RE.fullmatch(self.interface):
            raise InvalidVipSpec(f"VIP {self.address}: invalid interface name {self.interface!r}")
        if self.kind is VipKind.BINDING:
            if not self.binding:
                raise InvalidVipSpec(f"binding VIP {self.address} needs a binding name")
            if self.follow:
                raise InvalidVipSpec(f"binding VIP {self.address} cannot follow anything")
        elif self.binding:
            raise InvalidVipSpec(f"listener VIP {self.address} cannot have a binding name")
        if self.follow and self.preference:
            raise InvalidVipSpec(
                f"VIP {self.address}: follow and preference together are ambiguous; "
                "a follower goes where its binding goes"
            )
        if self.preference is not None:
            try:
                check_name("preferred node name", self.preference)
            except ValueError as exc:
                raise InvalidVipSpec(f"VIP {self.address}: {exc}") from exc

    @property
    def key(self) -> str:
        """The address as used in ZooKeeper paths and logs (compressed form)."""
        return str(self.address)

    @property
    def network(self) -> IPNetwork:
        """The network the address belongs to, from ``prefix``."""
        return ipaddress.ip_network(f"{self.address}/{self.prefix}", strict=False)

    @property
    def family(self) -> int:
        """4 or 6."""
        return self.address.version

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (the declaration published in ZooKeeper)."""
        return {
            "address": self.key,
            "prefix": self.prefix,
            "interface": self.interface,
            "kind": self.kind.value,
            "binding": self.binding,
            "preference": self.preference,
            "follow": self.follow,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, object]) -> Vip:
        """Inverse of :meth:`to_dict`.

        Raises:
            InvalidVipSpec: a field is missing or malformed.
        """
        try:
            return cls(
                address=raw["address"],
                prefix=_prefix(raw.get("prefix")),
                interface=_opt(raw.get("interface")) or "",
                kind=VipKind(raw.get("kind", "listener")),
                binding=_opt(raw.get("binding")),
                preference=_opt(raw.get("preference")),
                follow=_opt(raw.get("follow")),
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
            if isinstance(exc, InvalidVipSpec):
                raise
            # Name the fields, not their values: a value may be huge or unprintable.
            fields = ", ".join(sorted(str(k)[:32] for k in raw))
            raise InvalidVipSpec(f"malformed VIP declaration (fields {fields}): {exc}") from exc


def _opt(value: object) -> str | None:
    """An optional text field: None, or a string (anything else is refused)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise TypeError(f"expected text, got a {type(value).__name__}")
    return value


def _prefix(value: object) -> int | None:
    """An optional prefix length: None, a small int, or up to three ASCII digits."""
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 3:
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 128:
        return value
    raise ValueError("prefix must be a number from 1 to 128")


def parse_topology(lines: Iterable[str] | Mapping[str, str]) -> dict[IPNetwork, str]:
    """Parse a Momentum-style topology map: ``CIDR -> interface`` entries.

    Accepts a mapping or lines like ``198.18.0.0/24 -> eth0`` (``#`` comments
    and blank lines ignored).

    Raises:
        InvalidVipSpec: a malformed line or CIDR, or overlapping blocks.
    """
    pairs: list[tuple[str, str]] = []
    if isinstance(lines, Mapping):
        pairs = list(lines.items())
    else:
        for number, raw in enumerate(lines, 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if "->" not in line:
                raise InvalidVipSpec(
                    f"topology line {number}: expected 'CIDR -> interface': {raw!r}"
                )
            cidr, iface = (part.strip() for part in line.split("->", 1))
            pairs.append((cidr, iface))
    result: dict[IPNetwork, str] = {}
    for cidr, iface in pairs:
        try:
            net = ipaddress.ip_network(cidr, strict=True)
        except ValueError as exc:
            raise InvalidVipSpec(f"topology: invalid block {cidr!r}: {exc}") from exc
        if not _IFNAME_RE.fullmatch(iface):
            raise InvalidVipSpec(f"topology: invalid interface name {iface!r} for {cidr}")
        if net in result:
            raise InvalidVipSpec(f"topology: block {net} is listed twice")
        result[net] = iface
    return result


def parse_vip(text: str, *, topology: Mapping[IPNetwork, str] | None = None) -> Vip:
    """Parse the command-line form ``ADDRESS[/PREFIX][@IFACE][,key=value...]``.

    Keys: ``kind=listener|binding``, ``binding=NAME``, ``prefer=NODE``,
    ``follow=BINDING``. Without ``@IFACE`` the interface comes from the
    topology block that contains the address.

    Example: ``198.18.0.200/24@eth0,prefer=n1``.

    Raises:
        InvalidVipSpec: the text does not parse or names no interface.
    """
    head, *options = text.split(",")
    iface = ""
    if "@" in head:
        head, iface = head.split("@", 1)
    address, _, prefix_text = head.partition("/")
    fields: dict[str, str] = {}
    for option in options:
        key, sep, value = option.partition("=")
        if not sep or key not in ("kind", "binding", "prefer", "follow"):
            raise InvalidVipSpec(f"VIP {text!r}: unknown option {option!r}")
        fields[key] = value
    # str.isdigit() accepts "²" and other Unicode digits that int() refuses.
    if prefix_text and not (prefix_text.isascii() and prefix_text.isdigit()):
        raise InvalidVipSpec(f"VIP {text!r}: prefix {prefix_text!r} is not a number")
    if len(prefix_text) > 3:
        raise InvalidVipSpec(f"VIP {text!r}: prefix {prefix_text!r} is not in 1-128")
    try:
        kind = VipKind(fields.get("kind", "binding" if "binding" in fields else "listener"))
    except ValueError as exc:
        raise InvalidVipSpec(f"VIP {text!r}: kind must be listener or binding") from exc
    vip = Vip(
        address=address,
        prefix=int(prefix_text) if prefix_text else None,
        interface=iface,
        kind=kind,
        binding=fields.get("binding"),
        preference=fields.get("prefer"),
        follow=fields.get("follow"),
    )
    if not vip.interface:
        vip = attrs.evolve(vip, interface=interface_for(vip, topology or {}))
    return vip


def interface_for(vip: Vip, topology: Mapping[IPNetwork, str]) -> str:
    """The interface of the most specific topology block containing ``vip``.

    Raises:
        InvalidVipSpec: no block contains the address.
    """
    blocks = [n for n in topology if n.version == vip.family and vip.address in n]
    if not blocks:
        raise InvalidVipSpec(f"VIP {vip.key}: no interface given and no topology block contains it")
    return topology[max(blocks, key=lambda n: n.prefixlen)]


def validate_vips(
    vips: Sequence[Vip],
    *,
    host_addresses: Mapping[str, Sequence[str]] | None = None,
    topology: Mapping[IPNetwork, str] | None = None,
) -> tuple[Vip, ...]:
    """Check a node's whole VIP list and return it as a tuple.

    Args:
        vips: the declarations.
        host_addresses: the host's own addresses per interface, as
            ``"addr/prefix"`` strings (from the plumber), when known.
        topology: the topology map, when one is used.

    Raises:
        InvalidVipSpec: a duplicate address or binding name, a VIP equal to
            a host's own address, an address outside its interface's subnet
            or topology block, a follower of an unknown binding, a listener
            following a binding on the same address, or no interface.
    """
    for vip in vips:
        for other in vips:
            if (
                vip.follow
                and vip.follow in (other.binding, other.key)
                and other.address == vip.address
            ):
                raise InvalidVipSpec(
                    f"listener {vip.key} follows binding {vip.follow!r} on the same address"
                )
    seen: dict[str, Vip] = {}
    bindings: dict[str, Vip] = {}
    for vip in vips:
        if not vip.interface:
            raise InvalidVipSpec(f"VIP {vip.key}: no interface")
        if vip.key in seen:
            raise InvalidVipSpec(f"VIP {vip.key} is declared twice")
        seen[vip.key] = vip
        if vip.kind is VipKind.BINDING:
            assert vip.binding is not None
            if vip.binding in bindings:
                raise InvalidVipSpec(f"binding name {vip.binding!r} is used twice")
            bindings[vip.binding] = vip
    for vip in vips:
        _check_follow(vip, seen, bindings)
        if topology:
            _check_topology(vip, topology)
        if host_addresses is not None:
            _check_against_host(vip, host_addresses)
    return tuple(vips)


def _check_follow(vip: Vip, seen: Mapping[str, Vip], bindings: Mapping[str, Vip]) -> None:
    if vip.follow is None:
        return
    target = bindings.get(vip.follow) or seen.get(vip.follow)
    if target is None or target.kind is not VipKind.BINDING:
        raise InvalidVipSpec(f"VIP {vip.key} follows unknown binding {vip.follow!r}")
    if target.address == vip.address:
        raise InvalidVipSpec(
            f"listener {vip.key} follows binding {vip.follow!r} on the same address"
        )


def _check_topology(vip: Vip, topology: Mapping[IPNetwork, str]) -> None:
    blocks = [n for n in topology if n.version == vip.family and vip.address in n]
    if not blocks:
        raise InvalidVipSpec(f"VIP {vip.key} is outside every topology block")
    expected = topology[max(blocks, key=lambda n: n.prefixlen)]
    if expected != vip.interface:
        raise InvalidVipSpec(f"VIP {vip.key}: topology puts it on {expected}, not {vip.interface}")


def _check_against_host(vip: Vip, host_addresses: Mapping[str, Sequence[str]]) -> None:
    for iface, addrs in host_addresses.items():
        for text in addrs:
            own = ipaddress.ip_interface(text)
            if own.ip == vip.address:
                raise InvalidVipSpec(
                    f"VIP {vip.key} is a host's own address (on {iface}); "
                    "mhafail would remove it on release"
                )
    own_nets = [
        ipaddress.ip_interface(a).network
        for a in host_addresses.get(vip.interface, ())
        if ipaddress.ip_interface(a).version == vip.family
        and ipaddress.ip_interface(a).network.prefixlen < vip.address.max_prefixlen
        and not ipaddress.ip_interface(a).ip.is_link_local
    ]
    if vip.interface not in host_addresses:
        raise InvalidVipSpec(f"VIP {vip.key}: interface {vip.interface} does not exist here")
    if (
        vip.prefix != vip.address.max_prefixlen
        and own_nets
        and not any(vip.address in net for net in own_nets)
    ):
        raise InvalidVipSpec(
            f"VIP {vip.key}/{vip.prefix} is outside the subnets of {vip.interface} "
            f"({', '.join(str(n) for n in own_nets)})"
        )
