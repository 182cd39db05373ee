"""The wire format of cluster-wide series: JSON messages over the authenticated channel.

Messages travel as payloads of :mod:`mhafail.channel` (service
``"audit"``): both sides prove the shared secret (or mutual TLS) before any
message is read, every frame carries a MAC, frames are capped at 4 KiB
until then, and idle or slow connections time out. Each payload is one
UTF-8 JSON object. A sender opens one connection per receiver and sends
one request at a time; the receiver answers every request with one reply
before reading the next.

Requests (``v`` is :data:`PROTOCOL_VERSION`)::

    {"v": 2, "type": "hello", "origin": {"node": N, "incarnation": I}, "series": [names],
     "history": max_bytes}                        (history optional)
    {"v": 2, "type": "push", "origin": {...},
     "items": [{"snapshot": bool, "history": bool, "batch": {...}}]}   (flags optional)

Replies::

    {"ok": true, "receiver": {"node": N, "incarnation": I},
     "series": {name: {"last_seq": S} | {"last_seq": S, "error": "..."}
                      | {"last_seq": S, "history": [batch, ...]}}}
    {"ok": false, "error": "..."}         then the receiver closes the connection

``batch`` is ``IncrementBatch.to_json()``; every increment in it must lie
in 1..2**63-1 (:func:`check_increments`), and so must the sum per key,
or the batch is refused by name (the connection and the rest stay).
``last_seq`` is the highest sequence the receiver's series has merged
from the sender's origin (0: it knows nothing from it). A ``snapshot``
item carries the sender's whole local counts up to its ``seq`` and is
applied only if the receiver knows nothing from that origin. ``history``
(see ``_history``) moves the counts of earlier incarnations of the
sender's node: asked for in a hello (within ``max_bytes``), or pushed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from mhafail.errors import AuditInvalidArgument, AuditProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_INCREMENT",
    "PROTOCOL_VERSION",
    "SERVICE",
    "check_increments",
    "decode_message",
    "encode_message",
]

#: The channel service name of cluster-wide series.
SERVICE = "audit"
PROTOCOL_VERSION = 2
#: Default largest message accepted from an authenticated peer (bytes).
DEFAULT_MAX_FRAME = 256 << 20
#: Largest increment (and per-key sum in one batch) a receiver accepts.
MAX_INCREMENT = 2**63 - 1


def encode_message(message: dict[str, Any]) -> bytes:
    """Return ``message`` as one payload (compact JSON)."""
    return json.dumps(message, separators=(",", ":")).encode()


def decode_message(payload: bytes) -> dict[str, Any]:
    """Decode one payload.

    Raises:
        AuditProtocolError: not a JSON object (or nested absurdly deep).
    """
    try:
        message = json.loads(payload)
    except RecursionError:
        raise AuditProtocolError("message nests too deeply") from None
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        raise AuditProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise AuditProtocolError(f"message holds a JSON {type(message).__name__}, not an object")
    return message


def check_increments(batch: Mapping[str, Any]) -> None:
    """Refuse a batch whose increments could overflow a counter.

    Only the increments are checked here; ``IncrementBatch.from_json``
    checks everything else.

    Raises:
        AuditInvalidArgument: an increment outside 1..2**63-1, or one key
            whose increments in one window add up past 2**63-1.
    """
    windows = batch.get("windows")
    if not isinstance(windows, list):
        return  # from_json names the problem
    for window in windows:
        if not isinstance(window, list) or len(window) != 2 or not isinstance(window[1], list):
            continue
        sums: dict[object, int] = {}
        for pair in window[1]:
            if not isinstance(pair, list) or len(pair) != 2 or type(pair[1]) is not int:
                continue
            key, n = pair
            if not 1 <= n <= MAX_INCREMENT:
                raise AuditInvalidArgument(
                    f"increment {n} for key {key!r} is outside 1..{MAX_INCREMENT}"
                )
            if isinstance(key, int | str):
                total = sums.get(key, 0) + n
                if total > MAX_INCREMENT:
                    raise AuditInvalidArgument(
                        f"increments for key {key!r} add up past {MAX_INCREMENT}"
                    )
                sums[key] = total
