"""Validation of the names and addresses users hand to the coordinator.

Pure functions: no I/O. Every refusal is an :class:`InvalidArgument` whose
message names the argument, the value and the rule it broke.
"""

from __future__ import annotations

import re

from mhafail.errors import InvalidArgument

# Names become znode path segments and file names on managers: keep them to a
# portable alphabet, start with a letter or digit, and bound their length.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_HOST_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a valid cluster or node name.

    Args:
        kind: what the name is for, used in the error message ("cluster name").
        value: the name to check.

    Raises:
        InvalidArgument: the name is empty, too long, or has characters
            outside ``A-Z a-z 0-9 . _ -`` (first character a letter or digit).
    """
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise InvalidArgument(
            f"invalid {kind} {value!r}: use 1-63 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return value


def parse_hosts(hosts: str) -> tuple[tuple[str, int], ...]:
    """Parse a ZooKeeper connection string ``host:port[,host:port...]``.

    The port defaults to 2181 when omitted. IPv6 hosts go in brackets
    (``[::1]:2181``). A chroot suffix (``/path``) is refused because mhafail
    manages its own root (``/mhafail/<cluster>``).

    Returns:
        The (host, port) pairs in the order given.

    Raises:
        InvalidArgument: the string is empty, has an empty entry, a chroot,
            a malformed host or a port outside 1-65535.
    """
    if not isinstance(hosts, str) or not hosts.strip():
        raise InvalidArgument("invalid ZooKeeper hosts '': expected host:port[,host:port...]")
    if "/" in hosts:
        raise InvalidArgument(
            f"invalid ZooKeeper hosts {hosts!r}: no chroot allowed, "
            "mhafail keeps everything under /mhafail/<cluster> itself"
        )
    result: list[tuple[str, int]] = []
    for raw in hosts.split(","):
        entry = raw.strip()
        if not entry:
            raise InvalidArgument(f"invalid ZooKeeper hosts {hosts!r}: empty entry")
        host, port = _split_host_port(entry, hosts)
        result.append((host, port))
    return tuple(result)


def _split_host_port(entry: str, whole: str) -> tuple[str, int]:
    if entry.startswith("["):
        close = entry.find("]")
        host, rest = entry[: close + 1], entry[close + 1 :]
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
    elif entry.count(":") == 1:
        host, port_text = entry.split(":")
    elif ":" not in entry:
        host, port_text = entry, ""
    else:
        host, port_text = entry, None  # bare IPv6 without brackets: ambiguous
    if port_text is None or not _HOST_RE.fullmatch(host):
        raise InvalidArgument(
            f"invalid ZooKeeper hosts {whole!r}: malformed entry {entry!r} "
            "(expected host:port, IPv6 as [addr]:port)"
        )
    if port_text == "":
        return host, 2181
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidArgument(
            f"invalid ZooKeeper hosts {whole!r}: port {port_text!r} is not in 1-65535"
        )
    return host, int(port_text)


def format_hosts(pairs: tuple[tuple[str, int], ...]) -> str:
    """Return the connection string for parsed ``(host, port)`` pairs."""
    return ",".join(f"{host}:{port}" for host, port in pairs)
