"""The log protocol's messages and codecs: pure functions, no sockets.

The log protocol runs over :mod:`mhafail.channel` (service ``"logs"``),
which authenticates both sides, caps frame sizes and protects every frame
with a MAC. Each channel payload is one log frame: one ``u8`` type, then
the body. After the handshake the client sends OPEN, the node answers
ACCEPT (or ERROR and closes), then records, acknowledgements and
heartbeats flow.

Control frames (OPEN, ACCEPT, ERROR) carry a JSON object. Data
frames are binary because they are the hot path:

* RECORDS: ``u32 log, u32 first_marker, u32 count`` (big-endian), then
  ``count`` u32 write seconds, ``count`` u32 microseconds and ``count``
  u32 payload lengths (little-endian arrays), then the payloads back to
  back. The records' ids are ``(log, first_marker + i)``: a jlog batch
  never crosses a segment and its markers are consecutive.
* PART: ``u32 log, u32 marker, u32 sec, u32 usec, u32 total, u32 offset``
  (big-endian), then the next piece of one record whose RECORDS frame would
  exceed the frame limit. A big record goes as consecutive PART frames,
  ``offset`` 0 first, each piece right after the previous one, until
  ``total`` bytes came; no other record frame comes in between. So no record
  is ever too big to travel, whatever the frame limit.
* ACK: ``u32 log, u32 marker`` (big-endian): the last id durable downstream.
* HEARTBEAT: empty.
"""

from __future__ import annotations

import array
import enum
import json
import struct
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from mhafail.errors import ProtocolError
from mhafail.jlog import Message, MessageId

#: Protocol version sent in OPEN; a node refuses a client speaking another one.
#: (3 added PART frames: a record over the frame limit no longer stops a stream.)
VERSION = 3
#: Default largest frame either side accepts (bytes, type byte and channel MAC included).
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
#: Smallest frame limit a peer may ask for: room for any control frame.
MIN_MAX_FRAME = 64 * 1024
#: Largest JSON control frame anyone needs; bigger ones are refused early.
MAX_CONTROL = 64 * 1024

_TYPE = struct.Struct(">B")
# Channel length field and MAC around every payload (counted against the frame limit).
_CHANNEL_OVERHEAD = 4 + 32
_RECORDS_HEAD = struct.Struct(">III")
_ACK = struct.Struct(">II")
_PART_HEAD = struct.Struct(">IIIIII")
_LITTLE = sys.byteorder == "little"


class FrameType(enum.IntEnum):
    """What a frame carries; the numbers are on the wire."""

    # 1 was HELLO in version 1; the channel handshake replaced it.
    OPEN = 2  # client -> node: the request (op, subscriber, log, position, limits)
    ACCEPT = 3  # node -> client: request accepted (node name, heartbeat, start position)
    ERROR = 4  # either way: refusal or reason for closing, then close
    RECORDS = 5  # node -> client: a batch of records
    ACK = 6  # client -> node: last id durable downstream
    HEARTBEAT = 7  # either way: "still here" when there is nothing else to send
    PART = 8  # node -> client: a piece of one record too big for a RECORDS frame


@attrs.frozen
class Frame:
    """One decoded frame: its type and raw body."""

    type: FrameType
    body: bytes


def encode_frame(ftype: FrameType, body: bytes = b"") -> bytes:
    """Return the channel payload of one frame."""
    return _TYPE.pack(ftype) + body


def decode_frame(payload: bytes) -> Frame:
    """Split a channel payload into its frame type and body.

    Raises:
        ProtocolError: empty, or an unknown frame type.
    """
    if not payload:
        raise ProtocolError("empty frame")
    try:
        kind = FrameType(payload[0])
    except ValueError:
        raise ProtocolError(f"unknown frame type {payload[0]}") from None
    return Frame(kind, payload[1:])


def encode_json(ftype: FrameType, doc: dict[str, Any]) -> bytes:
    """Return a control frame carrying ``doc`` as compact JSON."""
    return encode_frame(ftype, json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())


