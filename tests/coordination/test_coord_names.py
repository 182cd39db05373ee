"""Unit tests for name and hosts-string validation."""

import pytest

from mhafail.coordination import check_name, parse_hosts
from mhafail.errors import InvalidArgument


def test_hosts_string_is_parsed_with_default_port() -> None:
    """A hosts string yields (host, port) pairs, 2181 when the port is omitted."""
    assert parse_hosts("127.0.0.1:2181,zk2,[::1]:2182") == (
        ("127.0.0.1", 2181),
        ("zk2", 2181),
        ("[::1]", 2182),
    )


@pytest.mark.parametrize(
    ("hosts", "fragment"),
    [
        ("", "expected host:port"),
        ("a:1,,b:2", "empty entry"),
        ("a:0", "not in 1-65535"),
        ("a:70000", "not in 1-65535"),
        ("a:x", "not in 1-65535"),
        ("a:1/chroot", "no chroot"),
        ("::1:2181", "malformed entry"),
        ("bad host:1", "malformed entry"),
    ],
)
def test_malformed_hosts_are_refused_with_the_reason(hosts: str, fragment: str) -> None:
    """Each malformed hosts string raises InvalidArgument naming what is wrong."""
    with pytest.raises(InvalidArgument, match=fragment):
        parse_hosts(hosts)


@pytest.mark.parametrize("name", ["n1", "mta-01", "a.b_c", "9x"])
def test_good_names_pass(name: str) -> None:
    """Names from the portable alphabet are accepted unchanged."""
    assert check_name("node name", name) == name


@pytest.mark.parametrize("name", ["", "-x", ".", "..", "a/b", "a b", "x" * 64, "é"])
def test_bad_names_are_refused(name: str) -> None:
    """Empty, too long, or names with path or odd characters raise InvalidArgument."""
    with pytest.raises(InvalidArgument, match="invalid node name"):
        check_name("node name", name)


def test_invalid_argument_is_a_value_error() -> None:
    """Bad-input errors can be caught as ValueError too."""
    with pytest.raises(ValueError):
        parse_hosts("")
