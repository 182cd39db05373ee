"""Shared-secret authentication: an HMAC-SHA256 challenge in both directions.

The node sends a random 32-byte nonce in HELLO. The client answers, in
OPEN, with its own nonce and ``HMAC(secret, "client" | node nonce | client
nonce | request)``, where ``request`` is the canonical JSON of every other
OPEN field, so the subscriber, log and position cannot be altered in
flight. The node answers, in ACCEPT, with ``HMAC(secret, "node" | client
nonce | node nonce)``, proving it knows the secret too (a manager never
streams from an impostor). MACs are compared with
:func:`hmac.compare_digest`.

This authenticates; it does not encrypt. Use TLS (an ``ssl.SSLContext``
on both sides) when records must not be readable on the wire.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from mhafail.errors import LogsInvalidArgument

_DOMAIN = b"mhafail-logs-v1"
NONCE_BYTES = 32
MIN_SECRET = 16


def new_nonce() -> str:
    """Return a fresh random nonce, hex-encoded."""
    return secrets.token_hex(NONCE_BYTES)


def _canonical(request: dict[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in request.items() if k != "mac"}, separators=(",", ":"), sort_keys=True
    ).encode()


def client_mac(secret: bytes, node_nonce: str, client_nonce: str, request: dict[str, Any]) -> str:
    """Return the client's proof for ``request`` (its ``mac`` field is ignored)."""
    msg = b"\0".join(
        (_DOMAIN, b"client", node_nonce.encode(), client_nonce.encode(), _canonical(request))
    )
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def node_mac(secret: bytes, node_nonce: str, client_nonce: str) -> str:
    """Return the node's proof that it knows the secret too."""
    msg = b"\0".join((_DOMAIN, b"node", client_nonce.encode(), node_nonce.encode()))
    return hmac.new(secret, msg, hashlib.sha256).hexdigest()


def verify(expected: str, given: object) -> bool:
    """Compare two MACs in constant time; anything but a string fails."""
    if not isinstance(given, str):
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def check_secret(secret: bytes | None) -> bytes | None:
    """Return ``secret`` if it is usable.

    Raises:
        LogsInvalidArgument: it is shorter than 16 bytes (too easy to guess).
    """
    if secret is not None and len(secret) < MIN_SECRET:
        raise LogsInvalidArgument(
            f"the shared secret must be at least {MIN_SECRET} bytes, not {len(secret)}"
        )
    return secret


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read a shared secret from a file (surrounding whitespace stripped).

    Raises:
        LogsInvalidArgument: the file cannot be read or the secret is too short.
    """
    try:
        raw = Path(path).read_bytes().strip()
    except OSError as exc:
        raise LogsInvalidArgument(f"cannot read secret file {path}: {exc.strerror}") from None
    checked = check_secret(raw)
    assert checked is not None
    return checked
