"""The libjlog 2.x on-disk format as pure functions: no file I/O here.

Everything a jlog stores is encoded and decoded in this module: the
16-byte ``metastore``, record headers (plain and LZ4-compressed), ``.idx``
files, ``cp.*`` checkpoints, file names and the ``pre_commit`` buffer.
All integers are little-endian (docs/jlog.md, "Format compatibility"). The other
modules of :mod:`mhafail.jlog` do the I/O and call these to interpret it.
"""

from __future__ import annotations

import enum
import re
import struct
from collections.abc import Sequence
from itertools import repeat
from operator import add
from typing import Final, NamedTuple

import attrs
import lz4.block

from mhafail.errors import JlogCorrupt, JlogInvalidArgument

PLAIN_MAGIC: Final = 0x663A7318
"""``hdr_magic`` of a jlog whose records are stored as written."""
COMPRESSION_MAGIC_BASE: Final = 0x15106A00
"""``hdr_magic`` of compressed jlogs, or-ed with the provider number."""
LZ4_MAGIC: Final = COMPRESSION_MAGIC_BASE | 0x01
"""``hdr_magic`` of a jlog whose records are raw LZ4 blocks."""
DEFAULT_UNIT_LIMIT: Final = 4 * 1024 * 1024
"""libjlog's default segment size threshold (4 MiB)."""

METASTORE: Final = "metastore"
PRE_COMMIT: Final = "pre_commit"
INDEX_SUFFIX: Final = ".idx"
CHECKPOINT_PREFIX: Final = "cp."
MAX_SUBSCRIBER_BYTES: Final = 126
"""Longest subscriber name: ``cp.`` + two hex digits a byte must fit NAME_MAX (255)."""

META: Final = struct.Struct("<IIII")
CHECKPOINT: Final = struct.Struct("<II")
PLAIN_HEADER: Final = struct.Struct("<IIII")
LZ4_HEADER: Final = struct.Struct("<IIIII")
U32: Final = struct.Struct("<I")
U64: Final = struct.Struct("<Q")
# Walking a segment needs only the magic and the on-disk payload length;
# reading two fields instead of four keeps the hot loop short.
_PLAIN_WALK: Final = struct.Struct("<I8xI")
_LZ4_WALK: Final = struct.Struct("<I12xI")

_SEGMENT_NAME = re.compile(r"[0-9a-f]{8}")
_HEX_NAME = re.compile(r"(?:[0-9a-f]{2})+")


class Safety(enum.IntEnum):
    """The metastore ``safety`` field (libjlog's ``jlog_safety``).

    libjlog uses it only to decide whether checkpoint and metastore writes
    are followed by an fsync (``SAFE``); segment data durability is chosen
    per writer with :class:`mhafail.jlog.Durability`.
    """

    UNSAFE = 0
    ALMOST_SAFE = 1
    SAFE = 2


class Whence(enum.Enum):
    """Where a new subscriber starts: the oldest data or the current end."""

    BEGIN = "begin"
    END = "end"


# MessageId and Message are NamedTuples, not attrs classes, on purpose: a
# reader creates two per message, and building them with tuple.__new__
# costs a third of a frozen attrs instance (0.4 vs 1.3 us), which is the
# difference between ~330k and ~500k messages/s. They stay immutable,
# hashable and ordered (ids compare as (log, marker)).


