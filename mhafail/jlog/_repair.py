"""``inspect()`` finds what is wrong with a jlog; ``repair()`` fixes it without losing unread data.

What is checked and how it is fixed:

- metastore: wrong size or invalid field -> rewritten, keeping the valid
  fields (an invalid record magic is recovered from the segments), with
  ``storage_log`` = the highest segment, as libjlog's repair does;
- indexes: odd-sized, stale (not matching the records), or closed while
  the segment is still written -> rebuilt;
- segments: a bad record magic, a torn end or an LZ4 block that does not
  decompress -> every record that still decodes is kept, the rest is cut
  and reported (byte ranges);
- missing segments between existing ones that no subscriber has read past
  -> replaced by empty segments (their data is gone; reported) so readers
  can go on past them (a hole some subscriber has passed is libjlog's
  ordinary retention: neither reported nor filled);
- checkpoints: damaged or pointing past the data -> moved *back* only
  (to the oldest data, the end of the segment, or the last kept record
  before a cut), so nothing unread is ever skipped;
- ``pre_commit``: a damaged one is cleared (reported); pending records
  from a crashed writer are flushed by opening a writer.

``repair()`` holds the metastore lock, plus each segment's and index's lock
while rewriting them; run it while writers are stopped if you can.
"""

from __future__ import annotations

import contextlib
import enum
import os
from pathlib import Path

import attrs

from mhafail.errors import JlogCorrupt, JlogInvalidArgument

from . import _format as fmt
from ._files import (
    FILE_MODE,
    list_checkpoint_files,
    list_segments,
    open_rw,
    passed_hole,
    pread_all,
    pwrite_all,
)
from ._lock import lock, locked, unlock


class ProblemKind(enum.Enum):
    """The kinds of damage :func:`inspect` reports."""

    BAD_METASTORE = "bad_metastore"
    STALE_METASTORE = "stale_metastore"
    BAD_INDEX = "bad_index"
    CORRUPT_SEGMENT = "corrupt_segment"
    TRUNCATED_SEGMENT = "truncated_segment"
    INCOMPLETE_TAIL = "incomplete_tail"
    MISSING_SEGMENT = "missing_segment"
    BAD_CHECKPOINT = "bad_checkpoint"
    PRE_COMMIT_PENDING = "pre_commit_pending"
    BAD_PRE_COMMIT = "bad_pre_commit"


@attrs.frozen
class Problem:
    """One thing wrong with a jlog.

    Attributes:
        kind: what kind of damage.
        file: the file concerned (relative to the jlog directory).
        detail: a sentence saying what exactly.
    """

    kind: ProblemKind
    file: str
    detail: str


@attrs.frozen
class InspectReport:
    """The result of :func:`inspect`.

    Attributes:
        meta: the metastore, or ``None`` when it is invalid.
        segments: ``{log: complete records}`` for every segment present.
        problems: everything found wrong (empty when healthy).
    """

    meta: fmt.Meta | None
    segments: dict[int, int]
    problems: list[Problem]

    @property
    def ok(self) -> bool:
        """Whether nothing is wrong (a pending ``pre_commit`` counts as wrong)."""
        return not self.problems


@attrs.frozen
class Cut:
    """Bytes ``repair()`` removed from a segment because no record parsed there.

    Attributes:
        log: the segment.
        offset: where the bytes started in the damaged file.
        length: how many bytes were cut.
    """

    log: int
    offset: int
    length: int


@attrs.frozen
class CheckpointMove:
    """A checkpoint ``repair()`` moved (always back, never past unread data)."""

    subscriber: str
    old: fmt.MessageId | None
    new: fmt.MessageId


@attrs.frozen
class RepairReport:
    """The result of :func:`repair`.

    Attributes:
        found: what :func:`inspect` reported before the repair.
        cuts: byte ranges cut out of segments.
        checkpoints: checkpoints moved back.
        pre_commit_records: records flushed from ``pre_commit``.
        remaining: what :func:`inspect` still reports afterwards (empty on success).
    """

    found: list[Problem]
    cuts: list[Cut]
    checkpoints: list[CheckpointMove]
    pre_commit_records: int
    remaining: list[Problem]


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _segments_magic(path: Path, segments: list[int]) -> int | None:
    """The record magic most segments start with (``None``: no segment tells)."""
    votes = {fmt.PLAIN_MAGIC: 0, fmt.LZ4_MAGIC: 0}
    for log in segments:
        with contextlib.suppress(FileNotFoundError), open(path / fmt.segment_name(log), "rb") as f:
            head = f.read(4)
        if len(head) == 4:
            (magic,) = fmt.U32.unpack(head)
            if magic in votes:
                votes[magic] += 1
    if not any(votes.values()):
        return None
    return max(votes, key=lambda m: votes[m])


