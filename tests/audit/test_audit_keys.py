"""Address and CIDR parsing for audit series."""

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mhafail.audit import KeyFamily, Prefix, format_address, parse_address, parse_prefix
from mhafail.errors import AuditInvalidArgument


@given(st.integers(0, 2**32 - 1))
def test_ipv4_parse_and_format_round_trip(value: int) -> None:
    """Every IPv4 value formats to the stdlib text and parses back to itself."""
    text = format_address(value, KeyFamily.IPV4)
    assert text == str(ipaddress.IPv4Address(value))
    assert parse_address(text, KeyFamily.IPV4) == value


@given(st.integers(0, 2**128 - 1))
def test_ipv6_parse_and_format_round_trip(value: int) -> None:
    """Every IPv6 value formats to RFC 5952 text and parses back to itself."""
    text = format_address(value, KeyFamily.IPV6)
    assert parse_address(text, KeyFamily.IPV6) == value


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_prefix_matches_ipaddress_network(value: int, length: int) -> None:
    """A parsed CIDR covers exactly the addresses ipaddress says it does."""
    net = ipaddress.ip_network((value, length), strict=False)
    prefix = parse_prefix(str(net))
    assert (prefix.first, prefix.last, prefix.length) == (
        int(net.network_address),
        int(net.broadcast_address),
        length,
    )
    assert str(prefix) == str(net)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("198.18.0.1/15", "did you mean 198.18.0.0/15"),
        ("198.18.0.0/33", "larger than 32"),
        ("198.18.0/16", "four dotted octets"),
        ("198.18.00.0/16", "leading zero"),
        ("198.18.0.256", "256 > 255"),
        ("198.18.0.0/x", "not a number"),
        ("198.18.0.0/", "not a number"),
        ("2001:db8::/129", "larger than 128"),
        ("2001:db8::1/32", "host bits"),
        ("2001:db8::g", "not an IPv6 address"),
        ("fe80::1%eth0", "scope"),
        ("", "four dotted octets"),
        ("203.0.113.٣", "bad octet"),
    ],
)
def test_malformed_cidrs_are_refused_with_the_reason(text: str, fragment: str) -> None:
    """Malformed CIDRs raise AuditInvalidArgument naming what is wrong."""
    with pytest.raises(AuditInvalidArgument, match=fragment):
        parse_prefix(text)


def test_family_mismatch_is_refused() -> None:
    """Asking for an IPv4 prefix with IPv6 text is an error, not a silent miss."""
    with pytest.raises(AuditInvalidArgument, match="not an ipv4 CIDR"):
        parse_prefix("2001:db8::/32", KeyFamily.IPV4)


def test_prefix_validates_its_fields() -> None:
    """A Prefix refuses host bits, bad lengths and string families."""
    with pytest.raises(AuditInvalidArgument, match="host bits"):
        Prefix(KeyFamily.IPV4, 1, 24)
    with pytest.raises(AuditInvalidArgument, match="outside"):
        Prefix(KeyFamily.IPV4, 0, 40)
    with pytest.raises(AuditInvalidArgument, match="string"):
        Prefix(KeyFamily.STRING, 0, 0)
    assert Prefix.containing(
        parse_address("203.0.113.77", KeyFamily.IPV4), 24, KeyFamily.IPV4
    ) == parse_prefix("203.0.113.0/24")
    assert parse_address("203.0.113.77", KeyFamily.IPV4) in parse_prefix("203.0.113.0/25")