class MessageId(NamedTuple):
    """The position of a message: segment ``log`` and 1-based ``marker`` in it.

    ``marker == 0`` means "before the first message of ``log``". Printed as
    libjlog does, ``%08x:%08x``; ids order as ``(log, marker)``.
    """

    log: int
    marker: int

    def __str__(self) -> str:
        return f"{self.log:08x}:{self.marker:08x}"

    @classmethod
    def parse(cls, text: str) -> MessageId:
        """Parse ``LLLLLLLL:MMMMMMMM`` (hex, as printed by ``str()``).

        Args:
            text: the printed id.

        Returns:
            The id.

        Raises:
            JlogInvalidArgument: the text is not two hex u32 joined by ``:``.
        """
        log, sep, marker = text.strip().partition(":")
        try:
            if not sep:
                raise ValueError(text)
            value = cls(int(log, 16), int(marker, 16))
        except ValueError:
            raise JlogInvalidArgument(
                f"message id {text!r} is not LOG:MARKER in hex (e.g. 00000000:00000002)"
            ) from None
        if not (0 <= value.log <= 0xFFFFFFFF and 0 <= value.marker <= 0xFFFFFFFF):
            raise JlogInvalidArgument(f"message id {text!r} does not fit two u32")
        return value


class Message(NamedTuple):
    """One message read from a jlog.

    Attributes:
        id: its position; checkpoint this id once the message is processed.
        sec: seconds since the epoch when it was written.
        usec: microseconds part of the write time.
        payload: the bytes written (decompressed for compressed jlogs).
    """

    id: MessageId
    sec: int
    usec: int
    payload: bytes

    @property
    def time(self) -> float:
        """The write time as a POSIX timestamp."""
        return self.sec + self.usec / 1_000_000


@attrs.frozen
class Meta:
    """The 16-byte ``metastore``: where writers append and how.

    Attributes:
        storage_log: the segment writers append to.
        unit_limit: segment size threshold in bytes; reaching it rolls over.
        safety: the libjlog safety mode.
        hdr_magic: record magic; :data:`LZ4_MAGIC` for compressed jlogs.
    """

    storage_log: int
    unit_limit: int
    safety: Safety
    hdr_magic: int

    @property
    def compressed(self) -> bool:
        """Whether records carry the 20-byte compressed header and an LZ4 block."""
        return is_compressed_magic(self.hdr_magic)

    @property
    def header_size(self) -> int:
        """Size of one record header: 16 plain, 20 compressed."""
        return LZ4_HEADER.size if self.compressed else PLAIN_HEADER.size


def is_compressed_magic(magic: int) -> bool:
    """Tell whether ``magic`` announces compressed records (libjlog's test)."""
    return magic & COMPRESSION_MAGIC_BASE == COMPRESSION_MAGIC_BASE


def encode_meta(meta: Meta) -> bytes:
    """Return the 16 bytes of a metastore."""
    return META.pack(meta.storage_log, meta.unit_limit, int(meta.safety), meta.hdr_magic)


def meta_problems(raw: bytes) -> list[str]:
    """List why ``raw`` is not a valid metastore (empty when it is).

    Args:
        raw: the whole content of a ``metastore`` file.

    Returns:
        One human-readable reason per invalid field.
    """
    if len(raw) != META.size:
        return [f"metastore is {len(raw)} bytes, expected {META.size}"]
    _, unit_limit, safety, magic = META.unpack(raw)
    problems = []
    if unit_limit == 0:
        problems.append("unit_limit is 0")
    if safety not in (0, 1, 2):
        problems.append(f"safety is {safety}, expected 0, 1 or 2")
    if magic not in (PLAIN_MAGIC, LZ4_MAGIC):
        problems.append(f"hdr_magic is {magic:#010x}, expected {PLAIN_MAGIC:#x} or {LZ4_MAGIC:#x}")
    return problems


def decode_meta(raw: bytes) -> Meta:
    """Decode a metastore.

    Args:
        raw: the whole content of a ``metastore`` file.

    Returns:
        The decoded metastore.

    Raises:
        JlogCorrupt: the content is not a valid metastore; the message lists why.
    """
    problems = meta_problems(raw)
    if problems:
        raise JlogCorrupt("bad metastore: " + "; ".join(problems) + "; run repair()")
    storage_log, unit_limit, safety, magic = META.unpack(raw)
    return Meta(storage_log, unit_limit, Safety(safety), magic)


# --- names ---------------------------------------------------------------------


def segment_name(log: int) -> str:
    """Return the file name of segment ``log`` (8 lowercase hex digits)."""
    return f"{log:08x}"


