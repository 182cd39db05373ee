"""Endpoints: ``host:port`` parsing and discovery from a membership view.

Logs managers and audit senders both find their peers the same way: every
member publishes ``{"jlog": "host:port"}``, ``{"audit": ...}`` and so on
in its ``NodeInfo.endpoints``. :func:`endpoints_in` reads one key out of a
view, checking each endpoint and skipping (with a warning) the bad ones,
so one malformed member never stops the others from being served.

This module does not import :mod:`mhafail.coordination` (so it stays free
of kazoo); anything with ``name`` and ``endpoints`` attributes will do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Protocol

from mhafail.errors import ChannelInvalidArgument

logger = logging.getLogger(__name__)

_warned: set[tuple[str, str, str]] = set()


class Member(Protocol):
    """What :func:`endpoints_in` needs of a member (``NodeInfo`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def endpoints(self) -> Mapping[str, str]: ...


def parse_endpoint(
    text: object, *, what: str = "endpoint", listen: bool = False
) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check both parts.

    Args:
        text: the endpoint.
        what: how to name it in the error.
        listen: also accept port 0 (any free port).

    Raises:
        ChannelInvalidArgument: not ``host:port``, or the port is out of range.
    """
    if not isinstance(text, str) or ":" not in text or len(text) > 300:
        raise ChannelInvalidArgument(f"{what} {text!r} must be host:port (IPv6: [addr]:port)")
    host, _, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    low = 0 if listen else 1
    if (
        not host
        or not port_text.isascii()
        or not port_text.isdigit()
        or not low <= int(port_text) <= 65535
    ):
        raise ChannelInvalidArgument(
            f"{what} {text!r} must be host:port with a port in {low}..65535 (IPv6: [addr]:port)"
        )
    return host, int(port_text)


def format_endpoint(host: str, port: int) -> str:
    """Return ``host:port``, bracketing an IPv6 address."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def endpoints_in(view: Iterable[Member], key: str, *, exclude: str | None = None) -> dict[str, str]:
    """Return ``{member name: endpoint}`` for every member publishing ``key``.

    Args:
        view: the members (a ``ClusterView``).
        key: the endpoint name (``"jlog"``, ``"audit"``...).
        exclude: a member to leave out (this node itself).

    Malformed endpoints are skipped and logged once per (member, key, value).
    """
    found: dict[str, str] = {}
    for info in view:
        endpoint = info.endpoints.get(key)
        if endpoint is None or info.name == exclude:
            continue
        try:
            parse_endpoint(endpoint, what=f"{key} endpoint of {info.name}")
        except ChannelInvalidArgument as exc:
            mark = (info.name, key, str(endpoint))
            if mark not in _warned:
                _warned.add(mark)
                logger.warning("ignoring member %s: %s", info.name, exc)
            continue
        found[info.name] = endpoint
    return found
