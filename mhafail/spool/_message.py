"""Envelopes, message values and their on-disk codec. Pure: no I/O.

A spooled message is one immutable file ``<id>`` (a header line of JSON,
then the data) and, once something happened to it, a small mutable state
file ``<id>.state``. Both are written to a temporary name, fsynced and
renamed, so a reader only ever sees whole files; still, a spool directory
is shared storage (safety rule 8), so everything read back is validated
and a bad file is reported, never trusted.
"""

from __future__ import annotations

import enum
import itertools
import json
import math
import os
import re
import secrets
import time
import zlib
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

import attrs

from mhafail._json import decode_object
from mhafail.errors import MalformedData, SpoolInvalidArgument

MAGIC = b"MHAFAIL-SPOOL/1\n"
MAX_RECIPIENTS = 1000
MAX_ADDRESS = 512
MAX_HEADER = 1024 * 1024
MAX_STATE = 1024 * 1024
MAX_REASON = 1000

_ID_RE = re.compile(r"[0-9a-f]{26}")
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


_suffixes = [itertools.count(secrets.randbits(40))]

# One encoder for every header: json.dumps with separators builds a new
# JSONEncoder per call (a measurable share of a put's CPU). Same output.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _reseed() -> None:
    _suffixes[0] = itertools.count(secrets.randbits(40))


os.register_at_fork(after_in_child=_reseed)  # a forked child must not repeat its parent's


def new_id(now_ns: int | None = None) -> str:
    """A fresh message id: 16 hex digits of nanoseconds, then 10 of a per-process counter.

    The counter starts at a random 40-bit value in each process and counts
    up, so ids are unique within a process even in the same nanosecond and
    as unlikely to collide across nodes as 40 random bits, without reading
    the system's random source per message (a system call on the put path).
    Ids sort by creation time and are unique across nodes, so a message keeps
    its id when it is taken over (which is what makes imports idempotent).
    """
    ns = time.time_ns() if now_ns is None else now_ns
    return f"{ns & (2**64 - 1):016x}{next(_suffixes[0]) & (2**40 - 1):010x}"


def check_id(value: object) -> str:
    """Return ``value`` if it is a well-formed message id.

    Raises:
        SpoolInvalidArgument: anything else (ids become file names).
    """
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise SpoolInvalidArgument(f"invalid message id {value!r}: expected 26 hex digits")
    return value


def check_address(kind: str, value: object, *, empty_ok: bool = False) -> str:
    """Return ``value`` if it can be an SMTP path: no controls, spaces or brackets.

    Raises:
        SpoolInvalidArgument: the address is not a string, empty (unless
            ``empty_ok``: the null sender), too long or holds a forbidden
            character (CR and LF would forge SMTP commands downstream).
    """
    if not isinstance(value, str):
        raise SpoolInvalidArgument(f"invalid {kind}: {type(value).__name__}, not a string")
    if not value and not empty_ok:
        raise SpoolInvalidArgument(f"invalid {kind}: empty")
    if len(value) > MAX_ADDRESS:
        raise SpoolInvalidArgument(f"invalid {kind}: {len(value)} characters, over {MAX_ADDRESS}")
    for ch in value:
        if ord(ch) < 33 or ord(ch) == 127 or ch in "<>":
            raise SpoolInvalidArgument(
                f"invalid {kind} {value[:80]!r}: control characters, spaces and <> are not allowed"
            )
    return value


def _reason(value: object) -> str:
    if not isinstance(value, str):
        raise SpoolInvalidArgument(f"invalid reason: {type(value).__name__}, not a string")
    return value[:MAX_REASON]


def _sender(value: object) -> str:
    return check_address("sender", value, empty_ok=True)