def index_name(log: int) -> str:
    """Return the file name of the index of segment ``log``."""
    return f"{log:08x}{INDEX_SUFFIX}"


def parse_segment_name(name: str) -> int | None:
    """Return the log id a file name stands for, or ``None`` if it is no segment."""
    if len(name) == 8 and _SEGMENT_NAME.fullmatch(name):
        return int(name, 16)
    return None


def validate_subscriber(name: str) -> bytes:
    """Check a subscriber name and return its bytes.

    Args:
        name: the subscriber name.

    Returns:
        The name encoded as libjlog stores it (UTF-8; undecodable bytes read
        from disk round-trip through ``surrogateescape``).

    Raises:
        JlogInvalidArgument: the name is empty, contains NUL, or is longer
            than :data:`MAX_SUBSCRIBER_BYTES` bytes.
    """
    if not isinstance(name, str) or not name:
        raise JlogInvalidArgument("subscriber name must be a non-empty string")
    raw = name.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise JlogInvalidArgument("subscriber name must not contain NUL")
    if len(raw) > MAX_SUBSCRIBER_BYTES:
        raise JlogInvalidArgument(
            f"subscriber name is {len(raw)} bytes, longer than {MAX_SUBSCRIBER_BYTES} "
            "(its checkpoint file name would exceed 255 bytes)"
        )
    return raw


def checkpoint_name(name: str) -> str:
    """Return the ``cp.<hex>`` file name of subscriber ``name``.

    Raises:
        JlogInvalidArgument: see :func:`validate_subscriber`.
    """
    return CHECKPOINT_PREFIX + validate_subscriber(name).hex()


def parse_checkpoint_name(filename: str) -> str | None:
    """Return the subscriber a ``cp.*`` file belongs to, or ``None``."""
    if not filename.startswith(CHECKPOINT_PREFIX):
        return None
    hexpart = filename[len(CHECKPOINT_PREFIX) :]
    if not _HEX_NAME.fullmatch(hexpart):
        return None
    raw = bytes.fromhex(hexpart)
    if b"\0" in raw:
        return None
    return raw.decode("utf-8", "surrogateescape")


# --- checkpoints and indexes -----------------------------------------------------


def encode_checkpoint(position: MessageId) -> bytes:
    """Return the 8 bytes of a ``cp.*`` file."""
    return CHECKPOINT.pack(position.log, position.marker)


def decode_checkpoint(raw: bytes) -> MessageId:
    """Decode a ``cp.*`` file.

    Raises:
        JlogCorrupt: the file is not exactly 8 bytes.
    """
    if len(raw) != CHECKPOINT.size:
        raise JlogCorrupt(f"checkpoint is {len(raw)} bytes, expected 8; run repair()")
    log, marker = CHECKPOINT.unpack(raw)
    return MessageId(log, marker)


def encode_index(offsets: Sequence[int], *, closed: bool = False) -> bytes:
    """Return ``.idx`` bytes for ``offsets``, with the close marker if ``closed``.

    A segment without records never gets a close marker: libjlog would
    mistake it for one record at offset 0.
    """
    body = struct.pack(f"<{len(offsets)}Q", *offsets)
    if closed and offsets:
        body += U64.pack(0)
    return body


def decode_index(raw: bytes) -> tuple[list[int], bool]:
    """Decode an ``.idx`` file into record offsets and the closed flag.

    Args:
        raw: the whole index file.

    Returns:
        ``(offsets, closed)``.

    Raises:
        JlogCorrupt: the length is not a multiple of 8 (IDX_CORRUPT), or an
            offset of 0 appears anywhere but first or as the close marker,
            or the offsets do not increase.
    """
    if len(raw) % 8:
        raise JlogCorrupt(f"index is {len(raw)} bytes, not a multiple of 8")
    offsets = list(struct.unpack(f"<{len(raw) // 8}Q", raw))
    closed = len(offsets) >= 2 and offsets[-1] == 0
    if closed:
        offsets.pop()
    for i in range(1, len(offsets)):
        if offsets[i] <= offsets[i - 1]:
            raise JlogCorrupt(f"index entry {i + 1} ({offsets[i]}) does not increase")
    if offsets and offsets[0] != 0:
        raise JlogCorrupt(f"index starts at {offsets[0]}, not at offset 0")
    return offsets, closed