def decode_json(frame: Frame) -> dict[str, Any]:
    """Decode a control frame's JSON object.

    Raises:
        ProtocolError: the body is not a JSON object or is too large.
    """
    if len(frame.body) > MAX_CONTROL:
        raise ProtocolError(f"{frame.type.name} frame of {len(frame.body)} bytes is too large")
    try:
        doc = json.loads(frame.body)
    except RecursionError:
        raise ProtocolError(f"{frame.type.name} frame nests too deeply") from None
    except ValueError as exc:
        raise ProtocolError(f"{frame.type.name} frame is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{frame.type.name} frame must hold a JSON object")
    return doc


# --- records ----------------------------------------------------------------------


def _u32_array(values: Sequence[int]) -> bytes:
    arr = array.array("I", values)
    if not _LITTLE:  # pragma: no cover - the wire is little-endian
        arr.byteswap()
    return arr.tobytes()


def _u32_list(raw: bytes) -> list[int]:
    arr = array.array("I")
    arr.frombytes(raw)
    if not _LITTLE:  # pragma: no cover
        arr.byteswap()
    return arr.tolist()


def records_overhead(count: int) -> int:
    """Bytes a RECORDS frame of ``count`` records adds to their payloads."""
    return _CHANNEL_OVERHEAD + _TYPE.size + _RECORDS_HEAD.size + 12 * count


def encode_records(batch: Sequence[Message]) -> bytes:
    """Return the payload of one RECORDS frame for ``batch`` (consecutive ids of one segment).

    Raises:
        ProtocolError: the ids are not consecutive in one segment.
    """
    first = batch[0].id
    last = batch[-1].id
    count = len(batch)
    if last.log != first.log or last.marker - first.marker != count - 1:
        raise ProtocolError(f"records {first}..{last} are not {count} consecutive ids")
    body = b"".join(
        (
            _RECORDS_HEAD.pack(first.log, first.marker, count),
            _u32_array([m.sec for m in batch]),
            _u32_array([m.usec for m in batch]),
            _u32_array([len(m.payload) for m in batch]),
            *[m.payload for m in batch],
        )
    )
    return _TYPE.pack(FrameType.RECORDS) + body


@attrs.frozen
class Records:
    """A decoded RECORDS frame.

    Attributes:
        log: the segment of every record.
        first_marker: the first record's marker; the others follow by one.
        secs: write seconds per record.
        usecs: write microseconds per record.
        payloads: the payloads, in order.
    """

    log: int
    first_marker: int
    secs: list[int]
    usecs: list[int]
    payloads: list[bytes]

    @property
    def first_id(self) -> MessageId:
        """The first record's id."""
        return MessageId(self.log, self.first_marker)

    @property
    def last_id(self) -> MessageId:
        """The last record's id."""
        return MessageId(self.log, self.first_marker + len(self.payloads) - 1)

    def ids(self) -> Iterator[MessageId]:
        """Every record's id, in order."""
        for i in range(len(self.payloads)):
            yield MessageId(self.log, self.first_marker + i)

    def drop_through(self, last: MessageId) -> Records:
        """Return the records whose id is after ``last`` (a resent prefix is dropped)."""
        if last < self.first_id:
            return self
        if last.log > self.log or last.marker >= self.last_id.marker:
            return Records(self.log, self.first_marker, [], [], [])
        skip = last.marker - self.first_marker + 1
        return Records(
            self.log,
            last.marker + 1,
            self.secs[skip:],
            self.usecs[skip:],
            self.payloads[skip:],
        )


def decode_records(body: bytes) -> Records:
    """Decode a RECORDS frame body.

    Raises:
        ProtocolError: the body is truncated, has trailing bytes, or its ids
            overflow (marker 0 or past 2**32 - 1).
    """
    if len(body) < _RECORDS_HEAD.size:
        raise ProtocolError("RECORDS frame shorter than its header")
    log, first, count = _RECORDS_HEAD.unpack_from(body, 0)
    arrays_end = _RECORDS_HEAD.size + 12 * count
    if count == 0 or first == 0 or first + count - 1 > 0xFFFFFFFF or len(body) < arrays_end:
        raise ProtocolError(f"RECORDS frame with a bad header (first {first}, count {count})")
    base = _RECORDS_HEAD.size
    secs = _u32_list(body[base : base + 4 * count])
    usecs = _u32_list(body[base + 4 * count : base + 8 * count])
    lengths = _u32_list(body[base + 8 * count : arrays_end])
    if arrays_end + sum(lengths) != len(body):
        raise ProtocolError("RECORDS frame payload lengths do not match its size")
    payloads = []
    pos = arrays_end
    view = memoryview(body)
    for length in lengths:
        payloads.append(bytes(view[pos : pos + length]))
        pos += length
    return Records(log, first, secs, usecs, payloads)


