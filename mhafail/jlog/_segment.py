"""A reader's view of one segment: its index, kept in step with the data.

Readers, not writers, build ``XXXXXXXX.idx`` (docs/jlog.md, "Format compatibility"):
under the index file's lock, walk forward from the last indexed record,
append one u64 offset per complete record, and close the index with a u64
0 once the segment is old (``log < storage_log``), fully walked and not
growing. :class:`SegmentView` does this incrementally and remembers what it
has seen, so a reader that polls a growing segment only reads new bytes.
"""

from __future__ import annotations

import logging
import os
import struct
from itertools import repeat
from operator import sub
from pathlib import Path

from mhafail.errors import JlogCorrupt

from . import _format as fmt
from ._block import MessageBlock, plain_payloads, verify_plain_headers
from ._files import file_size, open_rw, pread_all, pwrite_all
from ._lock import locked

log_ = logging.getLogger(__name__)

_RESYNC_ATTEMPTS = 4


class _StaleIndex(Exception):
    """An index file that does not match its segment; rebuilding it is safe."""


class SegmentView:
    """Open descriptors, cached offsets and recent bytes of one segment.

    Not thread-safe: each reader owns its views and serializes calls.
    Other processes are handled through the index lock.
    """

    def __init__(self, path: Path, log: int, magic: int, data_fd: int, idx_fd: int) -> None:
        self.path = path
        self.log = log
        self.magic = magic
        self.compressed = fmt.is_compressed_magic(magic)
        self.header = fmt.LZ4_HEADER if self.compressed else fmt.PLAIN_HEADER
        self.data_fd = data_fd
        self.idx_fd = idx_fd
        self.offsets: list[int] = []
        self.closed = False
        self._idx_len = 0
        self._end = 0
        self._buf = b""
        self._buf_base = 0
        # Index ranges [lo, hi) of records this view walked itself: their
        # headers were checked then, so bulk reads need not parse them again.
        self._walked: list[tuple[int, int]] = []

    @classmethod
    def open(cls, path: Path, log: int, magic: int) -> SegmentView | None:
        """Open segment ``log`` and its index; ``None`` if the segment does not exist."""
        try:
            data_fd = open_rw(path / fmt.segment_name(log))
        except FileNotFoundError:
            return None
        try:
            idx_fd = open_rw(path / fmt.index_name(log), create=True)
        except BaseException:
            os.close(data_fd)
            raise
        return cls(path, log, magic, data_fd, idx_fd)

    def close(self) -> None:
        """Close both descriptors."""
        os.close(self.data_fd)
        os.close(self.idx_fd)
        self._buf = b""

    @property
    def count(self) -> int:
        """Number of complete records indexed so far."""
        return len(self.offsets)

    def end_of_file(self) -> int:
        """Return the segment's current size in bytes."""
        return file_size(self.data_fd)

    @property
    def end(self) -> int:
        """Offset just past the last indexed record."""
        return self._end

    def _reset(self) -> None:
        self.offsets = []
        self._walked = []
        self.closed = False
        self._idx_len = 0
        self._end = 0
        self._buf = b""

    def _drop_index(self, reason: str) -> None:
        # The index is derived data: rebuilding it is always safe, and it is
        # what libjlog does for IDX_CORRUPT too.
        log_.warning("jlog %s: rebuilding index of %08x: %s", self.path, self.log, reason)
        os.ftruncate(self.idx_fd, 0)
        self._reset()

    def _load_index(self, idx_len: int, data_len: int) -> None:
        """Bring ``offsets`` up to the index file (index lock held).

        Raises:
            _StaleIndex: the index cannot be trusted and must be rebuilt.
        """
        if idx_len % 8:
            raise _StaleIndex(f"length {idx_len} is not a multiple of 8")
        if idx_len < self._idx_len:
            self._reset()  # someone (repair) rebuilt it: start over
        if idx_len == self._idx_len:
            return
        raw = pread_all(self.idx_fd, idx_len - self._idx_len, self._idx_len)
        if len(raw) % 8:
            raise _StaleIndex("index changed while read")
        new = list(struct.unpack(f"<{len(raw) // 8}Q", raw))
        closed = len(self.offsets) + len(new) >= 2 and bool(new) and new[-1] == 0
        if closed:
            new.pop()
        prev = self.offsets[-1] if self.offsets else -1
        for offset in new:
            if offset <= prev or offset >= data_len:
                raise _StaleIndex(f"entry {offset} is out of order or past the data")
            prev = offset
        if not self.offsets and new and new[0] != 0:
            raise _StaleIndex("first entry is not offset 0")
        end = self._end
        if new:
            header = pread_all(self.data_fd, self.header.size, new[-1])
            try:
                end = fmt.record_end(header, new[-1], self.magic)
            except JlogCorrupt as exc:
                raise _StaleIndex(str(exc)) from None
            if end > data_len:
                raise _StaleIndex(f"last entry {new[-1]} runs past the data")
        if closed and end != data_len:
            # A closed index says the segment ends with its last record; bytes
            # after it are records it misses (libjlog or a crash wrote them
            # after closing): trusting it would skip them and let retention
            # delete them unread.
            raise _StaleIndex(f"closed at offset {end} but the segment holds {data_len} bytes")
        self.offsets.extend(new)
        self._idx_len = idx_len
        self._end = end
        self.closed = closed

    def resync(self, storage_log: int) -> None:
        """Index every complete record the segment holds now.

        Args:
            storage_log: the metastore's current ``storage_log``; segments
                below it are old and get closed once fully indexed.

        Raises:
            JlogCorrupt: a record header has the wrong magic, or an old
                segment ends with an incomplete record (a torn write that
                no writer will finish). ``repair()`` fixes both.
        """
        if self.closed:
            return
        for _ in range(_RESYNC_ATTEMPTS):
            with locked(self.idx_fd):
                data_len = file_size(self.data_fd)
                try:
                    self._load_index(file_size(self.idx_fd), data_len)
                except _StaleIndex as exc:
                    self._drop_index(str(exc))
                    continue
                if self.closed:
                    return
                if self._walk(data_len, storage_log):
                    return
        raise JlogCorrupt(f"segment {self.log:08x} keeps changing under its index; retry")

    def _walk(self, data_len: int, storage_log: int) -> bool:
        """Extend the index from ``end`` (index lock held); False means start over."""
        pos = self._end
        buf = pread_all(self.data_fd, data_len - pos, pos) if data_len > pos else b""
        walk = fmt.walk_records(buf, self.magic, 0, pos)
        if walk.stop is fmt.WalkStop.BAD_MAGIC:
            raise JlogCorrupt(
                f"segment {self.log:08x}: bad record magic at offset {pos + walk.end}; run repair()"
            )
        if walk.offsets:
            pwrite_all(self.idx_fd, fmt.encode_index(walk.offsets), self._idx_len)
            self._idx_len += 8 * len(walk.offsets)
            lo = len(self.offsets)
            self.offsets.extend(walk.offsets)
            if self._walked and self._walked[-1][1] == lo:
                lo = self._walked.pop()[0]
            self._walked.append((lo, len(self.offsets)))
            self._buf, self._buf_base = buf, pos
        self._end = pos + walk.end
        if self.log >= storage_log:
            return True
        # An old segment: the writer has moved on, but it may have appended
        # just before moving the storage_log, so only a stable size closes.
        if file_size(self.data_fd) != data_len:
            return False
        if self._end != data_len:
            raise JlogCorrupt(
                f"segment {self.log:08x} is old but ends with an incomplete record at "
                f"offset {self._end} ({data_len - self._end} bytes); run repair()"
            )
        if self.offsets:
            pwrite_all(self.idx_fd, fmt.U64.pack(0), self._idx_len)
            self._idx_len += 8
        self.closed = True
        return True

    def read(self, first: int, count: int) -> list[fmt.Message]:
        """Decode ``count`` messages starting at marker ``first`` (1-based).

        Args:
            first: marker of the first message; ``first + count - 1`` must be indexed.
            count: how many messages.

        Returns:
            The messages, in order.

        Raises:
            JlogCorrupt: the data no longer matches the index.
        """
        start, stop = self._span(first, count)
        buf, base = self._bytes(start, stop)
        log = self.log
        magic = self.magic
        out: list[fmt.Message] = []
        append = out.append
        pos = start - base
        # tuple.__new__ skips the NamedTuple constructors' argument handling:
        # this loop runs once per message read.
        new = tuple.__new__
        message_cls, id_cls = fmt.Message, fmt.MessageId
        if self.compressed:
            window = buf[: stop - base] if stop - base < len(buf) else buf
            for marker in range(first, first + count):
                sec, usec, payload, pos = fmt.decode_payload(window, pos, magic)
                append(new(message_cls, (new(id_cls, (log, marker)), sec, usec, payload)))
        else:
            unpack = self.header.unpack_from
            hsize = self.header.size
            limit = stop - base
            i0 = first - 1
            # Every index entry must point at its record, as read_block checks
            # them: a damaged entry in the middle of the span is corruption
            # here too (a walk from the first entry alone would not see it).
            # Entries this view indexed itself were checked by that walk.
            expected = None
            if not any(lo <= i0 and i0 + count <= hi for lo, hi in self._walked):
                expected = iter(self.offsets[i0 : i0 + count])
            for marker in range(first, first + count):
                if expected is not None and base + pos != next(expected):
                    raise JlogCorrupt(
                        f"segment {self.log:08x} does not match its index at record {marker}; "
                        "run repair()"
                    )
                if pos + hsize > limit:
                    raise JlogCorrupt(
                        f"segment {self.log:08x}: record {marker} at offset {base + pos} runs "
                        "past its index; run repair()"
                    )
                found, sec, usec, length = unpack(buf, pos)
                if found != magic:
                    raise JlogCorrupt(
                        f"segment {self.log:08x}: bad record magic at offset {base + pos}; "
                        "run repair()"
                    )
                pos += hsize
                end = pos + length
                if end > limit:
                    raise JlogCorrupt(
                        f"segment {self.log:08x}: record {marker} at offset {base + pos - hsize} "
                        "runs past its index; run repair()"
                    )
                append(new(message_cls, (new(id_cls, (log, marker)), sec, usec, buf[pos:end])))
                pos = end
        if base + pos != stop:
            raise JlogCorrupt(f"segment {self.log:08x} does not match its index; run repair()")
        return out

    def _span(self, first: int, count: int) -> tuple[int, int]:
        """File offsets where record ``first`` starts and record ``first + count - 1`` ends."""
        offsets = self.offsets
        i0 = first - 1
        stop = offsets[i0 + count] if i0 + count < len(offsets) else self._end
        return offsets[i0], stop

    def _bytes(self, start: int, stop: int) -> tuple[bytes, int]:
        """The segment's bytes from ``start`` to ``stop`` (or more) and the offset of ``buf[0]``."""
        base = self._buf_base
        buf = self._buf
        if not (base <= start and stop <= base + len(buf)):
            buf = pread_all(self.data_fd, stop - start, start)
            base = start
            if len(buf) != stop - start:
                raise JlogCorrupt(f"segment {self.log:08x} is shorter than its index; run repair()")
        return buf, base

    def read_block(self, first: int, count: int) -> MessageBlock:
        """Read ``count`` messages from marker ``first`` as one :class:`MessageBlock`.

        Plain records this view indexed itself were checked by that walk;
        the others' headers are checked here, all at once.

        Raises:
            JlogCorrupt: the data no longer matches the index.
        """
        mid = fmt.MessageId(self.log, first)
        if self.compressed:
            messages = self.read(first, count)
            return MessageBlock(
                mid, [m.payload for m in messages], stamps=[(m.sec, m.usec) for m in messages]
            )
        start, stop = self._span(first, count)
        buf, base = self._bytes(start, stop)
        i0 = first - 1
        starts = self.offsets[i0 : i0 + count]
        if base:
            starts = list(map(sub, starts, repeat(base)))
        if any(lo <= i0 and i0 + count <= hi for lo, hi in self._walked):
            # Checked by the walk; a cheap guard against the file changing since (a repair).
            for at in (starts[0], starts[-1]):
                if fmt.record_end(buf[at : at + fmt.PLAIN_HEADER.size], at, self.magic) > len(buf):
                    raise JlogCorrupt(f"segment {self.log:08x} is shorter than its index")
        else:
            verify_plain_headers(buf, starts, stop - base, self.magic, self.log)
        payloads = plain_payloads(buf, starts, stop - base)
        return MessageBlock(mid, payloads, buf=buf, starts=starts)
