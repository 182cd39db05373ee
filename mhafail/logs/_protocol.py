"""The log protocol's framing and codecs: pure functions, no sockets.

Every frame is ``u32 length`` (big-endian, counting the type byte and the
body), one ``u8`` type, then the body. A length of 0 or above the
receiver's frame limit is a protocol error: the receiver closes the
connection without reading further, so a hostile peer cannot make it
buffer more than one frame.

Control frames (HELLO, OPEN, ACCEPT, ERROR) carry a JSON object. Data
frames are binary because they are the hot path:

* RECORDS: ``u32 log, u32 first_marker, u32 count`` (big-endian), then
  ``count`` u32 write seconds, ``count`` u32 microseconds and ``count``
  u32 payload lengths (little-endian arrays), then the payloads back to
  back. The records' ids are ``(log, first_marker + i)``: a jlog batch
  never crosses a segment and its markers are consecutive.
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

#: Protocol version sent in HELLO; a node refuses a client speaking another one.
VERSION = 1
#: Default largest frame either side accepts (bytes, type byte included).
DEFAULT_MAX_FRAME = 4 * 1024 * 1024
#: Smallest frame limit a peer may ask for: room for any control frame.
MIN_MAX_FRAME = 64 * 1024
#: Largest JSON control frame anyone needs; bigger ones are refused early.
MAX_CONTROL = 64 * 1024

_HEADER = struct.Struct(">IB")
_RECORDS_HEAD = struct.Struct(">III")
_ACK = struct.Struct(">II")
_LITTLE = sys.byteorder == "little"


class FrameType(enum.IntEnum):
    """What a frame carries; the numbers are on the wire."""

    HELLO = 1  # node -> client: version, node name, auth mode, challenge
    OPEN = 2  # client -> node: the request (op, subscriber, log, position, proof)
    ACCEPT = 3  # node -> client: request accepted (start position, node's proof)
    ERROR = 4  # either way: refusal or reason for closing, then close
    RECORDS = 5  # node -> client: a batch of records
    ACK = 6  # client -> node: last id durable downstream
    HEARTBEAT = 7  # either way: "still here" when there is nothing else to send


@attrs.frozen
class Frame:
    """One decoded frame: its type and raw body."""

    type: FrameType
    body: bytes


def encode_frame(ftype: FrameType, body: bytes = b"") -> bytes:
    """Return the bytes of one frame."""
    return _HEADER.pack(len(body) + 1, ftype) + body


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
    except ValueError as exc:
        raise ProtocolError(f"{frame.type.name} frame is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError(f"{frame.type.name} frame must hold a JSON object")
    return doc


class FrameReader:
    """Incremental frame parser: :meth:`feed` bytes, get whole frames back.

    Args:
        max_frame: the largest frame accepted (length field value).

    Not thread-safe; one per connection direction.
    """

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data`` and return every frame it completes, in order.

        Raises:
            ProtocolError: a length of 0, a length over ``max_frame`` or an
                unknown frame type. The stream cannot be resynchronised:
                close the connection.
        """
        self._buf += data
        frames: list[Frame] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= _HEADER.size:
            length, ftype = _HEADER.unpack_from(buf, pos)
            if length == 0 or length > self.max_frame:
                raise ProtocolError(
                    f"frame length {length} outside 1..{self.max_frame} (malformed or oversized)"
                )
            if len(buf) - pos - 4 < length:
                break
            try:
                kind = FrameType(ftype)
            except ValueError:
                raise ProtocolError(f"unknown frame type {ftype}") from None
            frames.append(Frame(kind, bytes(buf[pos + 5 : pos + 4 + length])))
            pos += 4 + length
        if pos:
            del buf[:pos]
        return frames


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
    return _HEADER.size + _RECORDS_HEAD.size + 12 * count


def encode_records(batch: Sequence[Message]) -> bytes:
    """Return one RECORDS frame for ``batch`` (consecutive ids of one segment).

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
    return _HEADER.pack(len(body) + 1, FrameType.RECORDS) + body


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
