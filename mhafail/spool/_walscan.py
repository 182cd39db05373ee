"""The commit log on disk: the record codec, the segments, and the replay.

The read side of ``_wal.py`` (see its docstring for the format): what a
replay, a takeover and the operator commands need without an open
:class:`~mhafail.spool._wal.CommitLog`. A log may hold *imported* logs
(``wal/in.<name>/``, each a whole ``wal/`` of a dead node's spool renamed
in by a takeover, possibly with imports of its own): they are replayed
with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

from mhafail._fs import fsync_dir
from mhafail.spool._files import FILE_MODE, sync_files

logger = logging.getLogger("mhafail.spool._wal")

WAL = "wal"
SPARE = "spare."
MAX_SPARES = 2

_HEAD = struct.Struct("<4sQII")
BLOCK = 4096  # batches are block-aligned: a torn write of one never touches an earlier one
_MAGIC = b"MHW1"
_ID_LEN = 26
PUT, DROP = b"P", b"D"
_SEGMENT = re.compile(r"(spare\.)?([0-9a-f]{16})")
IMPORTED = "in."
_IMPORT = re.compile(r"in\.[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_NESTING = 8
RECORD_OVERHEAD = _HEAD.size + 1 + _ID_LEN  # bytes of a record besides its body


def segment_name(seq: int, *, spare: bool = False) -> str:
    return f"{SPARE if spare else ''}{seq:016x}"


def encode(seq: int, kind: bytes, message_id: str, body: bytes = b"") -> bytes:
    """One record of segment ``seq``."""
    payload = kind + message_id.encode("ascii") + body
    seqb = struct.pack("<Q", seq)
    return _HEAD.pack(_MAGIC, seq, len(payload), zlib.crc32(payload, zlib.crc32(seqb))) + payload


def padded(records: bytes) -> bytes:
    """A batch's records padded with zeros to a whole number of blocks."""
    return records + bytes(-len(records) % BLOCK)


def scan(raw: bytes | memoryview, seq: int) -> Iterator[tuple[bytes, str, bytes]]:
    """The valid records of segment ``seq`` (``raw`` its contents), in order.

    Batches start on block boundaries; a record that does not check out
    ends its batch (the padding, or a torn unacknowledged one), and the
    scan goes on at the next block boundary unless it is on one already.
    """
    view = memoryview(raw)
    for kind, message_id, at, length in scan_at(view, seq):
        yield kind, message_id, bytes(view[at : at + length])


def scan_at(raw: bytes | memoryview, seq: int) -> Iterator[tuple[bytes, str, int, int]]:
    """As :func:`scan`, with where each record's body is: ``(kind, id, offset, length)``."""
    view = memoryview(raw)
    offset = 0
    seqb = struct.pack("<Q", seq)
    while offset + _HEAD.size <= len(view):
        magic, rseq, length, crc = _HEAD.unpack_from(view, offset)
        start = offset + _HEAD.size
        good = magic == _MAGIC and rseq == seq and 1 + _ID_LEN <= length <= len(view) - start
        payload = view[start : start + length] if good else view[0:0]
        if not good or zlib.crc32(payload, zlib.crc32(seqb)) != crc:
            if offset % BLOCK == 0:
                return
            offset += -offset % BLOCK
            continue
        kind = bytes(payload[:1])
        try:
            message_id = bytes(payload[1 : 1 + _ID_LEN]).decode("ascii")
        except UnicodeDecodeError:
            return
        if kind not in (PUT, DROP):
            return
        yield kind, message_id, start + 1 + _ID_LEN, length - 1 - _ID_LEN
        offset = start + length


def tree(wal_dir: Path, *, depth: int = 0) -> list[tuple[Path, int]]:
    """Every segment in use of the log in ``wal_dir`` and of the logs imported into it.

    Imported logs (``in.<name>/``, taken over from a dead node's spool:
    :meth:`CommitLog.adopt`; they may hold imports of their own) come
    first, deepest first: they are older than the log they were imported
    into, which may hold drops of their puts. Each log's segments by seq.
    Shared data: symlinks and names that fit no pattern are ignored, and
    nesting is bounded.
    """
    try:
        names = sorted(os.listdir(wal_dir))
    except FileNotFoundError:
        return []
    found: list[tuple[Path, int]] = []
    used: list[int] = []
    for name in names:
        path = wal_dir / name
        if _IMPORT.fullmatch(name) and depth < MAX_NESTING:
            if path.is_dir() and not path.is_symlink():
                found.extend(tree(path, depth=depth + 1))
            continue
        match = _SEGMENT.fullmatch(name)
        if match is not None and not match.group(1):
            used.append(int(match.group(2), 16))
    found.extend((wal_dir / segment_name(seq), seq) for seq in sorted(used))
    return found


