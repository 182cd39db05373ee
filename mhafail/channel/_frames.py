"""The channel's wire format: framing, per-frame MACs and handshake messages (pure, no sockets).

Every frame is ``u32 length`` (big-endian) then ``length`` bytes of body.
A length of 0, or above the receiver's current limit, is a protocol error
found from the four header bytes alone: the receiver closes the
connection without reading or allocating further. Until the handshake
completes the limit is small (:data:`PRE_AUTH_FRAME`), so an
unauthenticated peer can make the receiver hold a few KiB at most.

Handshake frames are compact JSON objects with a ``type``:

1. server -> client ``hello``: ``channel`` (format version), ``service``
   (``"logs"``, ``"audit"``...), ``auth`` (``hmac``, ``tls`` or ``none``)
   and a fresh 32-byte ``nonce`` (hex).
2. client -> server ``auth``: ``channel``, ``service``, its own fresh
   ``nonce`` and, with a secret, ``mac`` = HMAC-SHA256(secret, domain |
   "client" | service | server nonce | client nonce).
3. server -> client ``ok`` with ``mac`` = HMAC-SHA256(secret, domain |
   "server" | service | server nonce | client nonce), or ``error`` with a
   ``reason``, then the server closes.

With a secret, both sides then derive per-connection keys from the secret
and both nonces (:func:`derive_keys`), one per direction. Every later
frame body is ``payload | tag`` where ``tag`` is HMAC-SHA256(direction
key, direction | u64 sequence | payload), the sequence counting the
frames sent in that direction from 0. The sequence is not on the wire:
a replayed, reordered, dropped, injected or altered frame fails its
check and the receiver closes the connection. Without a secret (mutual
TLS, or the loopback opt-in) the tag is empty: TLS protects its records
itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import struct
from typing import Any

from mhafail.errors import ChannelProtocolError

#: Format version carried in the handshake.
CHANNEL_VERSION = 1
#: Largest frame body accepted before the handshake completes (bytes).
PRE_AUTH_FRAME = 4096
#: Default largest frame body accepted after the handshake (bytes).
DEFAULT_MAX_FRAME = 4 * 1024 * 1024 + 4096
#: Bytes of random nonce each side contributes.
NONCE_BYTES = 32
#: Bytes of MAC on every authenticated frame.
TAG_BYTES = 32

HEADER = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_DOMAIN = b"mhafail-channel-v1"
CLIENT_TO_SERVER = b"C"
SERVER_TO_CLIENT = b"S"


def new_nonce() -> str:
    """Return a fresh random nonce, hex-encoded."""
    return secrets.token_hex(NONCE_BYTES)


def _mac(secret: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, b"\0".join((_DOMAIN, *parts)), hashlib.sha256).digest()


def client_proof(secret: bytes, service: str, server_nonce: str, client_nonce: str) -> str:
    """The client's proof that it knows ``secret`` (hex)."""
    return _mac(
        secret, b"client", service.encode(), server_nonce.encode(), client_nonce.encode()
    ).hex()


def server_proof(secret: bytes, service: str, server_nonce: str, client_nonce: str) -> str:
    """The server's proof that it knows ``secret`` (hex)."""
    return _mac(
        secret, b"server", service.encode(), server_nonce.encode(), client_nonce.encode()
    ).hex()


def derive_keys(
    secret: bytes, service: str, server_nonce: str, client_nonce: str
) -> tuple[bytes, bytes]:
    """Return the (client -> server, server -> client) frame keys of one connection."""
    base = _mac(secret, b"keys", service.encode(), server_nonce.encode(), client_nonce.encode())
    return (
        hmac.new(base, CLIENT_TO_SERVER, hashlib.sha256).digest(),
        hmac.new(base, SERVER_TO_CLIENT, hashlib.sha256).digest(),
    )


def proof_matches(expected: str, given: object) -> bool:
    """Compare two proofs in constant time; anything but a string fails."""
    if not isinstance(given, str) or not given.isascii():
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def is_nonce(value: object) -> bool:
    """True for a hex nonce of the right length."""
    if not isinstance(value, str) or len(value) != 2 * NONCE_BYTES:
        return False
    return all(c in "0123456789abcdef" for c in value)


