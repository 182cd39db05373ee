"""Key families, address parsing and CIDR prefixes (pure: no I/O).

An audit series counts keys of one family: IPv4 addresses, IPv6 addresses
or arbitrary strings. Addresses are stored as plain ``int`` values (an IPv4
address is a 32-bit integer, an IPv6 address a 128-bit one) because ints
hash and shift at C speed; strings are stored as they are.

Parsing is strict on purpose: a CIDR with host bits set, an octet with a
leading zero or an IPv6 scope id is refused with a message that names the
problem, where Momentum silently matched nothing.
"""

from __future__ import annotations

import enum
import ipaddress

import attrs

from mhafail.errors import AuditInvalidArgument

__all__ = [
    "KeyFamily",
    "Prefix",
    "format_address",
    "parse_address",
    "parse_prefix",
]


class KeyFamily(enum.Enum):
    """What the keys of a series are.

    ``IPV4`` and ``IPV6`` keys are addresses that CIDR prefixes can select;
    ``STRING`` keys (sender domains, usernames, ...) can only be counted
    exactly.
    """

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    STRING = "string"

    @property
    def width(self) -> int:
        """Bits in an address of this family (0 for ``STRING``)."""
        return _WIDTHS[self]


_WIDTHS = {KeyFamily.IPV4: 32, KeyFamily.IPV6: 128, KeyFamily.STRING: 0}
_DIGITS = frozenset("0123456789")


def _parse_ipv4(text: str) -> int:
    # Hand-rolled because ipaddress.IPv4Address() costs ~1.5 us per call and
    # string keys arrive on every SMTP connection.
    parts = text.split(".")
    if len(parts) != 4:
        raise AuditInvalidArgument(f"{text!r} is not an IPv4 address (need four dotted octets)")
    value = 0
    for part in parts:
        if not part or len(part) > 3 or not _DIGITS.issuperset(part):
            raise AuditInvalidArgument(f"{text!r} is not an IPv4 address (bad octet {part!r})")
        if len(part) > 1 and part[0] == "0":
            # Leading zeros are octal to inet_aton and decimal to others: refuse the ambiguity.
            raise AuditInvalidArgument(
                f"{text!r} is not an IPv4 address (octet {part!r} has a leading zero)"
            )
        octet = int(part)
        if octet > 255:
            raise AuditInvalidArgument(f"{text!r} is not an IPv4 address (octet {octet} > 255)")
        value = (value << 8) | octet
    return value


def _parse_ipv6(text: str) -> int:
    if "%" in text:
        raise AuditInvalidArgument(f"{text!r}: IPv6 scope ids are not allowed in audit keys")
    try:
        return int(ipaddress.IPv6Address(text))
    except ipaddress.AddressValueError as exc:
        raise AuditInvalidArgument(f"{text!r} is not an IPv6 address ({exc})") from None


def parse_address(text: str, family: KeyFamily) -> int:
    """Parse one address of ``family`` into its integer value.

    Args:
        text: the address, e.g. ``"203.0.113.7"`` or ``"2001:db8::1"``.
        family: ``KeyFamily.IPV4`` or ``KeyFamily.IPV6``.

    Returns:
        The address as an unsigned integer.

    Raises:
        AuditInvalidArgument: ``text`` is not an address of that family, or
            ``family`` is ``STRING``.
    """
    if not isinstance(text, str):
        raise AuditInvalidArgument(f"address must be a str, not {type(text).__name__}")
    if family is KeyFamily.IPV4:
        return _parse_ipv4(text)
    if family is KeyFamily.IPV6:
        return _parse_ipv6(text)
    raise AuditInvalidArgument("string series have no addresses to parse")


def format_address(value: int, family: KeyFamily) -> str:
    """Return the usual text form of an address value.

    Args:
        value: the address as an integer.
        family: its family (``IPV4`` or ``IPV6``).

    Returns:
        Dotted quad for IPv4, RFC 5952 compressed form for IPv6.

    Raises:
        AuditInvalidArgument: ``family`` is ``STRING``.
    """
    if family is KeyFamily.IPV4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    if family is KeyFamily.IPV6:
        return str(ipaddress.IPv6Address(value))
    raise AuditInvalidArgument("string series have no addresses to format")


@attrs.frozen(order=True)
class Prefix:
    """A CIDR prefix: an address family, a network value and a length.

    ``value`` has every host bit clear; ``Prefix`` values sort by family,
    then address, then length (so a network sorts before its subnets).

    Attributes:
        family: ``IPV4`` or ``IPV6``.
        value: the network address as an integer.
        length: the prefix length, 0..32 or 0..128.
    """

    family: KeyFamily = attrs.field(order=lambda f: f.width)
    value: int
    length: int

    def __attrs_post_init__(self) -> None:
        width = self.family.width
        if width == 0:
            raise AuditInvalidArgument("string series have no CIDR prefixes")
        if not 0 <= self.length <= width:
            raise AuditInvalidArgument(f"prefix length {self.length} is outside 0..{width}")
        if not 0 <= self.value < (1 << width):
            raise AuditInvalidArgument(f"address value {self.value} does not fit in {width} bits")
        if self.value & ((1 << (width - self.length)) - 1):
            raise AuditInvalidArgument(
                f"{format_address(self.value, self.family)}/{self.length} has host bits set"
            )

    @classmethod
    def containing(cls, key: int, length: int, family: KeyFamily) -> Prefix:
        """Return the prefix of ``length`` bits that contains address ``key``."""
        shift = family.width - length
        return cls(family, (key >> shift) << shift, length)

    @property
    def first(self) -> int:
        """The lowest address in the prefix."""
        return self.value

    @property
    def last(self) -> int:
        """The highest address in the prefix."""
        return self.value | ((1 << (self.family.width - self.length)) - 1)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.value <= key <= self.last

    def __str__(self) -> str:
        return f"{format_address(self.value, self.family)}/{self.length}"


def parse_prefix(text: str, family: KeyFamily | None = None) -> Prefix:
    """Parse a CIDR (``"198.18.0.0/15"``) or a bare address (a /32 or /128).

    Args:
        text: the CIDR text.
        family: the family it must be; ``None`` guesses from the text
            (a ``:`` means IPv6).

    Returns:
        The prefix.

    Raises:
        AuditInvalidArgument: the text does not parse, the length is out
            of range, host bits are set, or the family does not match.
    """
    if not isinstance(text, str):
        raise AuditInvalidArgument(f"CIDR must be a str, not {type(text).__name__}")
    guessed = KeyFamily.IPV6 if ":" in text else KeyFamily.IPV4
    if family is not None and family is not guessed:
        raise AuditInvalidArgument(f"{text!r} is not an {family.value} CIDR")
    address, slash, length_text = text.partition("/")
    value = parse_address(address, guessed)
    width = guessed.width
    if not slash:
        return Prefix(guessed, value, width)
    if not length_text or not _DIGITS.issuperset(length_text) or len(length_text) > 3:
        raise AuditInvalidArgument(f"{text!r}: prefix length {length_text!r} is not a number")
    length = int(length_text)
    if length > width:
        raise AuditInvalidArgument(f"{text!r}: prefix length {length} is larger than {width}")
    host_mask = (1 << (width - length)) - 1
    if value & host_mask:
        network = format_address(value & ~host_mask, guessed)
        raise AuditInvalidArgument(f"{text!r} has host bits set; did you mean {network}/{length}?")
    return Prefix(guessed, value, length)
