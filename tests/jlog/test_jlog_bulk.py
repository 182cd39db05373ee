"""read_many: bulk reads give what read_batch gives, with the same cursor and checkpoints."""

from __future__ import annotations

import base64
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.errors import JlogCorrupt, MhafailError
from mhafail.jlog import Jlog, JlogReader, JlogTail, Message, MessageBlock, Whence


def _fill(path: Path, *, compress: bool = False, count: int = 700) -> Jlog:
    jlog = Jlog.create(path, unit_limit=4096, compress=compress)
    jlog.add_subscriber("a")
    jlog.add_subscriber("b")
    with jlog.writer() as writer:
        for i in range(count):
            writer.write(b"m%d" % i * (i % 7))  # empty payloads too
    return jlog


def _drain(reader: JlogReader, size: int) -> list[MessageBlock]:
    blocks = []
    while block := reader.read_many(size):
        blocks.append(block)
        reader.checkpoint(block.last)
    return blocks


@pytest.mark.parametrize("compress", [False, True])
def test_read_many_matches_read_batch_across_segments(tmp_path: Path, compress: bool) -> None:
    """Blocks hold exactly read_batch's messages (ids, times, payloads), one segment each."""
    jlog = _fill(tmp_path / "j", compress=compress)
    assert len(jlog.segments()) > 3
    with jlog.reader("a") as reader:
        expected: list[Message] = []
        while batch := reader.read_batch(100):
            expected += batch
            reader.checkpoint(batch[-1].id)
    with jlog.reader("b") as reader:
        blocks = _drain(reader, 100)
        assert not reader.read_many()  # caught up: an empty, false block
    got = [m for block in blocks for m in block.messages()]
    assert got == expected
    assert [p for block in blocks for p in block] == [m.payload for m in expected]
    for block in blocks:
        assert len({mid.log for mid in block.ids()}) == 1
        assert block.ids()[-1] == block.last
    assert {s.name: s.pending for s in jlog.subscribers()}["b"] == 0


def test_read_many_and_read_batch_share_one_cursor(tmp_path: Path) -> None:
    """read_many continues where read_batch stopped; rewind goes back to the checkpoint."""
    jlog = _fill(tmp_path / "j", count=50)
    with jlog.reader("a") as reader:
        first = reader.read_batch(10)
        block = reader.read_many(5)
        assert block.first == first[-1].id._replace(marker=first[-1].id.marker + 1)
        assert reader.read_batch(1)[0].id == block.last._replace(marker=block.last.marker + 1)
        reader.checkpoint(block.last)
        reader.rewind()
        assert reader.read_many(1).first == block.last._replace(marker=block.last.marker + 1)


def test_every_subscriber_of_the_c_fixtures_reads_its_manifest_in_blocks(
    c_jlog: Callable[[str], Path], manifest: dict[str, Any]
) -> None:
    """C-written jlogs (indexes built by libjlog) read in blocks exactly as their manifest says."""
    for name in ("c-basic", "c-end-subscriber", "c-lz4", "c-multiseg"):
        jlog = Jlog.open(c_jlog(name))
        for subscriber, expected in manifest[name]["subscribers"].items():
            with jlog.reader(subscriber) as reader:
                got = [p for block in _drain(reader, 7) for p in block]
            assert got == [base64.b64decode(x) for x in expected], (name, subscriber)


def test_a_header_that_disagrees_with_another_readers_index_is_corruption(
    tmp_path: Path,
) -> None:
    """Records indexed by another reader are checked: a damaged length raises JlogCorrupt."""
    jlog = _fill(tmp_path / "j", count=20)
    with jlog.reader("a") as reader:
        assert len(reader.read_batch()) == 20  # this reader writes the index
    segment = tmp_path / "j" / "00000000"
    data = bytearray(segment.read_bytes())
    data[16 + 12] ^= 0x01  # the second record's length field (the first payload is empty)
    segment.write_bytes(bytes(data))
    with jlog.reader("b") as reader, pytest.raises(JlogCorrupt, match="does not match its index"):
        reader.read_many()


def test_a_segment_cut_under_a_walked_index_is_corruption(tmp_path: Path) -> None:
    """A segment truncated after this reader indexed it raises JlogCorrupt, not short data."""
    jlog = _fill(tmp_path / "j", count=20)
    with jlog.reader("b") as reader:
        assert len(reader.read_many(5)) == 5  # indexes the whole segment, keeps its bytes
        segment = tmp_path / "j" / "00000000"
        size = segment.stat().st_size
        with segment.open("r+b") as f:
            f.truncate(size - 3)
        reader._cursor.view(0)._buf = b""  # type: ignore[union-attr]  # force a re-read
        with pytest.raises(JlogCorrupt, match="shorter than its index"):
            reader.read_many()