def _recipients(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        raise SpoolInvalidArgument("invalid recipients: a list of addresses, not one string")
    rcpts = tuple(check_address("recipient", r) for r in value)
    if not rcpts:
        raise SpoolInvalidArgument("invalid recipients: at least one is needed")
    if len(rcpts) > MAX_RECIPIENTS:
        raise SpoolInvalidArgument(
            f"invalid recipients: {len(rcpts)} is over the cap of {MAX_RECIPIENTS}"
        )
    if len(set(rcpts)) != len(rcpts):
        raise SpoolInvalidArgument("invalid recipients: an address is listed twice")
    return rcpts


@attrs.frozen
class Envelope:
    """The SMTP envelope of a message: who it is from and who it is for.

    Attributes:
        sender: the reverse path (``""`` is the null sender of bounces).
        recipients: forward paths, at least one, each at most once.

    Raises:
        SpoolInvalidArgument: a malformed address, no recipient, too many,
            or one listed twice.
    """

    sender: str = attrs.field(converter=_sender)
    recipients: tuple[str, ...] = attrs.field(converter=_recipients)


class RecipientState(enum.Enum):
    """Where one recipient of a message stands.

    * ``PENDING``: not delivered yet; tried again at the next attempt.
    * ``DELIVERED``: the next hop accepted it.
    * ``FAILED``: permanently refused; the application owes a bounce.
    """

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


@attrs.frozen
class Recipient:
    """One recipient and its state."""

    address: str
    state: RecipientState = RecipientState.PENDING
    reason: str = ""


@attrs.frozen
class Message:
    """A spooled message's metadata (the data is read with ``Spool.read``).

    Attributes:
        id: the message id (stable across takeovers).
        sender: the envelope sender.
        recipients: every recipient with its state.
        origin: the node that accepted the message from its client.
        created: wall-clock time of acceptance.
        size: bytes of data.
        crc32: checksum of the data, verified on every read.
        attempts: delivery attempts so far.
        next_try: wall-clock time the message is next due.
        reason: why the last attempt did not finish it.
    """

    id: str
    sender: str
    recipients: tuple[Recipient, ...]
    origin: str
    created: float
    size: int
    crc32: int
    attempts: int = 0
    next_try: float = 0.0
    reason: str = ""

    @property
    def pending(self) -> tuple[str, ...]:
        """Addresses still to be delivered."""
        return tuple(r.address for r in self.recipients if r.state is RecipientState.PENDING)

    def envelope(self) -> Envelope:
        """The original envelope (every recipient, whatever its state)."""
        return Envelope(sender=self.sender, recipients=tuple(r.address for r in self.recipients))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the CLI)."""
        return {
            "id": self.id,
            "sender": self.sender,
            "recipients": [
                {"address": r.address, "state": r.state.value, "reason": r.reason}
                for r in self.recipients
            ],
            "origin": self.origin,
            "created": self.created,
            "size": self.size,
            "attempts": self.attempts,
            "next_try": self.next_try,
            "reason": self.reason,
        }


def encode_header(
    message_id: str, envelope: Envelope, *, origin: str, created: float, data: bytes
) -> tuple[bytes, Message]:
    """The header bytes of a new message file, and the message they describe."""
    crc = zlib.crc32(data)
    if type(created) is float and math.isfinite(created):
        # The line json's compact encoder writes for the dict below, byte
        # for byte (a test compares them), in a third of its time: this is
        # on every put's path. Strings go through json's own C escaper.
        recipients = ",".join(map(_json_string, envelope.recipients))
        line = (
            f'{{"id":{_json_string(message_id)},"sender":{_json_string(envelope.sender)},'
            f'"recipients":[{recipients}],"origin":{_json_string(origin)},'
            f'"created":{created!r},"size":{len(data)},"crc32":{crc}}}'
        )
    else:  # an unusual clock (an int, or not finite): let json decide
        line = _COMPACT.encode(
            {
                "id": message_id,
                "sender": envelope.sender,
                "recipients": list(envelope.recipients),
                "origin": origin,
                "created": created,
                "size": len(data),
                "crc32": crc,
            }
        )
    raw = MAGIC + line.encode() + b"\n"
    message = Message(
        id=message_id,
        sender=envelope.sender,
        recipients=tuple(Recipient(r) for r in envelope.recipients),
        origin=origin,
        created=created,
        size=len(data),
        crc32=crc,
        next_try=created,
    )
    return raw, message


def _number(doc: Mapping[str, Any], key: str, what: str, *, integer: bool = False) -> Any:
    value: Any = doc.get(key)
    ok = isinstance(value, int) or (isinstance(value, float) and not integer)
    if isinstance(value, bool) or not ok or value < 0:
        raise MalformedData(f"malformed {what}: {key!r} must be a non-negative number")
    return value


def decode_header(raw: bytes, *, what: str) -> tuple[Message, int]:
    """Parse the start of a message file.

    Args:
        raw: the file's first bytes (at least the whole header line).
        what: names the file in messages.

    Returns:
        The message (initial state) and the offset where its data starts.

    Raises:
        MalformedData: wrong magic, a header that is not valid JSON or
            breaks the schema (the caller quarantines the file).
    """
    if not raw.startswith(MAGIC):
        raise MalformedData(f"malformed {what}: not a mhafail spool file")
    end = raw.find(b"\n", len(MAGIC))
    if end < 0:
        raise MalformedData(f"malformed {what}: header line is missing or over the cap")
    doc = decode_object(raw[len(MAGIC) : end], what=what, max_bytes=MAX_HEADER, max_depth=3)
    try:
        message_id = check_id(doc.get("id"))
        envelope = Envelope(sender=doc.get("sender"), recipients=doc.get("recipients") or ())
        origin = doc.get("origin")
        if not isinstance(origin, str) or not _NODE_RE.fullmatch(origin):
            raise SpoolInvalidArgument(f"invalid origin {origin!r}")
    except (SpoolInvalidArgument, TypeError) as exc:
        raise MalformedData(f"malformed {what}: {exc}") from exc
    created = float(_number(doc, "created", what))
    message = Message(
        id=message_id,
        sender=envelope.sender,
        recipients=tuple(Recipient(r) for r in envelope.recipients),
        origin=origin,
        created=created,
        size=_number(doc, "size", what, integer=True),
        crc32=_number(doc, "crc32", what, integer=True),
        next_try=created,
    )
    return message, end + 1


def encode_state(message: Message) -> bytes:
    """The state file of ``message``: attempts, next try, reason, recipient states."""
    return json.dumps(
        {
            "attempts": message.attempts,
            "next_try": message.next_try,
            "reason": message.reason,
            "recipients": {
                r.address: [r.state.value, r.reason]
                for r in message.recipients
                if r.state is not RecipientState.PENDING
            },
        },
        separators=(",", ":"),
    ).encode()


def apply_state(message: Message, raw: bytes, *, what: str) -> Message:
    """``message`` with the state stored in ``raw``.

    Raises:
        MalformedData: the state file breaks its schema or caps.
    """
    doc = decode_object(raw, what=what, max_bytes=MAX_STATE, max_depth=3)
    states = doc.get("recipients", {})
    if not isinstance(states, dict):
        raise MalformedData(f"malformed {what}: 'recipients' must be an object")
    known = {r.address for r in message.recipients}
    updated = []
    for r in message.recipients:
        entry = states.get(r.address)
        if entry is None:
            updated.append(r)
            continue
        if (
            not isinstance(entry, list)
            or len(entry) != 2
            or entry[0] not in ("delivered", "failed")
            or not isinstance(entry[1], str)
        ):
            raise MalformedData(f"malformed {what}: bad state for recipient {r.address!r}")
        updated.append(Recipient(r.address, RecipientState(entry[0]), entry[1][:MAX_REASON]))
    if set(states) - known:
        raise MalformedData(f"malformed {what}: state names a recipient the message lacks")
    reason = doc.get("reason", "")
    if not isinstance(reason, str):
        raise MalformedData(f"malformed {what}: 'reason' must be a string")
    return attrs.evolve(
        message,
        recipients=tuple(updated),
        attempts=_number(doc, "attempts", what, integer=True),
        next_try=float(_number(doc, "next_try", what)),
        reason=reason[:MAX_REASON],
    )


def with_results(
    message: Message,
    *,
    delivered: Iterable[str],
    failed: Mapping[str, str],
    reason: str,
    next_try: float,
) -> Message:
    """``message`` after one attempt: recipient results, one more attempt, next try.

    Raises:
        SpoolInvalidArgument: a result names a recipient the message lacks,
            or one that is not pending.
    """
    pending = set(message.pending)
    done = set(delivered)
    for address in [*done, *failed]:
        if address not in pending:
            raise SpoolInvalidArgument(
                f"invalid result for {address!r}: not a pending recipient of {message.id}"
            )
    recipients = []
    for r in message.recipients:
        if r.address in done:
            recipients.append(Recipient(r.address, RecipientState.DELIVERED))
        elif r.address in failed:
            recipients.append(
                Recipient(r.address, RecipientState.FAILED, _reason(failed[r.address]))
            )
        else:
            recipients.append(r)
    return attrs.evolve(
        message,
        recipients=tuple(recipients),
        attempts=message.attempts + 1,
        next_try=next_try,
        reason=_reason(reason),
    )