def _decodes(data: bytes, offset: int, magic: int) -> bool:
    """Whether the record at ``offset`` decodes (an LZ4 block may not, intact lengths or not)."""
    try:
        fmt.decode_payload(data, offset, magic)
    except JlogCorrupt:
        return False
    return True


def _undecodable(data: bytes, offsets: list[int], magic: int) -> list[int]:
    """Offsets of the framed records whose LZ4 block does not decompress (none when plain)."""
    if not fmt.is_compressed_magic(magic):
        return []
    return [offset for offset in offsets if not _decodes(data, offset, magic)]


def _check_jlog_dir(path: Path) -> None:
    if not path.is_dir():
        raise JlogInvalidArgument(f"{path} is not a directory, so not a jlog")
    if not (path / fmt.METASTORE).exists() and not list_segments(path):
        raise JlogInvalidArgument(f"{path} has neither a metastore nor segments: not a jlog")


def _effective_meta(path: Path, segments: list[int]) -> tuple[fmt.Meta, list[str], bool]:
    """The metastore as repair would write it, why it differs, and whether it is stale."""
    raw = _read(path / fmt.METASTORE) if (path / fmt.METASTORE).exists() else b""
    problems = fmt.meta_problems(raw) if raw else ["metastore is missing"]
    latest = segments[-1] if segments else 0
    if len(raw) == fmt.META.size:
        storage_log, unit_limit, safety, magic = fmt.META.unpack(raw)
    else:
        storage_log, unit_limit, safety, magic = latest, 0, -1, 0
    if unit_limit == 0:
        unit_limit = fmt.DEFAULT_UNIT_LIMIT
    if safety not in (0, 1, 2):
        safety = int(fmt.Safety.ALMOST_SAFE)
    on_disk = _segments_magic(path, segments)
    if magic not in (fmt.PLAIN_MAGIC, fmt.LZ4_MAGIC):
        magic = fmt.PLAIN_MAGIC if on_disk is None else on_disk
    elif on_disk is not None and on_disk != magic:
        # Both values are valid, so only the segments can tell which is
        # right; trusting the metastore would cut every record as damage.
        problems = [
            *problems,
            f"record magic {magic:#010x} disagrees with the segments' {on_disk:#010x}",
        ]
        magic = on_disk
    stale = bool(segments) and storage_log != latest
    if stale:
        storage_log = latest
    return fmt.Meta(storage_log, unit_limit, fmt.Safety(safety), magic), problems, stale