def test_an_empty_block_says_where_the_reader_is(tmp_path: Path) -> None:
    """An empty jlog gives an empty block whose last is the reader's position."""
    jlog = Jlog.create(tmp_path / "j")
    jlog.add_subscriber("a")
    with jlog.reader("a") as reader:
        block = reader.read_many()
        assert (len(block), bool(block), block.payloads, block.ids()) == (0, False, [], [])
        assert block.last == reader.checkpoint_position()
        assert "count=0" in repr(block)


def test_a_tail_reads_blocks_too(tmp_path: Path) -> None:
    """JlogTail.read_many follows the log from the start in blocks, holding nothing back."""
    jlog = _fill(tmp_path / "j", count=300)
    with jlog.reader("a") as reader:
        expected = [m.payload for m in reader]
    with JlogTail(tmp_path / "j", start=Whence.BEGIN) as tail:
        got = []
        while block := tail.read_many(64):
            got += block.payloads
            assert tail.position == block.last
    assert got == expected


def _drain_outcome(path: Path, bulk: bool) -> tuple[list[bytes], str | None]:
    """What subscriber s reads from a copy of ``path``, and the error class that stopped it."""
    got: list[bytes] = []
    try:
        with Jlog.open(path).reader("s") as reader:
            while True:
                if bulk:
                    block = reader.read_many()
                    if not block:
                        break
                    got += block.payloads
                    reader.checkpoint(block.last)
                else:
                    batch = reader.read_batch()
                    if not batch:
                        break
                    got += [m.payload for m in batch]
                    reader.checkpoint(batch[-1].id)
    except MhafailError as exc:
        return got, type(exc).__name__
    return got, None


_FUZZ_BASES: dict[bool, Path] = {}


@pytest.fixture(scope="module")
def fuzz_bases(tmp_path_factory: pytest.TempPathFactory) -> dict[bool, Path]:
    """Plain and LZ4 jlogs of three segments whose indexes another reader built."""
    for compress in (False, True):
        root = tmp_path_factory.mktemp("lz4" if compress else "plain") / "j"
        jlog = Jlog.create(root, unit_limit=200, compress=compress)
        jlog.add_subscriber("s")
        jlog.add_subscriber("t")
        with jlog.writer() as writer:
            writer.write_many([b"record %03d " % i + b"x" * (i % 17) for i in range(20)])
        with jlog.reader("t") as reader:
            while reader.read_batch():
                pass
        _FUZZ_BASES[compress] = root
    return _FUZZ_BASES


@settings(
    max_examples=100,
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    compress=st.booleans(),
    target=st.sampled_from(["00000000", "00000000.idx", "00000001", "00000001.idx"]),
    where=st.integers(0, 1 << 12),
    flip=st.integers(1, 255),
)
def test_damaged_segments_read_the_same_in_blocks_as_in_batches(
    fuzz_bases: dict[bool, Path], compress: bool, target: str, where: int, flip: int
) -> None:
    """With one damaged byte, read_many returns what read_batch returns or raises the same error."""
    with tempfile.TemporaryDirectory() as tmp:
        outcomes = []
        for bulk in (False, True):
            path = Path(tmp) / f"j{bulk}"
            shutil.copytree(fuzz_bases[compress], path)
            file = path / target
            raw = bytearray(file.read_bytes())
            raw[where % len(raw)] ^= flip
            file.write_bytes(bytes(raw))
            outcomes.append(_drain_outcome(path, bulk))
        assert outcomes[0] == outcomes[1]


def test_a_damaged_index_entry_mid_span_is_corruption_for_both_readers(
    fuzz_bases: dict[bool, Path], tmp_path: Path
) -> None:
    """An index entry off by one byte inside a batch: read_batch refuses it as read_many does.

    read_batch walked the records from the span's first entry and never
    looked at the entries inside it, so it returned every record where
    read_many (which uses each entry) raised JlogCorrupt (found by the
    fuzz test above).
    """
    outcomes = []
    for bulk in (False, True):
        path = tmp_path / f"j{bulk}"
        shutil.copytree(fuzz_bases[False], path)
        index = path / "00000000.idx"
        raw = bytearray(index.read_bytes())
        raw[8] ^= 1  # the second record's offset, 27 -> 26
        index.write_bytes(bytes(raw))
        outcomes.append(_drain_outcome(path, bulk))
    assert outcomes[0] == outcomes[1] == ([], "JlogCorrupt")
