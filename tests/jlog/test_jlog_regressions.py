"""Regressions from the outside check of jlog (issue 13, jlog items 11-17)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mhafail.errors import JlogCorrupt
from mhafail.jlog import Jlog, MessageId, ProblemKind

RECORD = 16 + 30  # every plain test record: 16-byte header + 30-byte payload


def _payload(i: int) -> bytes:
    return b"%029d." % i


def _jlog(tmp_path: Path, *, compress: bool = False, unit: int = 3 * RECORD) -> Jlog:
    """Segments 0, 1, 2 (3 records each when plain) and 3 (being written), subscriber 's'."""
    jlog = Jlog.create(tmp_path / "j", unit_limit=unit, compress=compress)
    with jlog.writer() as writer:
        writer.write_many([_payload(i) for i in range(9)])
    jlog.add_subscriber("s")
    return jlog


def _read(jlog: Jlog, name: str = "s") -> list[bytes]:
    with jlog.reader(name) as reader:
        return [m.payload for m in reader]


def _kinds(jlog: Jlog) -> set[ProblemKind]:
    return {p.kind for p in jlog.inspect().problems}


def test_a_torn_record_in_pre_commit_does_not_block_the_writer(tmp_path: Path) -> None:
    """A pre_commit holding only a torn record is dropped (logged); writer() and repair() work."""
    jlog = _jlog(tmp_path)
    torn = struct.pack("<IIII", jlog.read_meta().hdr_magic, 1, 2, 30) + b"only ten b"
    (jlog.path / "pre_commit").write_bytes(struct.pack("<I", len(torn)) + torn)
    report = jlog.repair()
    assert report.pre_commit_records == 0
    with jlog.writer() as writer:
        writer.write(b"after")
    assert (jlog.path / "pre_commit").read_bytes()[:4] == bytes(4)
    assert _read(jlog) == [_payload(i) for i in range(9)] + [b"after"]


def test_a_whole_record_before_a_torn_one_in_pre_commit_is_flushed(tmp_path: Path) -> None:
    """Whole records in pre_commit are flushed in order and the torn tail after them dropped."""
    jlog = _jlog(tmp_path)
    magic = jlog.read_meta().hdr_magic
    whole = struct.pack("<IIII", magic, 1, 2, 4) + b"kept"
    torn = struct.pack("<IIII", magic, 1, 2, 30) + b"torn"
    (jlog.path / "pre_commit").write_bytes(struct.pack("<I", len(whole + torn)) + whole + torn)
    with jlog.writer() as writer:
        assert writer.pre_commit_records == 1
    assert _read(jlog)[-1] == b"kept"


def test_a_damaged_length_in_an_indexed_plain_segment_raises_jlog_corrupt(tmp_path: Path) -> None:
    """A record length that runs past the index raises JlogCorrupt, not struct.error."""
    jlog = _jlog(tmp_path)
    jlog.add_subscriber("t")
    assert len(_read(jlog, "t")) == 9  # builds and closes the indexes
    seg = jlog.path / "00000000"
    data = bytearray(seg.read_bytes())
    struct.pack_into("<I", data, 12, 0xFFFFFF00)  # record 1's payload length
    seg.write_bytes(bytes(data))
    with pytest.raises(JlogCorrupt, match="runs past its index"):
        _read(jlog)
    assert ProblemKind.CORRUPT_SEGMENT in _kinds(jlog) or ProblemKind.BAD_INDEX in _kinds(jlog)
    jlog.repair()
    assert _read(jlog) == [_payload(i) for i in range(1, 9)]


def test_a_closed_index_missing_records_is_rebuilt_not_trusted(tmp_path: Path) -> None:
    """Records past the end of an old segment's closed index are read, never skipped."""
    jlog = _jlog(tmp_path)
    jlog.add_subscriber("t")
    assert len(_read(jlog, "t")) == 9  # closes 00000000.idx after 3 records
    seg = jlog.path / "00000000"
    extra = struct.pack("<IIII", jlog.read_meta().hdr_magic, 1, 2, 5) + b"extra"
    seg.write_bytes(seg.read_bytes() + extra)
    assert _read(jlog) == [_payload(i) for i in range(3)] + [b"extra"] + [
        _payload(i) for i in range(3, 9)
    ]


