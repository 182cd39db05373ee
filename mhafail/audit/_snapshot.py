"""Snapshot files: one series' counts over one interval, versioned and checksummed.

Format version 1 (all integers big-endian)::

    offset  size  field
    0       8     magic b"MHAUDIT\\n"
    8       4     H: length of the JSON header
    12      H     header, UTF-8 JSON object:
                    format      "mhafail-audit-snapshot"
                    version     1
                    series      series name
                    family      "ipv4" | "ipv6" | "string"
                    resolution  "raw" | "hour" | "day"
                    start, end  epoch seconds (int) the counts cover, [start, end)
                    entries     number of keys N
                    total       sum of the counts
                    dropped     increments lost to max_keys (not in the counts)
                    sources     raw snapshots summed into this file (1 for raw)
    12+H    ...   keys, sorted ascending:
                    ipv4: N x 4 bytes; ipv6: N x 16 bytes;
                    string: N x (2-byte length + UTF-8 bytes), sorted by bytes
    ...     N*8   counts, unsigned 64-bit, in key order (a writer saturates
                  a larger count at 2**64 - 1 and adds the excess to dropped)
    end-4   4     CRC-32 (zlib) of every byte before it

Keys sorted in a fixed-width column let a reader binary-search the range of
one CIDR without decoding the rest of the file. Readers refuse unknown
versions, bad magic, a size that does not add up and a bad checksum with
:class:`~mhafail.errors.SnapshotCorrupt`. Writers write a temporary file,
fsync it and rename it into place, so a reader never sees half a snapshot.
"""

from __future__ import annotations

import array
import bisect
import itertools
import json
import operator
import os
import struct
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from mhafail.audit._keys import KeyFamily
from mhafail.errors import SnapshotCorrupt

__all__ = ["FORMAT_VERSION", "Snapshot", "SnapshotHeader", "read_snapshot", "write_snapshot"]

FORMAT_VERSION = 1
MAGIC = b"MHAUDIT\n"
_FORMAT_NAME = "mhafail-audit-snapshot"
_RESOLUTIONS = ("raw", "hour", "day")
MAX_COUNT = (1 << 64) - 1
_KEY_BYTES = {KeyFamily.IPV4: 4, KeyFamily.IPV6: 16}


@attrs.frozen
class SnapshotHeader:
    """What a snapshot file says about itself.

    Attributes:
        series: the series name.
        family: its key family.
        resolution: ``"raw"`` (one as_logger interval), ``"hour"`` or ``"day"``.
        start: epoch second the counts start at (inclusive).
        end: epoch second they end at (exclusive).
        entries: number of distinct keys.
        total: sum of the counts.
        dropped: increments the series could not keep (``max_keys``).
        sources: raw snapshots summed into this one.
    """

    series: str
    family: KeyFamily
    resolution: str
    start: int
    end: int
    entries: int
    total: int
    dropped: int = 0
    sources: int = 1


