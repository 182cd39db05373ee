"""Client side: connect to a node over the authenticated channel and have a request accepted."""

from __future__ import annotations

import ssl
from typing import Any

import attrs

from mhafail import channel as _channel
from mhafail.errors import (
    AuthenticationFailed,
    ChannelAuthFailed,
    ChannelClosed,
    ChannelInvalidArgument,
    ChannelProtocolError,
    LogsInvalidArgument,
    ProtocolError,
)

from ._protocol import DEFAULT_MAX_FRAME, VERSION, FrameType, encode_json
from ._status import SubscriberStatus
from ._wire import Connection, PeerClosed

#: The channel service name of the log protocol.
SERVICE = "logs"


@attrs.frozen
class Opened:
    """A connection whose request the node accepted.

    Attributes:
        conn: the framed connection (close it when done).
        node: the node's name as it introduced itself.
        heartbeat: the node's heartbeat interval.
        accept: the ACCEPT document.
    """

    conn: Connection
    node: str
    heartbeat: float
    accept: dict[str, Any]


def split_endpoint(endpoint: str, *, any_port: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (IPv6 in brackets); ``any_port`` also accepts port 0.

    Raises:
        LogsInvalidArgument: it is not ``host:port`` with a valid port.
    """
    try:
        return _channel.parse_endpoint(endpoint, listen=any_port)
    except ChannelInvalidArgument as exc:
        raise LogsInvalidArgument(f"invalid endpoint: {exc}") from None


def open_request(
    endpoint: str,
    request: dict[str, Any],
    *,
    secret: bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    timeout: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    heartbeat: float = 1.0,
) -> Opened:
    """Connect to a node's log service and have ``request`` accepted.

    Args:
        endpoint: the node's ``host:port``.
        request: ``op`` and its fields (``subscriber``, ``log``, ``after``...).
        secret: the shared secret; when set, a node that does not
            authenticate is refused too (no silent downgrade). Without one
            (and without TLS) only loopback endpoints are accepted.
        ssl_context: client TLS context, if the node speaks TLS.
        server_hostname: name to check the node's certificate against.
        timeout: seconds for the connection and each handshake step.
        max_frame: the largest frame this client accepts.
        heartbeat: this client's heartbeat interval, told to the node.

    Returns:
        The accepted connection.

    Raises:
        LogsInvalidArgument: a malformed endpoint, or neither secret nor TLS
            towards a non-loopback node.
        PeerClosed: the node cannot be reached or hung up.
        StreamRefused: the node refused the request.
        AuthenticationFailed: the secrets do not match, or one side lacks one.
        ProtocolError: the node spoke something else.
    """
    split_endpoint(endpoint)
    security = _channel.ChannelSecurity(
        secret=secret, ssl_context=ssl_context, server_hostname=server_hostname
    )
    try:
        chan = _channel.connect(endpoint, SERVICE, security, timeout=timeout, max_frame=max_frame)
    except ChannelInvalidArgument as exc:
        raise LogsInvalidArgument(str(exc)) from None
    except ChannelAuthFailed as exc:
        raise AuthenticationFailed(str(exc)) from None
    except ChannelClosed as exc:
        raise PeerClosed(str(exc)) from None
    except ChannelProtocolError as exc:
        raise ProtocolError(str(exc)) from None
    conn = Connection(chan)
    try:
        doc = {**request, "proto": VERSION, "max_frame": max_frame, "heartbeat": heartbeat}
        conn.send(encode_json(FrameType.OPEN, doc), timeout)
        accept = conn.expect(FrameType.ACCEPT, timeout)
    except BaseException:
        conn.close()
        raise
    hb = accept.get("heartbeat", 1.0)
    return Opened(
        conn=conn,
        node=str(accept.get("node")),
        heartbeat=float(hb) if isinstance(hb, int | float) and 0 < hb <= 60 else 1.0,
        accept=accept,
    )


def query_status(
    endpoint: str,
    *,
    secret: bytes | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 5.0,
) -> list[SubscriberStatus]:
    """Ask a node for every subscriber's backlog in every log.

    Raises:
        PeerClosed, StreamRefused, AuthenticationFailed, ProtocolError: as
        :func:`open_request`.
    """
    opened = open_request(
        endpoint, {"op": "status"}, secret=secret, ssl_context=ssl_context, timeout=timeout
    )
    opened.conn.close()
    entries = opened.accept.get("status")
    if not isinstance(entries, list):
        raise ProtocolError("status reply lacks a status list")
    out = []
    for entry in entries:
        if isinstance(entry, dict) and "error" not in entry:
            out.append(SubscriberStatus.from_json(entry))
    return out