def imports(wal_dir: Path) -> list[Path]:
    """The logs imported directly into ``wal_dir``."""
    try:
        names = os.listdir(wal_dir)
    except FileNotFoundError:
        return []
    return [wal_dir / n for n in sorted(names) if _IMPORT.fullmatch(n)]


def segments(directory: Path) -> tuple[list[int], list[int]]:
    """The seqs of the segments in use and of the spares in ``<directory>/wal``, sorted."""
    try:
        names = os.listdir(directory / WAL)
    except FileNotFoundError:
        return [], []
    used: list[int] = []
    spares: list[int] = []
    for name in names:
        match = _SEGMENT.fullmatch(name)
        if match is not None:
            (spares if match.group(1) else used).append(int(match.group(2), 16))
    return sorted(used), sorted(spares)


def logged(directory: Path) -> dict[str, bytes]:
    """The messages in the log of the spool in ``directory``, not dropped, with their bytes.

    A read-only look (no lock taken: status, ``spool list``); some of them
    may also be filed in ``msg/`` already.
    """
    puts: dict[str, bytes] = {}
    dropped: set[str] = set()
    for path, seq in tree(directory / WAL):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            continue  # retired while we looked
        for kind, message_id, body in scan(raw, seq):
            if kind == PUT:
                puts[message_id] = body
            else:
                dropped.add(message_id)
    return {mid: body for mid, body in puts.items() if mid not in dropped}


def pending(directory: Path) -> bool:
    """True when the spool in ``directory`` has log segments to replay (no lock taken)."""
    return bool(tree(directory / WAL))


def write_new(path: Path, body: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(body)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _write_file(path: Path, tmp: Path, body: bytes) -> None:
    write_new(tmp, body)
    os.rename(tmp, path)


def _same(path: Path, body: bytes) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(len(body) + 1) == body
    except FileNotFoundError:
        return False


def recover(directory: Path, *, msg: str = "msg", tmp: str = "tmp") -> int:
    """Replay the log of the spool in ``directory`` into ``msg/``; return files rewritten.

    Call only while holding the spool (inside a fence section). Every
    put not dropped is made present and whole in ``msg/``, every dropped
    message absent; then ``msg/`` is made durable and the segments are
    retired. Idempotent: a crash midway replays again.

    Raises:
        OSError: the replay could not finish (nothing was retired).
    """
    wal_dir, msg_dir, tmp_dir = directory / WAL, directory / msg, directory / tmp
    found = tree(wal_dir)
    if not found:
        return 0
    puts: dict[str, bytes] = {}
    dropped: set[str] = set()
    for path, seq in found:
        raw = path.read_bytes()
        for kind, message_id, body in scan(raw, seq):
            if kind == PUT:
                puts[message_id] = body
            else:
                dropped.add(message_id)
    rewritten: list[Path] = []
    for message_id, body in puts.items():
        if message_id in dropped:
            continue
        path = msg_dir / message_id
        if not _same(path, body):
            _write_file(path, tmp_dir / message_id, body)
            rewritten.append(path)
    for message_id in dropped:
        for name in (message_id, message_id + ".state"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(msg_dir / name)
    sync_files(directory, rewritten)
    fsync_dir(msg_dir)
    _retire_all(wal_dir, found)
    if rewritten or dropped:
        logger.warning(
            "spool %s: replayed its commit log: %d messages rewritten, %d dropped ones removed",
            directory,
            len(rewritten),
            len(dropped),
        )
    return len(rewritten)


def _retire_all(wal_dir: Path, found: list[tuple[Path, int]]) -> None:
    """Retire the segments of a replay: ours (kept as spares), imported logs (removed)."""
    for path, seq in found:
        if path.parent == wal_dir:
            retire(wal_dir, seq)
    for imported in imports(wal_dir):
        shutil.rmtree(imported, ignore_errors=True)
    fsync_dir(wal_dir)


def retire(wal_dir: Path, seq: int) -> None:
    _, spares = segments(wal_dir.parent)
    # Gone already: retired by a replay (the spool was taken again meanwhile).
    with contextlib.suppress(FileNotFoundError):
        if len(spares) >= MAX_SPARES:
            os.unlink(wal_dir / segment_name(seq))
        else:
            os.rename(wal_dir / segment_name(seq), wal_dir / segment_name(seq, spare=True))
