"""The wire format of cluster-wide series: length-prefixed JSON frames over TCP.

Every frame is a 4-byte big-endian length followed by that many bytes of
UTF-8 JSON holding one object. A sender opens one connection per receiver
and sends one request at a time; the receiver answers every request with
one reply frame before reading the next.

Requests (``v`` is :data:`PROTOCOL_VERSION`)::

    {"v": 1, "type": "hello", "origin": {"node": N, "incarnation": I}, "series": [names]}
    {"v": 1, "type": "push", "origin": {...}, "items": [{"snapshot": bool, "batch": {...}}]}

Replies::

    {"ok": true, "receiver": {"node": N, "incarnation": I},
     "series": {name: {"last_seq": S} | {"last_seq": S, "error": "..."}}}
    {"ok": false, "error": "..."}         then the receiver closes the connection

``batch`` is ``IncrementBatch.to_json()``. ``last_seq`` is the highest
sequence the receiver's series has merged from the sender's origin (0: it
knows nothing from it). A ``snapshot`` item carries the sender's whole
local counts up to its ``seq`` and is applied only if the receiver knows
nothing from that origin.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

from mhafail.errors import AuditProtocolError

__all__ = ["DEFAULT_MAX_FRAME", "PROTOCOL_VERSION", "encode_frame", "recv_frame", "send_frame"]

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 256 << 20
_HEADER = struct.Struct("!I")


def encode_frame(message: dict[str, Any]) -> bytes:
    """Return ``message`` as one frame (length prefix included)."""
    data = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(data)) + data


def send_frame(sock: socket.socket, message: dict[str, Any], max_bytes: int) -> None:
    """Send one message.

    Raises:
        AuditProtocolError: the encoded message is larger than ``max_bytes``.
        OSError: the connection failed.
    """
    frame = encode_frame(message)
    if len(frame) - _HEADER.size > max_bytes:
        raise AuditProtocolError(
            f"message of {len(frame) - _HEADER.size} bytes exceeds the {max_bytes}-byte frame limit"
        )
    sock.sendall(frame)


def recv_frame(sock: socket.socket, max_bytes: int) -> dict[str, Any] | None:
    """Read one message; None when the peer closed the connection between frames.

    Raises:
        AuditProtocolError: oversized frame, truncated frame, or not a JSON object.
        OSError: the connection failed (timeouts included).
    """
    header = _recv_exact(sock, _HEADER.size, eof_ok=True)
    if header is None:
        return None
    (length,) = _HEADER.unpack(header)
    if length > max_bytes:
        raise AuditProtocolError(f"frame of {length} bytes exceeds the {max_bytes}-byte limit")
    data = _recv_exact(sock, length, eof_ok=False)
    assert data is not None
    try:
        message = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise AuditProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise AuditProtocolError(f"frame holds a JSON {type(message).__name__}, not an object")
    return message


def _recv_exact(sock: socket.socket, n: int, *, eof_ok: bool) -> bytes | None:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            if got == 0 and eof_ok:
                return None
            raise AuditProtocolError(f"connection closed inside a frame ({got} of {n} bytes)")
        got += k
    return bytes(buf)