def test_an_empty_checkpoint_of_another_subscriber_is_ignored(tmp_path: Path) -> None:
    """An empty cp.* (libjlog crashed mid-create) breaks no reader, listing or retention."""
    from mhafail.jlog._format import checkpoint_name

    jlog = _jlog(tmp_path)
    (jlog.path / checkpoint_name("ghost")).write_bytes(b"")
    with jlog.reader("s") as reader:
        got = []
        while batch := reader.read_batch():
            got.extend(m.payload for m in batch)
            reader.checkpoint(batch[-1].id)
    assert got == [_payload(i) for i in range(9)]
    assert [s.name for s in jlog.subscribers()] == ["s"]
    assert jlog.clean() == [] and not (jlog.path / "00000000").exists()  # retention ran
    (jlog.path / checkpoint_name("ghost")).write_bytes(b"\x01\x02\x03")
    with pytest.raises(JlogCorrupt, match="3 bytes"):
        jlog.subscribers()  # any other damaged size still stops retention and listing


@pytest.mark.parametrize("compress", [False, True])
def test_repair_takes_the_record_magic_from_the_segments(tmp_path: Path, compress: bool) -> None:
    """A metastore naming the other valid magic (plain vs LZ4) is fixed, and no record is cut."""
    jlog = _jlog(tmp_path, compress=compress)
    meta = jlog.path / "metastore"
    raw = bytearray(meta.read_bytes())
    other = 0x663A7318 if compress else 0x15106A01
    struct.pack_into("<I", raw, 12, other)
    meta.write_bytes(bytes(raw))
    problems = jlog.inspect().problems
    assert [p.kind for p in problems] == [ProblemKind.BAD_METASTORE]
    assert "disagrees with the segments" in problems[0].detail
    report = jlog.repair()
    assert (report.cuts, report.remaining) == ([], [])
    assert _read(Jlog.open(jlog.path)) == [_payload(i) for i in range(9)]


def test_a_damaged_lz4_block_is_detected_repaired_and_the_rest_delivered(tmp_path: Path) -> None:
    """An LZ4 record that does not decompress is reported by inspect, cut by repair, and skipped."""
    from mhafail.jlog._format import LZ4_HEADER, walk_records

    jlog = _jlog(tmp_path, compress=True, unit=1 << 20)
    jlog.add_subscriber("ahead")
    jlog.set_checkpoint("ahead", MessageId(0, 6))
    seg = jlog.path / "00000000"
    data = bytearray(seg.read_bytes())
    offsets = walk_records(bytes(data), jlog.read_meta().hdr_magic).offsets
    start, end = offsets[4] + LZ4_HEADER.size, offsets[5]
    data[start:end] = b"\xff" * (end - start)  # record 5's block, its lengths intact
    seg.write_bytes(bytes(data))
    with pytest.raises(JlogCorrupt, match="does not decompress"):
        _read(jlog)
    problems = jlog.inspect().problems
    assert [(p.kind, p.file) for p in problems] == [(ProblemKind.CORRUPT_SEGMENT, "00000000")]
    report = jlog.repair()
    assert [(c.log, c.offset, c.length) for c in report.cuts] == [(0, offsets[4], end - offsets[4])]
    assert report.remaining == []
    assert _read(jlog) == [_payload(i) for i in range(9) if i != 4]
    assert _read(jlog, "ahead") == [_payload(i) for i in range(6, 9)]  # moved back by the cut one


def test_a_hole_left_by_libjlog_retention_is_read_past(tmp_path: Path) -> None:
    """Orphaned segments below a hole some subscriber passed are read, the hole skipped, no loss."""
    from mhafail.jlog._format import checkpoint_name

    jlog = _jlog(tmp_path)
    jlog.add_subscriber("b")
    jlog.set_checkpoint("b", MessageId(2, 1))
    # libjlog: subscriber 's' removed without cleanup, then b's retention deleted segment 1 only.
    (jlog.path / checkpoint_name("s")).unlink()
    (jlog.path / "00000001").unlink()
    (jlog.path / "00000001.idx").unlink(missing_ok=True)
    assert jlog.inspect().ok
    jlog.add_subscriber("c")  # BEGIN: the oldest segment, an orphan
    assert _read(jlog, "c") == [_payload(i) for i in (0, 1, 2, 6, 7, 8)]
    assert jlog.repair().cuts == [] and not (jlog.path / "00000001").exists()


def test_a_hole_nobody_read_past_is_still_reported_as_loss(tmp_path: Path) -> None:
    """A hole below every subscriber's checkpoint means unread data was deleted: it raises."""
    jlog = _jlog(tmp_path)
    (jlog.path / "00000001").unlink()
    with pytest.raises(JlogCorrupt, match="unread data was deleted"):
        _read(jlog)
    assert ProblemKind.MISSING_SEGMENT in _kinds(jlog)
