"""What mhafail writes matches libjlog 2.x byte for byte (docs/jlog.md, "Format compatibility")."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import lz4.block
import pytest

from mhafail.errors import JlogExists, JlogInvalidArgument
from mhafail.jlog import Jlog, MessageId, Safety, Whence

PLAIN = 0x663A7318
LZ4 = 0x15106A01


def _records(data: bytes, header: str = "<IIII") -> list[tuple[int, ...]]:
    size = struct.calcsize(header)
    out, pos = [], 0
    while pos < len(data):
        fields = struct.unpack_from(header, data, pos)
        disk_len = fields[-1]
        out.append((*fields, data[pos + size : pos + size + disk_len]))
        pos += size + disk_len
    assert pos == len(data)
    return out


def test_create_writes_metastore_and_pre_commit(tmp_path: Path) -> None:
    """create() makes a 0750 directory, a 16-byte metastore and a 4-byte empty pre_commit."""
    path = tmp_path / "j"
    Jlog.create(path, unit_limit=12345, safety=Safety.SAFE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o750
    assert (path / "metastore").read_bytes() == struct.pack("<IIII", 0, 12345, 2, PLAIN)
    assert stat.S_IMODE(os.stat(path / "metastore").st_mode) == 0o640
    assert (path / "pre_commit").read_bytes() == bytes(4)
    assert sorted(p.name for p in path.iterdir()) == ["metastore", "pre_commit"]


def test_default_metastore_matches_libjlog_defaults(tmp_path: Path) -> None:
    """The defaults are libjlog's: 4 MiB unit limit, almost-safe, plain magic."""
    Jlog.create(tmp_path / "j")
    assert (tmp_path / "j" / "metastore").read_bytes() == struct.pack(
        "<IIII", 0, 4 * 1024 * 1024, 1, PLAIN
    )


def test_plain_records_have_16_byte_headers(tmp_path: Path) -> None:
    """Each plain record is magic, seconds, microseconds, length, then the payload."""
    jlog = Jlog.create(tmp_path / "j")
    with jlog.writer() as writer:
        writer.write(b"hello")
        writer.write(b"")
        writer.write_many([b"a", b"bc"])
    records = _records((tmp_path / "j" / "00000000").read_bytes())
    assert [r[0] for r in records] == [PLAIN] * 4
    assert [r[3] for r in records] == [5, 0, 1, 2]
    assert [r[4] for r in records] == [b"hello", b"", b"a", b"bc"]
    for r in records:
        assert r[2] < 1_000_000 and r[1] > 1_600_000_000


def test_compressed_records_are_raw_lz4_blocks(tmp_path: Path) -> None:
    """Compressed records carry a 20-byte header and a raw LZ4 block of the payload."""
    jlog = Jlog.create(tmp_path / "j", compress=True)
    assert (tmp_path / "j" / "metastore").read_bytes()[12:] == struct.pack("<I", LZ4)
    payloads = [b"x" * 1000, b"", b"short"]
    with jlog.writer() as writer:
        writer.write_many(payloads)
    records = _records((tmp_path / "j" / "00000000").read_bytes(), "<IIIII")
    for (magic, _s, _u, length, disk, block), payload in zip(records, payloads, strict=True):
        assert magic == LZ4 and length == len(payload) and disk == len(block)
        assert lz4.block.decompress(block, uncompressed_size=length) == payload
    assert records[0][4] < 100
    jlog.add_subscriber("s")
    with jlog.reader("s") as reader:
        assert [m.payload for m in reader] == payloads


def test_index_is_built_by_readers_and_closed_with_a_zero(tmp_path: Path) -> None:
    """The writer writes no .idx; a reader writes one u64 offset per record, plus 0 when old."""
    path = tmp_path / "j"
    jlog = Jlog.create(path, unit_limit=100)
    jlog.add_subscriber("s")
    with jlog.writer() as writer:
        writer.write_many([b"p" * 30] * 4)
    assert not list(path.glob("*.idx"))
    with jlog.reader("s") as reader:
        list(reader)
    idx0 = (path / "00000000.idx").read_bytes()
    assert struct.unpack(f"<{len(idx0) // 8}Q", idx0) == (0, 46, 92, 0)
    idx1 = (path / "00000001.idx").read_bytes()
    assert struct.unpack(f"<{len(idx1) // 8}Q", idx1) == (0,)