# --- records ------------------------------------------------------------------


class WalkStop(enum.Enum):
    """Why a walk over segment bytes stopped."""

    END = "end"
    """Exactly at the end of the bytes: every record is complete."""
    INCOMPLETE = "incomplete"
    """A trailing record is cut short (a writer mid-write, or a torn write)."""
    BAD_MAGIC = "bad_magic"
    """A header does not carry the jlog's magic: the data is corrupt."""


@attrs.frozen
class Walk:
    """The result of walking records in a buffer.

    Attributes:
        offsets: start of each complete record, relative to the buffer.
        end: offset just past the last complete record.
        stop: why the walk stopped at ``end``.
    """

    offsets: list[int]
    end: int
    stop: WalkStop


def walk_records(buf: bytes | memoryview, magic: int, start: int = 0, base: int = 0) -> Walk:
    """Find the complete records in ``buf`` from ``start``.

    A record is complete when its header and its whole (on-disk) payload lie
    inside ``buf``; a trailing incomplete record is left alone (a writer may
    be mid-write).

    Args:
        buf: segment bytes.
        magic: the jlog's ``hdr_magic``.
        start: where the first record starts in ``buf``.
        base: added to every reported offset (the file offset of ``buf[0]``).

    Returns:
        The offsets found and where (relative to ``buf``) and why the walk stopped.
    """
    compressed = is_compressed_magic(magic)
    unpack = (_LZ4_WALK if compressed else _PLAIN_WALK).unpack_from
    hsize = LZ4_HEADER.size if compressed else PLAIN_HEADER.size
    size = len(buf)
    last = size - hsize
    offsets: list[int] = []
    append = offsets.append
    pos = start
    # The hottest loop of reading: one unpack, one test, one append per
    # record. A record running past the buffer is only noticed after the
    # loop (its end is then past ``last`` too) and taken back there.
    while pos <= last:
        found, length = unpack(buf, pos)
        if found != magic:
            return Walk(_rebase(offsets, base), pos, WalkStop.BAD_MAGIC)
        append(pos)
        pos += length + hsize
    if pos > size:
        pos = offsets.pop()
        return Walk(_rebase(offsets, base), pos, WalkStop.INCOMPLETE)
    return Walk(_rebase(offsets, base), pos, WalkStop.END if pos == size else WalkStop.INCOMPLETE)


def _rebase(offsets: list[int], base: int) -> list[int]:
    return list(map(add, offsets, repeat(base))) if base else offsets


def record_end(header: bytes | memoryview, offset: int, magic: int) -> int:
    """Return where the record whose header starts ``header`` ends.

    Args:
        header: at least one header's worth of bytes.
        offset: the record's offset in its segment.
        magic: the jlog's ``hdr_magic``.

    Raises:
        JlogCorrupt: the header's magic is wrong or it is too short.
    """
    compressed = is_compressed_magic(magic)
    walker = _LZ4_WALK if compressed else _PLAIN_WALK
    if len(header) < walker.size:
        raise JlogCorrupt(f"record header at offset {offset} is cut short")
    found, length = walker.unpack_from(header, 0)
    if found != magic:
        raise JlogCorrupt(f"bad record magic {found:#010x} at offset {offset}")
    hsize = LZ4_HEADER.size if compressed else PLAIN_HEADER.size
    end: int = offset + hsize + length
    return end


