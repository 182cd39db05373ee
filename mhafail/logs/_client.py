"""Client side of the handshake: connect to a node, authenticate, send a request."""

from __future__ import annotations

import contextlib
import socket
import ssl
from typing import Any

import attrs

from mhafail.errors import AuthenticationFailed, LogsInvalidArgument, ProtocolError

from . import _auth
from ._protocol import DEFAULT_MAX_FRAME, VERSION, FrameType, encode_json
from ._status import SubscriberStatus
from ._wire import Connection, PeerClosed


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
    host, sep, port = endpoint.rpartition(":")
    host = host.strip("[]")
    low = 0 if any_port else 1
    if not sep or not host or not port.isdigit() or not low <= int(port) < 65536:
        raise LogsInvalidArgument(f"invalid endpoint {endpoint!r}: expected host:port")
    return host, int(port)


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
            authenticate is refused too (no silent downgrade).
        ssl_context: client TLS context, if the node speaks TLS.
        server_hostname: name to check the node's certificate against.
        timeout: seconds for the connection and each handshake step.
        max_frame: the largest frame this client accepts.
        heartbeat: this client's heartbeat interval, told to the node.

    Returns:
        The accepted connection.

    Raises:
        PeerClosed: the node cannot be reached or hung up.
        StreamRefused: the node refused the request.
        AuthenticationFailed: the secrets do not match, or one side lacks one.
        ProtocolError: the node spoke something else.
    """
    host, port = split_endpoint(endpoint)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise PeerClosed(f"{endpoint}: cannot connect: {exc}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if ssl_context is not None:
            sock = ssl_context.wrap_socket(sock, server_hostname=server_hostname or host)
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise PeerClosed(f"{endpoint}: TLS handshake failed: {exc}") from None
    conn = Connection(sock, max_frame=max_frame, peer=endpoint)
    try:
        return _handshake(
            conn,
            request=request,
            secret=secret,
            timeout=timeout,
            max_frame=max_frame,
            heartbeat=heartbeat,
        )
    except BaseException:
        conn.close()
        raise


def _handshake(
    conn: Connection,
    *,
    request: dict[str, Any],
    secret: bytes | None,
    timeout: float,
    max_frame: int,
    heartbeat: float,
) -> Opened:
    hello = conn.expect(FrameType.HELLO, timeout)
    if hello.get("proto") != VERSION:
        raise ProtocolError(f"node speaks protocol {hello.get('proto')!r}, not {VERSION}")
    node_nonce = hello.get("nonce")
    auth = hello.get("auth")
    doc = {**request, "proto": VERSION, "max_frame": max_frame, "heartbeat": heartbeat}
    client_nonce = _auth.new_nonce()
    if secret is not None:
        if auth != "hmac" or not isinstance(node_nonce, str):
            raise AuthenticationFailed(
                f"{conn.peer} does not authenticate managers, but a secret is configured"
            )
        doc["nonce"] = client_nonce
        doc["mac"] = _auth.client_mac(secret, node_nonce, client_nonce, doc)
    conn.send(encode_json(FrameType.OPEN, doc), timeout)
    try:
        accept = conn.expect(FrameType.ACCEPT, timeout)
    except Exception as exc:
        from mhafail.errors import StreamRefused

        if isinstance(exc, StreamRefused) and exc.reason.startswith("authentication"):
            raise AuthenticationFailed(f"{conn.peer}: {exc.reason}") from None
        raise
    if secret is not None:
        assert isinstance(node_nonce, str)
        if not _auth.verify(_auth.node_mac(secret, node_nonce, client_nonce), accept.get("mac")):
            raise AuthenticationFailed(f"{conn.peer} failed to prove it knows the secret")
    node = hello.get("node")
    hb = hello.get("heartbeat", 1.0)
    return Opened(
        conn=conn,
        node=str(node),
        heartbeat=float(hb) if isinstance(hb, int | float) and hb > 0 else 1.0,
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
    with contextlib.closing(opened.conn):
        entries = opened.accept.get("status")
    if not isinstance(entries, list):
        raise ProtocolError("status reply lacks a status list")
    out = []
    for entry in entries:
        if isinstance(entry, dict) and "error" not in entry:
            out.append(SubscriberStatus.from_json(entry))
    return out
