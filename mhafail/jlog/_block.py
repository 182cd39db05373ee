"""Bulk reads: consecutive messages of one segment as one :class:`MessageBlock`.

``read_batch`` builds a :class:`~mhafail.jlog.Message` (two tuples) per
message, which costs more than finding the message. A block keeps the
payloads in a list and derives ids and timestamps only when asked, so a
consumer that wants the payloads (a forwarder, a copier) pays for one
``bytes`` slice per message (libjlog's ``jlog_ctx_bulk_read_messages``).
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence
from itertools import repeat
from operator import add, sub

from mhafail.errors import JlogCorrupt

from . import _format as fmt

__all__ = ["MessageBlock", "plain_payloads", "verify_plain_headers"]


class MessageBlock:
    """Messages ``first`` … ``last`` of one segment, as ``read_many`` returns them.

    An empty block (false, ``len`` 0) means the reader is caught up.

    Attributes:
        first: the id of ``payloads[0]`` (the next one to read when empty).
        payloads: the message bytes, in order (decompressed for LZ4 jlogs).
    """

    __slots__ = ("_buf", "_stamps", "_starts", "first", "payloads")

    def __init__(
        self,
        first: fmt.MessageId,
        payloads: list[bytes],
        *,
        stamps: list[tuple[int, int]] | None = None,
        buf: bytes = b"",
        starts: Sequence[int] = (),
    ) -> None:
        self.first = first
        self.payloads = payloads
        self._stamps = stamps
        # Plain records: where each header starts in ``buf`` (timestamps on demand).
        self._buf = buf
        self._starts = starts

    def __len__(self) -> int:
        return len(self.payloads)

    def __iter__(self) -> Iterator[bytes]:
        """Iterate over the payloads."""
        return iter(self.payloads)

    def __repr__(self) -> str:
        return f"MessageBlock(first={self.first}, count={len(self.payloads)})"

    @property
    def last(self) -> fmt.MessageId:
        """The id of the last message: checkpoint it once the block is processed.

        For an empty block: the position before ``first`` (where the reader is).
        """
        return fmt.MessageId(self.first.log, self.first.marker + len(self.payloads) - 1)

    def ids(self) -> list[fmt.MessageId]:
        """The id of every message, in order."""
        log, marker = self.first
        return [fmt.MessageId(log, m) for m in range(marker, marker + len(self.payloads))]

    def stamps(self) -> list[tuple[int, int]]:
        """``(seconds, microseconds)`` of every message's write time, in order."""
        if self._stamps is None:
            unpack = fmt.PLAIN_HEADER.unpack_from
            self._stamps = [unpack(self._buf, s)[1:3] for s in self._starts]
            self._buf = b""
        return self._stamps

    def messages(self) -> list[fmt.Message]:
        """The block as :class:`~mhafail.jlog.Message` values (what ``read_batch`` returns)."""
        return [
            fmt.Message(mid, sec, usec, payload)
            for mid, (sec, usec), payload in zip(
                self.ids(), self.stamps(), self.payloads, strict=True
            )
        ]


def plain_payloads(buf: bytes, starts: list[int], stop: int) -> list[bytes]:
    """Slice the payloads of plain records whose headers start at ``starts`` in ``buf``.

    Each payload runs from its header's end to the next record's start
    (``stop`` for the last one); the caller has checked the headers.
    """
    hsize = fmt.PLAIN_HEADER.size
    ends = starts[1:]
    ends.append(stop)
    return [buf[a:b] for a, b in zip(map(add, starts, repeat(hsize)), ends, strict=True)]


def verify_plain_headers(buf: bytes, starts: list[int], stop: int, magic: int, log: int) -> None:
    """Check that plain records at ``starts`` carry ``magic`` and lengths that chain to ``stop``.

    Raises:
        JlogCorrupt: a header disagrees with the index (run ``repair()``).
    """
    hsize = fmt.PLAIN_HEADER.size
    payload_starts = list(map(add, starts, repeat(hsize)))
    raw = b"".join([buf[a:b] for a, b in zip(starts, payload_starts, strict=True)])
    heads = array("I", raw)
    if array("I", b"\x01\x00\x00\x00")[0] != 1:  # pragma: no cover - big-endian hosts
        heads.byteswap()
    ends = starts[1:]
    ends.append(stop)
    ok = (
        len(heads) == 4 * len(starts)
        and heads[0::4].count(magic) == len(starts)
        and heads[3::4].tolist() == list(map(sub, ends, payload_starts))
    )
    if not ok:
        raise JlogCorrupt(f"segment {log:08x} does not match its index; run repair()")