@attrs.define
class Snapshot:
    """A snapshot file loaded for queries: header plus sorted key and count columns.

    Address keys stay packed in ``bytes`` and are binary-searched in place,
    so opening a large daily roll-up to count one /16 decodes only that
    /16's entries.
    """

    header: SnapshotHeader
    _keys: bytes | tuple[str, ...]
    _counts: bytes

    @property
    def family(self) -> KeyFamily:
        """The key family."""
        return self.header.family

    def _key_at(self, i: int) -> int:
        width = _KEY_BYTES[self.header.family]
        keys = self._keys
        assert isinstance(keys, bytes)
        return int.from_bytes(keys[i * width : (i + 1) * width], "big")

    def _span(self, lo: int, hi: int) -> tuple[int, int]:
        n = self.header.entries
        first = bisect.bisect_left(range(n), lo, key=self._key_at)
        last = bisect.bisect_right(range(n), hi, lo=first, key=self._key_at)
        return first, last

    def range_total(self, lo: int, hi: int) -> int:
        """Return the sum of counts of address keys in ``[lo, hi]``."""
        first, last = self._span(lo, hi)
        if first == last:
            return 0
        return sum(struct.unpack_from(f">{last - first}Q", self._counts, first * 8))

    def range_items(self, lo: int, hi: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Return the address keys in ``[lo, hi]`` and their counts, sorted."""
        first, last = self._span(lo, hi)
        m = last - first
        counts: tuple[int, ...] = struct.unpack_from(f">{m}Q", self._counts, first * 8)
        keys = self._keys
        assert isinstance(keys, bytes)
        if self.header.family is KeyFamily.IPV4:
            return struct.unpack_from(f">{m}I", keys, first * 4), counts
        view = memoryview(keys)
        return tuple(
            int.from_bytes(view[o : o + 16], "big") for o in range(first * 16, last * 16, 16)
        ), counts

    def string_count(self, key: str) -> int:
        """Return the count of one key of a string series (0 if absent)."""
        keys = self._keys
        assert isinstance(keys, tuple)
        encoded = key.encode()
        i = bisect.bisect_left(keys, encoded, key=str.encode)
        if i < len(keys) and keys[i] == key:
            return int(struct.unpack_from(">Q", self._counts, i * 8)[0])
        return 0

    def items(self) -> dict[Any, int]:
        """Return every key and its count (decodes the whole file)."""
        n = self.header.entries
        counts = struct.unpack_from(f">{n}Q", self._counts, 0)
        if isinstance(self._keys, tuple):
            return dict(zip(self._keys, counts, strict=True))
        keys, counts = self.range_items(0, (1 << self.header.family.width) - 1)
        return dict(zip(keys, counts, strict=True))


def _encode_keys(family: KeyFamily, keys: list[Any]) -> bytes:
    if family is KeyFamily.IPV4:
        return struct.pack(f">{len(keys)}I", *keys)
    if family is KeyFamily.IPV6:
        return b"".join(k.to_bytes(16, "big") for k in keys)
    parts = []
    for key in keys:
        raw = key.encode()
        if len(raw) > 0xFFFF:
            raise SnapshotCorrupt(f"string key of {len(raw)} bytes is too long for a snapshot")
        parts.append(len(raw).to_bytes(2, "big") + raw)
    return b"".join(parts)


def encode_snapshot(header: SnapshotHeader, counts: Mapping[Any, int]) -> bytes:
    """Return the bytes of a snapshot file (format version 1).

    Args:
        header: everything but ``entries`` and ``total``, which are
            recomputed from ``counts``.
        counts: count per key (ints for addresses, str for strings).

    Returns:
        The file contents.
    """
    # Strings sort by their UTF-8 bytes so readers can bisect the encoded column.
    keys = sorted(counts, key=str.encode) if header.family is KeyFamily.STRING else sorted(counts)
    values = [counts[k] for k in keys]
    dropped = header.dropped
    if values and max(values) > MAX_COUNT:
        # Saturate rather than fail: one runaway key must not cost the
        # interval of every other key. The excess is reported as dropped.
        dropped += sum(v - MAX_COUNT for v in values if v > MAX_COUNT)
        values = [min(v, MAX_COUNT) for v in values]
    meta = {
        "format": _FORMAT_NAME,
        "version": FORMAT_VERSION,
        "series": header.series,
        "family": header.family.value,
        "resolution": header.resolution,
        "start": header.start,
        "end": header.end,
        "entries": len(keys),
        "total": sum(values),
        "dropped": dropped,
        "sources": header.sources,
    }
    head = json.dumps(meta, sort_keys=True).encode()
    body = b"".join(
        (
            MAGIC,
            len(head).to_bytes(4, "big"),
            head,
            _encode_keys(header.family, keys),
            struct.pack(f">{len(values)}Q", *values),
        )
    )
    return body + zlib.crc32(body).to_bytes(4, "big")


def write_snapshot(path: Path, header: SnapshotHeader, counts: Mapping[Any, int]) -> None:
    """Write a snapshot file atomically (temporary file, fsync, rename, fsync dir).

    Args:
        path: the final file name.
        header: the header (``entries``/``total`` are recomputed).
        counts: count per key.

    Raises:
        OSError: the file system refused.
    """
    data = encode_snapshot(header, counts)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def decode_snapshot(data: bytes, name: str = "<bytes>") -> Snapshot:
    """Parse and verify snapshot bytes.

    Args:
        data: the whole file.
        name: used in error messages.

    Returns:
        The snapshot.

    Raises:
        SnapshotCorrupt: bad magic, version, header, size or checksum.
    """
    if len(data) < 16 or data[:8] != MAGIC:
        raise SnapshotCorrupt(f"{name}: not an mhafail audit snapshot (bad magic)")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "big"):
        raise SnapshotCorrupt(f"{name}: checksum mismatch (truncated or damaged file)")
    head_len = int.from_bytes(data[8:12], "big")
    try:
        meta = json.loads(data[12 : 12 + head_len])
        if meta["format"] != _FORMAT_NAME or meta["version"] != FORMAT_VERSION:
            raise SnapshotCorrupt(
                f"{name}: snapshot format {meta.get('format')!r} v{meta.get('version')} "
                f"is not supported (this reader knows v{FORMAT_VERSION})"
            )
        header = SnapshotHeader(
            series=str(meta["series"]),
            family=KeyFamily(meta["family"]),
            resolution=str(meta["resolution"]),
            start=int(meta["start"]),
            end=int(meta["end"]),
            entries=int(meta["entries"]),
            total=int(meta["total"]),
            dropped=int(meta["dropped"]),
            sources=int(meta["sources"]),
        )
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        if isinstance(exc, SnapshotCorrupt):
            raise
        raise SnapshotCorrupt(f"{name}: unreadable header ({exc!r})") from None
    if header.resolution not in _RESOLUTIONS:
        raise SnapshotCorrupt(f"{name}: unknown resolution {header.resolution!r}")
    body_start = 12 + head_len
    counts_len = header.entries * 8
    counts_start = len(data) - 4 - counts_len
    if header.entries < 0 or counts_start < body_start:
        raise SnapshotCorrupt(f"{name}: size does not match {header.entries} entries")
    keys: bytes | tuple[str, ...]
    if header.family is KeyFamily.STRING:
        keys = _decode_strings(data, body_start, counts_start, header.entries, name)
    else:
        width = _KEY_BYTES[header.family]
        if counts_start - body_start != header.entries * width:
            raise SnapshotCorrupt(f"{name}: size does not match {header.entries} entries")
        keys = data[body_start:counts_start]
        _check_sorted(keys, width, name)
    counts = data[counts_start:-4]
    if sum(struct.unpack(f">{header.entries}Q", counts)) != header.total:
        raise SnapshotCorrupt(f"{name}: counts do not add up to the header's total")
    return Snapshot(header, keys, counts)


def _check_sorted(keys: bytes, width: int, name: str) -> None:
    # Readers binary-search the key column: a file with a valid CRC but keys
    # out of order (crafted, or a buggy writer) would give wrong counts.
    if width == 4:
        column: Sequence[Any] = array.array("I", keys)
        if sys.byteorder == "little":
            column.byteswap()  # type: ignore[attr-defined]
    else:
        view = memoryview(keys)
        column = [view[i : i + width].tobytes() for i in range(0, len(keys), width)]
    if not all(map(operator.lt, column, itertools.islice(column, 1, None))):
        raise SnapshotCorrupt(f"{name}: keys are not in strictly ascending order")


def _decode_strings(data: bytes, pos: int, end: int, entries: int, name: str) -> tuple[str, ...]:
    keys = []
    try:
        for _ in range(entries):
            length = int.from_bytes(data[pos : pos + 2], "big")
            keys.append(data[pos + 2 : pos + 2 + length].decode())
            pos += 2 + length
    except UnicodeDecodeError:
        raise SnapshotCorrupt(f"{name}: a string key is not UTF-8") from None
    if pos != end:
        raise SnapshotCorrupt(f"{name}: size does not match {entries} entries")
    encoded = [key.encode() for key in keys]
    if not all(map(operator.lt, encoded, itertools.islice(encoded, 1, None))):
        raise SnapshotCorrupt(f"{name}: keys are not in strictly ascending order")
    return tuple(keys)


def read_snapshot(path: Path) -> Snapshot:
    """Read and verify one snapshot file.

    Args:
        path: the file.

    Returns:
        The snapshot.

    Raises:
        SnapshotCorrupt: the file does not verify.
        OSError: the file cannot be read.
    """
    return decode_snapshot(path.read_bytes(), str(path))