def _salvage(data: bytes, magic: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """Split segment bytes into records that parse and byte ranges that do not.

    After a bad spot, the next record is the first offset carrying the magic
    whose record fits and is followed by another magic or the end of data.
    """
    hsize = fmt.LZ4_HEADER.size if fmt.is_compressed_magic(magic) else fmt.PLAIN_HEADER.size
    needle = fmt.U32.pack(magic)
    size = len(data)

    compressed = fmt.is_compressed_magic(magic)

    def record_at(pos: int) -> int | None:
        if pos + hsize > size or data[pos : pos + 4] != needle:
            return None
        end = fmt.record_end(data[pos : pos + hsize], pos, magic)
        if end > size or (compressed and not _decodes(data, pos, magic)):
            return None
        return end

    def plausible(pos: int) -> bool:
        end = record_at(pos)
        return end is not None and (end == size or data[end : end + 4] == needle)

    def find_plausible(start: int, stop: int) -> int | None:
        nxt = data.find(needle, start, stop)
        while nxt != -1 and not plausible(nxt):
            nxt = data.find(needle, nxt + 1, stop)
        return None if nxt == -1 else nxt

    kept: list[tuple[int, int]] = []
    cuts: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        end = record_at(pos)
        if end is not None:
            if end == size or data[end : end + 4] == needle:
                kept.append((pos, end))
                pos = end
                continue
            # The record fits but damage follows it. A plausible record
            # starting inside it means its own length field is the damage.
            inner = find_plausible(pos + 1, end)
            if inner is None:
                kept.append((pos, end))
                pos = end
            else:
                cuts.append((pos, inner))
                pos = inner
            continue
        nxt = find_plausible(pos + 1, size)
        if nxt is None:
            cuts.append((pos, size))
            break
        cuts.append((pos, nxt))
        pos = nxt
    return kept, cuts


def _inspect_segment(
    path: Path, log: int, meta: fmt.Meta, problems: list[Problem]
) -> tuple[bytes, fmt.Walk]:
    name = fmt.segment_name(log)
    data = _read(path / name)
    walk = fmt.walk_records(data, meta.hdr_magic)
    for offset in _undecodable(data, walk.offsets, meta.hdr_magic):
        problems.append(
            Problem(
                ProblemKind.CORRUPT_SEGMENT,
                name,
                f"LZ4 block of the record at offset {offset} does not decompress",
            )
        )
    if walk.stop is fmt.WalkStop.BAD_MAGIC:
        problems.append(
            Problem(ProblemKind.CORRUPT_SEGMENT, name, f"bad record magic at offset {walk.end}")
        )
    elif walk.stop is fmt.WalkStop.INCOMPLETE:
        kind = (
            ProblemKind.TRUNCATED_SEGMENT if log < meta.storage_log else ProblemKind.INCOMPLETE_TAIL
        )
        problems.append(
            Problem(
                kind,
                name,
                f"ends with an incomplete record at offset {walk.end} "
                f"({len(data) - walk.end} bytes)",
            )
        )
    idx_path = path / fmt.index_name(log)
    if idx_path.exists():
        raw = _read(idx_path)
        idx_name = fmt.index_name(log)
        try:
            offsets, closed = fmt.decode_index(raw)
        except Exception as exc:  # JlogCorrupt with the reason
            problems.append(Problem(ProblemKind.BAD_INDEX, idx_name, str(exc)))
        else:
            if offsets != walk.offsets[: len(offsets)]:
                problems.append(
                    Problem(ProblemKind.BAD_INDEX, idx_name, "entries do not match the records")
                )
            elif closed and (log >= meta.storage_log or len(offsets) != len(walk.offsets)):
                problems.append(
                    Problem(ProblemKind.BAD_INDEX, idx_name, "closed although records follow")
                )
    return data, walk


def inspect(path: str | os.PathLike[str]) -> InspectReport:
    """Check a jlog without changing anything.

    Args:
        path: the jlog directory.

    Returns:
        The metastore, the record count of each segment, and every problem found.

    Raises:
        JlogInvalidArgument: ``path`` is not a jlog directory.
    """
    path = Path(path)
    _check_jlog_dir(path)
    segments = list_segments(path)
    meta, meta_problems, stale = _effective_meta(path, segments)
    problems = [Problem(ProblemKind.BAD_METASTORE, fmt.METASTORE, p) for p in meta_problems]
    if stale and not meta_problems:
        problems.append(
            Problem(
                ProblemKind.STALE_METASTORE,
                fmt.METASTORE,
                f"storage_log is not the highest segment {meta.storage_log:08x}",
            )
        )
    counts: dict[int, int] = {}
    for log in segments:
        _, walk = _inspect_segment(path, log, meta, problems)
        counts[log] = len(walk.offsets)
    if segments:
        for log in range(segments[0], segments[-1]):
            after = min(s for s in segments if s > log)
            if log not in counts and not passed_hole(path, after):
                problems.append(
                    Problem(
                        ProblemKind.MISSING_SEGMENT,
                        fmt.segment_name(log),
                        "missing between existing segments: its data is lost",
                    )
                )
    for name, filename in sorted(list_checkpoint_files(path).items()):
        raw = _read(path / filename)
        if len(raw) != 8:
            problems.append(
                Problem(ProblemKind.BAD_CHECKPOINT, filename, f"{name!r}: {len(raw)} bytes, not 8")
            )
            continue
        position = fmt.decode_checkpoint(raw)
        if position.log > meta.storage_log or (
            position.log in counts and position.marker > counts[position.log]
        ):
            problems.append(
                Problem(
                    ProblemKind.BAD_CHECKPOINT, filename, f"{name!r} at {position}: past the data"
                )
            )
    if (path / fmt.PRE_COMMIT).exists():
        raw = _read(path / fmt.PRE_COMMIT)
        try:
            pending = fmt.decode_pre_commit(raw)
        except Exception as exc:  # JlogCorrupt with the reason
            problems.append(Problem(ProblemKind.BAD_PRE_COMMIT, fmt.PRE_COMMIT, str(exc)))
        else:
            if pending:
                problems.append(
                    Problem(
                        ProblemKind.PRE_COMMIT_PENDING,
                        fmt.PRE_COMMIT,
                        f"{len(pending)} bytes a crashed writer did not flush; "
                        "the next writer flushes them",
                    )
                )
    return InspectReport(None if meta_problems else meta, counts, problems)


def _rewrite_index(path: Path, log: int, offsets: list[int], closed: bool) -> None:
    fd = open_rw(path / fmt.index_name(log), create=True)
    try:
        with locked(fd):
            body = fmt.encode_index(offsets, closed=closed)
            os.ftruncate(fd, 0)
            pwrite_all(fd, body, 0)
            os.fsync(fd)
    finally:
        os.close(fd)


def _repair_segment(
    path: Path,
    log: int,
    *,
    meta: fmt.Meta,
    checkpoints: dict[str, fmt.MessageId],
    cuts: list[Cut],
    moves: list[CheckpointMove],
) -> None:
    fd = open_rw(path / fmt.segment_name(log))
    try:
        lock(fd)
        try:
            data = pread_all(fd, os.fstat(fd).st_size, 0)
            walk = fmt.walk_records(data, meta.hdr_magic)
            closed = log < meta.storage_log
            if walk.stop is fmt.WalkStop.END and not _undecodable(
                data, walk.offsets, meta.hdr_magic
            ):
                _fix_index_if_needed(path, log, walk.offsets, closed)
                return
            old_index = _old_index(path, log)
            kept, bad = _salvage(data, meta.hdr_magic)
            cuts.extend(Cut(log, a, b - a) for a, b in bad)
            new_data = b"".join(data[a:b] for a, b in kept)
            pwrite_all(fd, new_data, 0)
            os.ftruncate(fd, len(new_data))
            os.fsync(fd)
            offsets, pos = [], 0
            for a, b in kept:
                offsets.append(pos)
                pos += b - a
            _rewrite_index(path, log, offsets, closed)
        finally:
            unlock(fd)
    finally:
        os.close(fd)
    first_cut = bad[0][0] if bad else len(data)
    safe_prefix = sum(1 for a, _ in kept if a < first_cut)
    for name, position in checkpoints.items():
        if position.log != log or position.marker == 0:
            continue
        if old_index is not None and position.marker <= len(old_index):
            old_offset = old_index[position.marker - 1]
            marker = sum(1 for a, _ in kept if a <= old_offset)
        else:
            marker = min(position.marker, safe_prefix)
        if marker != position.marker:
            new = fmt.MessageId(log, marker)
            _force_checkpoint(path, name, new)
            moves.append(CheckpointMove(name, position, new))
            checkpoints[name] = new


def _old_index(path: Path, log: int) -> list[int] | None:
    try:
        offsets, _ = fmt.decode_index(_read(path / fmt.index_name(log)))
    except Exception:  # missing or damaged: the caller falls back to the safe prefix
        return None
    return offsets


def _fix_index_if_needed(path: Path, log: int, offsets: list[int], closed: bool) -> None:
    try:
        have, have_closed = fmt.decode_index(_read(path / fmt.index_name(log)))
    except FileNotFoundError:
        return
    except Exception:  # damaged: rebuild
        _rewrite_index(path, log, offsets, closed)
        return
    if have != offsets[: len(have)] or (have_closed and (not closed or have != offsets)):
        _rewrite_index(path, log, offsets, closed)


def _force_checkpoint(path: Path, name: str, position: fmt.MessageId) -> None:
    fd = open_rw(path / fmt.checkpoint_name(name), create=True)
    try:
        with locked(fd):
            os.ftruncate(fd, 0)
            pwrite_all(fd, fmt.encode_checkpoint(position), 0)
            os.fsync(fd)
    finally:
        os.close(fd)


def repair(path: str | os.PathLike[str]) -> RepairReport:
    """Fix a jlog: metastore, indexes, segments, holes, checkpoints, ``pre_commit``.

    Never moves a checkpoint past unread data and never deletes a segment.

    Args:
        path: the jlog directory.

    Returns:
        What was found, what was cut, which checkpoints moved back, and what
        :func:`inspect` still finds afterwards (normally nothing).

    Raises:
        JlogInvalidArgument: ``path`` is not a jlog directory.
    """
    path = Path(path)
    before = inspect(path)
    cuts: list[Cut] = []
    moves: list[CheckpointMove] = []
    meta_fd = open_rw(path / fmt.METASTORE, create=True)
    try:
        with locked(meta_fd):
            segments = list_segments(path)
            meta, problems, stale = _effective_meta(path, segments)
            if problems or stale:
                os.ftruncate(meta_fd, 0)
                pwrite_all(meta_fd, fmt.encode_meta(meta), 0)
                os.fsync(meta_fd)
            checkpoints = _repair_checkpoint_files(path, segments, meta, moves)
            for log in range(segments[0], segments[-1]) if segments else ():
                resume = min((s for s in segments if s > log), default=log + 1)
                if log not in segments and not passed_hole(path, resume):
                    # Readers stop at holes nobody read past: an empty
                    # segment lets them pass; the loss is reported.
                    os.close(
                        os.open(path / fmt.segment_name(log), os.O_CREAT | os.O_WRONLY, FILE_MODE)
                    )
            for log in list_segments(path):
                _repair_segment(
                    path, log, meta=meta, checkpoints=checkpoints, cuts=cuts, moves=moves
                )
            _clamp_checkpoints(path, meta, checkpoints, moves)
            flushed_needed = _repair_pre_commit(path)
    finally:
        os.close(meta_fd)
    pre_commit_records = 0
    if flushed_needed:
        from ._writer import JlogWriter

        writer = JlogWriter(path)
        pre_commit_records = writer.pre_commit_records
        writer.close()
    after = inspect(path)
    return RepairReport(before.problems, cuts, moves, pre_commit_records, after.problems)


def _repair_checkpoint_files(
    path: Path, segments: list[int], meta: fmt.Meta, moves: list[CheckpointMove]
) -> dict[str, fmt.MessageId]:
    first = segments[0] if segments else meta.storage_log
    out = {}
    for name, filename in list_checkpoint_files(path).items():
        raw = _read(path / filename)
        if len(raw) != 8:
            # Its position is unknown: start over from the oldest data.
            new = fmt.MessageId(first, 0)
            _force_checkpoint(path, name, new)
            moves.append(CheckpointMove(name, None, new))
            out[name] = new
        else:
            out[name] = fmt.decode_checkpoint(raw)
    return out


def _clamp_checkpoints(
    path: Path,
    meta: fmt.Meta,
    checkpoints: dict[str, fmt.MessageId],
    moves: list[CheckpointMove],
) -> None:
    for name, position in checkpoints.items():
        new = position
        if position.log > meta.storage_log:
            new = fmt.MessageId(meta.storage_log, 0)
        else:
            seg = path / fmt.segment_name(position.log)
            if seg.exists():
                count = len(fmt.walk_records(_read(seg), meta.hdr_magic).offsets)
                if position.marker > count:
                    new = fmt.MessageId(position.log, count)
        if new != position:
            _force_checkpoint(path, name, new)
            moves.append(CheckpointMove(name, position, new))


def _repair_pre_commit(path: Path) -> bool:
    """Clear a damaged ``pre_commit``; return whether it holds records to flush."""
    pc = path / fmt.PRE_COMMIT
    if not pc.exists():
        return False
    fd = open_rw(pc)
    try:
        with locked(fd):
            raw = pread_all(fd, os.fstat(fd).st_size, 0)
            try:
                return bool(fmt.decode_pre_commit(raw))
            except Exception:  # damaged counter: nothing in it can be trusted
                with contextlib.suppress(OSError):
                    pwrite_all(fd, bytes(4), 0)
                    os.fsync(fd)
                return False
    finally:
        os.close(fd)