def test_rollover_happens_at_the_unit_limit(tmp_path: Path) -> None:
    """A segment takes records until its size reaches unit_limit, then storage_log moves on."""
    path = tmp_path / "j"
    jlog = Jlog.create(path, unit_limit=100)
    with jlog.writer() as writer:
        for _ in range(7):
            writer.write(b"r" * 30)  # 46-byte records
    sizes = {p.name: p.stat().st_size for p in sorted(path.iterdir()) if len(p.name) == 8}
    assert sizes == {"00000000": 138, "00000001": 138, "00000002": 46}
    assert struct.unpack("<I", (path / "metastore").read_bytes()[:4]) == (2,)


def test_write_many_rolls_over_like_single_writes(tmp_path: Path) -> None:
    """A batch is split at the unit limit exactly where single writes would roll over."""
    one, many = tmp_path / "one", tmp_path / "many"
    for path in (one, many):
        Jlog.create(path, unit_limit=100)
    payloads = [b"q" * n for n in (10, 50, 70, 5, 5, 200, 1, 90)]
    with Jlog.open(one).writer() as writer:
        for p in payloads:
            writer.write(p)
    with Jlog.open(many).writer() as writer:
        writer.write_many(payloads)

    def layout(path: Path) -> list[tuple[str, int]]:
        return [(p.name, p.stat().st_size) for p in sorted(path.iterdir()) if len(p.name) == 8]

    assert layout(one) == layout(many)
    # Records are 26, 66, 86, 21, 21, 216, 17 and 106 bytes long.
    assert layout(one) == [("00000000", 178), ("00000001", 258), ("00000002", 123), ("00000003", 0)]


def test_record_larger_than_unit_limit_is_written_whole(tmp_path: Path) -> None:
    """A record bigger than the unit limit is never split and the segment rolls right after it."""
    path = tmp_path / "j"
    jlog = Jlog.create(path, unit_limit=64)
    with jlog.writer() as writer:
        writer.write(b"B" * 500)
        writer.write(b"small")
    assert (path / "00000000").stat().st_size == 516
    assert (path / "00000001").stat().st_size == 21


def test_checkpoint_files_are_hex_named_u32_pairs(tmp_path: Path) -> None:
    """cp.<hex of name> holds (log, marker) of the last consumed message as two u32."""
    path = tmp_path / "j"
    jlog = Jlog.create(path)
    with jlog.writer() as writer:
        writer.write_many([b"1", b"2", b"3"])
    jlog.add_subscriber("master")
    assert (path / "cp.6d6173746572").read_bytes() == struct.pack("<II", 0, 0)
    jlog.add_subscriber("late", Whence.END)
    assert (path / "cp.6c617465").read_bytes() == struct.pack("<II", 0, 3)
    with jlog.reader("master") as reader:
        batch = reader.read_batch(2)
        reader.checkpoint(batch[-1].id)
    assert (path / "cp.6d6173746572").read_bytes() == struct.pack("<II", 0, 2)
    assert stat.S_IMODE(os.stat(path / "cp.6d6173746572").st_mode) == 0o640


def test_message_id_prints_like_libjlog() -> None:
    """Message ids print as %08x:%08x and parse back."""
    assert str(MessageId(0x1A, 2)) == "0000001a:00000002"
    assert MessageId.parse("0000001a:00000002") == MessageId(26, 2)
    with pytest.raises(JlogInvalidArgument):
        MessageId.parse("nonsense")


def test_creating_over_an_existing_path_is_refused(tmp_path: Path) -> None:
    """create() on an existing directory raises JlogExists and leaves it untouched."""
    path = tmp_path / "j"
    Jlog.create(path)
    before = (path / "metastore").read_bytes()
    with pytest.raises(JlogExists):
        Jlog.create(path, unit_limit=10)
    assert (path / "metastore").read_bytes() == before
    (tmp_path / "plain").mkdir()
    with pytest.raises(JlogExists):
        Jlog.create(tmp_path / "plain")


def test_opening_a_non_jlog_directory_is_refused(tmp_path: Path) -> None:
    """open() refuses a missing path, a file, and a directory without a metastore."""
    with pytest.raises(JlogInvalidArgument, match="not a directory"):
        Jlog.open(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(JlogInvalidArgument):
        Jlog.open(tmp_path / "file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(JlogInvalidArgument, match="no metastore"):
        Jlog.open(tmp_path / "empty")


def test_bad_unit_limit_is_refused(tmp_path: Path) -> None:
    """create() refuses a zero or oversized unit limit before touching the disk."""
    with pytest.raises(JlogInvalidArgument):
        Jlog.create(tmp_path / "j", unit_limit=0)
    assert not (tmp_path / "j").exists()