# --- records too big for one frame ----------------------------------------------------


def fits_one_frame(message: Message, limit: int) -> bool:
    """True when ``message`` alone fits a RECORDS frame of at most ``limit`` bytes."""
    return records_overhead(1) + len(message.payload) <= limit


def encode_parts(message: Message, limit: int) -> Iterator[bytes]:
    """Yield the PART frames carrying ``message``, each within ``limit`` bytes.

    Raises:
        ProtocolError: ``limit`` leaves no room for a piece.
    """
    room = limit - _CHANNEL_OVERHEAD - _TYPE.size - _PART_HEAD.size
    if room <= 0:
        raise ProtocolError(f"a {limit}-byte frame limit leaves no room for a record piece")
    mid = message.id
    payload = memoryview(message.payload)
    total = len(payload)
    for offset in range(0, total, room):
        head = _PART_HEAD.pack(mid.log, mid.marker, message.sec, message.usec, total, offset)
        yield b"".join((_TYPE.pack(FrameType.PART), head, payload[offset : offset + room]))


class Reassembly:
    """Joins the PART frames of one record at a time (pure; one per stream).

    Memory grows with the bytes that really arrive, never with the ``total``
    a header announces.
    """

    def __init__(self) -> None:
        self._head: tuple[int, int, int, int, int] | None = None
        self._buf = bytearray()

    @property
    def pending(self) -> bool:
        """True while a record is partly received (no other record may come now)."""
        return self._head is not None

    def add(self, body: bytes) -> Records | None:
        """Take one PART body; return the whole record once its last piece came.

        Raises:
            ProtocolError: a malformed piece, a piece out of order, a piece of
                another record before this one is complete, or more bytes than
                announced.
        """
        if len(body) <= _PART_HEAD.size:
            raise ProtocolError("PART frame without a header and a piece")
        log, marker, sec, usec, total, offset = _PART_HEAD.unpack_from(body, 0)
        piece = memoryview(body)[_PART_HEAD.size :]
        head = (log, marker, sec, usec, total)
        if marker == 0 or total == 0:
            raise ProtocolError(f"PART frame with a bad header (marker {marker}, total {total})")
        if self._head is None:
            if offset != 0:
                raise ProtocolError(f"record {MessageId(log, marker)} starts at offset {offset}")
            self._head = head
        elif head != self._head or offset != len(self._buf):
            raise ProtocolError(
                f"PART of {MessageId(log, marker)} at offset {offset} out of order "
                f"(expected offset {len(self._buf)} of {MessageId(*self._head[:2])})"
            )
        if offset + len(piece) > total:
            raise ProtocolError(f"record {MessageId(log, marker)} is longer than its {total} bytes")
        self._buf += piece
        if len(self._buf) < total:
            return None
        payload = bytes(self._buf)
        self._head = None
        self._buf = bytearray()
        return Records(log, marker, [sec], [usec], [payload])


def encode_ack(message_id: MessageId) -> bytes:
    """Return an ACK frame for ``message_id``."""
    return encode_frame(FrameType.ACK, _ACK.pack(message_id.log, message_id.marker))


def decode_ack(body: bytes) -> MessageId:
    """Decode an ACK body.

    Raises:
        ProtocolError: it is not exactly 8 bytes.
    """
    if len(body) != _ACK.size:
        raise ProtocolError(f"ACK frame of {len(body)} bytes (expected 8)")
    log, marker = _ACK.unpack(body)
    return MessageId(log, marker)


def format_id(message_id: MessageId | None) -> str | None:
    """Print an id for a JSON frame (``None`` stays ``None``)."""
    return None if message_id is None else str(message_id)


def parse_id(value: object, what: str) -> MessageId | None:
    """Parse an id from a JSON frame.

    Raises:
        ProtocolError: ``value`` is neither null nor ``LLLLLLLL:MMMMMMMM``.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string id or null")
    try:
        return MessageId.parse(value)
    except ValueError:
        raise ProtocolError(f"{what} {value!r} is not an id like 00000001:0000002a") from None