@attrs.frozen
class RecordCodec:
    """Encodes payloads into records for one jlog (its magic decides the layout)."""

    magic: int

    @property
    def compressed(self) -> bool:
        """Whether records are LZ4-compressed."""
        return is_compressed_magic(self.magic)

    def encode(self, payload: bytes, sec: int, usec: int) -> bytes:
        """Return one record: header then payload (compressed if the jlog is).

        Raises:
            JlogInvalidArgument: the payload is longer than a u32 can say.
        """
        if len(payload) > 0xFFFFFFFF:
            raise JlogInvalidArgument("a jlog payload must be shorter than 4 GiB")
        if self.compressed:
            block: bytes = lz4.block.compress(payload, store_size=False)
            return LZ4_HEADER.pack(self.magic, sec, usec, len(payload), len(block)) + block
        return PLAIN_HEADER.pack(self.magic, sec, usec, len(payload)) + payload

    def encode_many(self, payloads: Sequence[bytes], sec: int, usec: int) -> list[bytes]:
        """Encode several payloads with one timestamp.

        Returns:
            One ``bytes`` per record, in order.
        """
        if self.compressed:
            return [self.encode(p, sec, usec) for p in payloads]
        pack = PLAIN_HEADER.pack
        magic = self.magic
        return [pack(magic, sec, usec, len(p)) + p for p in payloads]


def decode_payload(buf: bytes | memoryview, offset: int, magic: int) -> tuple[int, int, bytes, int]:
    """Decode the record at ``offset`` in ``buf``.

    Args:
        buf: bytes holding the whole record.
        offset: where its header starts in ``buf``.
        magic: the jlog's ``hdr_magic``.

    Returns:
        ``(seconds, microseconds, payload, end)`` with ``end`` the offset
        just past the record.

    Raises:
        JlogCorrupt: bad magic, a record running past ``buf``, or an LZ4
            block that does not decompress to the announced length.
    """
    if is_compressed_magic(magic):
        if offset + LZ4_HEADER.size > len(buf):
            raise JlogCorrupt(f"record header at offset {offset} is cut short")
        found, sec, usec, length, disk = LZ4_HEADER.unpack_from(buf, offset)
        if found != magic:
            raise JlogCorrupt(f"bad record magic {found:#010x} at offset {offset}")
        start = offset + LZ4_HEADER.size
        end = start + disk
        if end > len(buf):
            raise JlogCorrupt(f"record at offset {offset} runs past the end of its segment")
        try:
            payload = lz4.block.decompress(bytes(buf[start:end]), uncompressed_size=length)
        except Exception as exc:  # lz4 raises its own LZ4BlockError, untyped
            raise JlogCorrupt(
                f"LZ4 block at offset {offset} does not decompress: {exc}; run repair()"
            ) from exc
        if len(payload) != length:
            raise JlogCorrupt(f"LZ4 block at offset {offset} has the wrong length")
        return sec, usec, payload, end
    if offset + PLAIN_HEADER.size > len(buf):
        raise JlogCorrupt(f"record header at offset {offset} is cut short")
    found, sec, usec, length = PLAIN_HEADER.unpack_from(buf, offset)
    if found != magic:
        raise JlogCorrupt(f"bad record magic {found:#010x} at offset {offset}")
    start = offset + PLAIN_HEADER.size
    end = start + length
    if end > len(buf):
        raise JlogCorrupt(f"record at offset {offset} runs past the end of its segment")
    return sec, usec, bytes(buf[start:end]), end


def decode_pre_commit(raw: bytes) -> bytes:
    """Return the not-yet-flushed records held in a ``pre_commit`` file.

    Args:
        raw: the whole ``pre_commit`` file (4-byte "bytes used" + buffer).

    Returns:
        The used part of the buffer (``b""`` when unused or empty).

    Raises:
        JlogCorrupt: "bytes used" claims more than the file holds.
    """
    if len(raw) < U32.size:
        return b""
    (used,) = U32.unpack_from(raw, 0)
    if used > len(raw) - U32.size:
        raise JlogCorrupt(
            f"pre_commit claims {used} bytes but holds {len(raw) - U32.size}; run repair()"
        )
    return raw[U32.size : U32.size + used]