def encode_control(doc: dict[str, Any]) -> bytes:
    """Return a handshake message as a payload (compact JSON)."""
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode_control(payload: bytes) -> dict[str, Any]:
    """Decode a handshake message.

    Raises:
        ChannelProtocolError: not a JSON object with a string ``type``.
    """
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        raise ChannelProtocolError("handshake message is not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("type"), str):
        raise ChannelProtocolError("handshake message must be a JSON object with a type")
    return doc


def frame_header(body_length: int) -> bytes:
    """The four length bytes of a frame whose body is ``body_length`` bytes."""
    return HEADER.pack(body_length)


class FrameMac:
    """One direction's integrity state: its key and the next sequence number.

    Args:
        key: the direction's key; None: frames carry no tag (TLS or no auth).
        direction: :data:`CLIENT_TO_SERVER` or :data:`SERVER_TO_CLIENT`.

    Not thread-safe: the sender serialises :meth:`seal`, the single
    reader calls :meth:`open`.
    """

    def __init__(self, key: bytes | None, direction: bytes) -> None:
        self.direction = direction
        self.seq = 0
        self._base = None if key is None else hmac.new(key, digestmod=hashlib.sha256)

    @property
    def tag_bytes(self) -> int:
        """Bytes of tag on each frame (0 without a key)."""
        return 0 if self._base is None else TAG_BYTES

    def _tag(self, payload: bytes | memoryview) -> bytes:
        assert self._base is not None
        h = self._base.copy()
        h.update(self.direction + _SEQ.pack(self.seq))
        h.update(payload)
        return h.digest()

    def seal(self, payload: bytes) -> bytes:
        """Return the tag for the next frame sent (empty without a key)."""
        if self._base is None:
            self.seq += 1
            return b""
        tag = self._tag(payload)
        self.seq += 1
        return tag

    def open(self, body: bytes | bytearray | memoryview) -> bytes:
        """Check the next received frame's tag and return its payload.

        Raises:
            ChannelProtocolError: the frame is shorter than a tag, or its tag
                does not match (forged, replayed, reordered or corrupted).
        """
        view = memoryview(body)
        if self._base is None:
            self.seq += 1
            return bytes(view)
        if len(view) < TAG_BYTES:
            raise ChannelProtocolError(f"frame {self.seq} is shorter than its MAC")
        payload = view[:-TAG_BYTES]
        if not hmac.compare_digest(self._tag(payload), view[-TAG_BYTES:]):
            raise ChannelProtocolError(
                f"frame {self.seq} failed its integrity check (forged, replayed, reordered "
                "or altered); closing"
            )
        self.seq += 1
        return bytes(payload)


class FrameReader:
    """Incremental frame splitter: :meth:`feed` bytes, get whole frame bodies back.

    Args:
        limit: the largest body accepted; :attr:`limit` may be raised once
            the peer is authenticated.

    Not thread-safe; one per connection direction.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data`` and return every frame body it completes, in order.

        Raises:
            ChannelProtocolError: a length of 0 or over :attr:`limit`. The
                stream cannot be resynchronised: close the connection.
        """
        self._buf += data
        bodies: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= HEADER.size:
            (length,) = HEADER.unpack_from(buf, pos)
            if length == 0 or length > self.limit:
                raise ChannelProtocolError(
                    f"frame length {length} outside 1..{self.limit} (malformed or oversized)"
                )
            if len(buf) - pos - HEADER.size < length:
                break
            bodies.append(bytes(buf[pos + HEADER.size : pos + HEADER.size + length]))
            pos += HEADER.size + length
        if pos:
            del buf[:pos]
        return bodies

    def want(self) -> int:
        """Bytes still missing for the frame being received (at least 1)."""
        buf = self._buf
        if len(buf) < HEADER.size:
            return HEADER.size - len(buf)
        length: int = HEADER.unpack_from(buf, 0)[0]
        return max(1, HEADER.size + length - len(buf))
