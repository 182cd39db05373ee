"""Corruption is detected (never silently skipped) and repair() keeps every record that parses."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mhafail.errors import JlogCorrupt
from mhafail.jlog import Jlog, MessageId, ProblemKind

RECORD = 16 + 30  # every test record: 16-byte header + 30-byte payload


def _payload(i: int) -> bytes:
    return b"%029d." % i


def _jlog(tmp_path: Path) -> Jlog:
    """Segments 0, 1, 2 (3 records each, full) and 3 (empty, being written)."""
    jlog = Jlog.create(tmp_path / "j", unit_limit=3 * RECORD)
    with jlog.writer() as writer:
        writer.write_many([_payload(i) for i in range(9)])
    jlog.add_subscriber("s")
    assert jlog.read_meta().storage_log == 3
    return jlog


def _read(jlog: Jlog, name: str = "s") -> list[bytes]:
    with jlog.reader(name) as reader:
        out = []
        for m in reader:
            out.append(m.payload)
        return out


def _kinds(jlog: Jlog) -> set[ProblemKind]:
    return {p.kind for p in jlog.inspect().problems}


def test_healthy_jlog_needs_no_repair(tmp_path: Path) -> None:
    """inspect() finds nothing and repair() changes nothing on a healthy jlog."""
    jlog = _jlog(tmp_path)
    assert jlog.inspect().ok
    report = jlog.repair()
    assert (report.found, report.cuts, report.checkpoints, report.remaining) == ([], [], [], [])
    assert _read(jlog) == [_payload(i) for i in range(9)]


def test_truncated_closed_segment(tmp_path: Path) -> None:
    """A closed segment cut mid-record raises on read; repair cuts the stub and reports it."""
    jlog = _jlog(tmp_path)
    seg = jlog.path / "00000000"
    seg.write_bytes(seg.read_bytes()[: 2 * RECORD + 10])
    assert ProblemKind.TRUNCATED_SEGMENT in _kinds(jlog)
    with pytest.raises(JlogCorrupt, match="incomplete record"):
        _read(jlog)
    report = jlog.repair()
    assert [(c.log, c.offset, c.length) for c in report.cuts] == [(0, 2 * RECORD, 10)]
    assert report.remaining == []
    assert _read(jlog) == [_payload(i) for i in range(9) if i != 2]


def test_flipped_magic_keeps_the_records_around_it(tmp_path: Path) -> None:
    """A record with a flipped magic is cut; records before and after it are kept."""
    jlog = _jlog(tmp_path)
    seg = jlog.path / "00000001"
    data = bytearray(seg.read_bytes())
    data[RECORD] ^= 0xFF
    seg.write_bytes(bytes(data))
    assert ProblemKind.CORRUPT_SEGMENT in _kinds(jlog)
    with jlog.reader("s") as reader:
        first = reader.read_batch()
        assert [m.payload for m in first] == [_payload(i) for i in range(3)]
        reader.checkpoint(first[-1].id)
        with pytest.raises(JlogCorrupt, match="bad record magic"):
            reader.read_batch()
    report = jlog.repair()
    assert [(c.log, c.offset, c.length) for c in report.cuts] == [(1, RECORD, RECORD)]
    assert report.remaining == []
    assert _read(jlog) == [_payload(i) for i in (3, 5, 6, 7, 8)]


def test_repair_never_moves_a_checkpoint_past_unread_data(tmp_path: Path) -> None:
    """A checkpoint in a segment that loses an earlier record moves back by exactly that record."""
    jlog = _jlog(tmp_path)
    jlog.add_subscriber("ahead")
    jlog.set_checkpoint("ahead", MessageId(1, 2))  # consumed records 3 and 4
    seg = jlog.path / "00000001"
    data = bytearray(seg.read_bytes())
    data[0] ^= 0xFF  # record 3 (marker 1) is damaged
    seg.write_bytes(bytes(data))
    report = jlog.repair()
    moves = {m.subscriber: (m.old, m.new) for m in report.checkpoints}
    assert moves == {"ahead": (MessageId(1, 2), MessageId(1, 1))}
    assert _read(jlog, "ahead") == [_payload(i) for i in range(5, 9)]


def test_odd_sized_index_is_detected_and_rebuilt(tmp_path: Path) -> None:
    """An index whose length is not a multiple of 8 is reported, ignored by readers, and rebuilt."""
    jlog = _jlog(tmp_path)
    assert len(_read(jlog)) == 9
    jlog.set_checkpoint("s", MessageId(0, 0))
    idx = jlog.path / "00000000.idx"
    good = idx.read_bytes()
    idx.write_bytes(good + b"xyz")
    assert ProblemKind.BAD_INDEX in _kinds(jlog)
    jlog.repair()
    assert idx.read_bytes() == good
    idx.write_bytes(good + b"xyz")
    assert _read(jlog) == [_payload(i) for i in range(9)]
    assert idx.read_bytes() == good


def test_stale_index_entries_are_not_trusted(tmp_path: Path) -> None:
    """An index pointing into the middle of records is rebuilt instead of returning junk."""
    jlog = _jlog(tmp_path)
    (jlog.path / "00000000.idx").write_bytes(struct.pack("<3Q", 0, 5, 9))
    assert ProblemKind.BAD_INDEX in _kinds(jlog)
    assert _read(jlog) == [_payload(i) for i in range(9)]


def test_bad_metastore_is_detected_and_rebuilt(tmp_path: Path) -> None:
    """A garbage metastore makes open() fail; repair restores its fields from the data."""
    jlog = _jlog(tmp_path)
    storage_log = jlog.read_meta().storage_log
    (jlog.path / "metastore").write_bytes(struct.pack("<IIII", 0, 0, 9, 0xDEADBEEF))
    with pytest.raises(JlogCorrupt, match="bad metastore"):
        Jlog.open(jlog.path)
    assert ProblemKind.BAD_METASTORE in _kinds(jlog)
    report = jlog.repair()
    assert report.remaining == []
    meta = Jlog.open(jlog.path).meta
    assert (meta.storage_log, meta.unit_limit, meta.hdr_magic) == (
        storage_log,
        4 * 1024 * 1024,
        0x663A7318,
    )
    with jlog.writer() as writer:
        writer.write(_payload(9))
    assert _read(jlog) == [_payload(i) for i in range(10)]


def test_short_metastore_is_detected(tmp_path: Path) -> None:
    """A metastore of the wrong size is invalid and repaired to 16 bytes."""
    jlog = _jlog(tmp_path)
    (jlog.path / "metastore").write_bytes(b"\x01\x02")
    assert ProblemKind.BAD_METASTORE in _kinds(jlog)
    jlog.repair()
    assert len((jlog.path / "metastore").read_bytes()) == 16


def test_missing_segment_is_reported_not_skipped(tmp_path: Path) -> None:
    """A segment missing between others stops readers; repair records the loss, lets them go on."""
    jlog = _jlog(tmp_path)
    (jlog.path / "00000001").unlink()
    assert ProblemKind.MISSING_SEGMENT in _kinds(jlog)
    with jlog.reader("s") as reader:
        first = reader.read_batch()
        reader.checkpoint(first[-1].id)
        with pytest.raises(JlogCorrupt, match="missing"):
            reader.read_batch()
    report = jlog.repair()
    assert any(p.kind is ProblemKind.MISSING_SEGMENT for p in report.found)
    assert report.remaining == []
    assert _read(jlog) == [_payload(i) for i in (6, 7, 8)]


def test_damaged_checkpoint_restarts_from_the_oldest_data(tmp_path: Path) -> None:
    """A checkpoint file of the wrong size is reset to the oldest data, never forward."""
    jlog = _jlog(tmp_path)
    (jlog.path / "cp.73").write_bytes(b"\x01")
    assert ProblemKind.BAD_CHECKPOINT in _kinds(jlog)
    report = jlog.repair()
    assert [(m.subscriber, m.old, m.new) for m in report.checkpoints] == [
        ("s", None, MessageId(0, 0))
    ]
    assert _read(jlog) == [_payload(i) for i in range(9)]


def test_torn_tail_of_the_current_segment_is_cut(tmp_path: Path) -> None:
    """repair cuts a torn record at the end of the segment being written."""
    jlog = _jlog(tmp_path)
    last = jlog.path / f"{jlog.read_meta().storage_log:08x}"
    with open(last, "ab") as f:
        f.write(struct.pack("<IIII", 0x663A7318, 0, 0, 50) + b"torn")
    assert ProblemKind.INCOMPLETE_TAIL in _kinds(jlog)
    report = jlog.repair()
    assert [c.length for c in report.cuts] == [20]
    assert _read(jlog) == [_payload(i) for i in range(9)]
