"""Reading: intervals, batches with explicit checkpoints (at-least-once), the ghost tail."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from mhafail.errors import JlogClosed, JlogInvalidArgument
from mhafail.jlog import Jlog, MessageId, Whence


def _jlog(tmp_path: Path, count: int, unit_limit: int = 100) -> Jlog:
    jlog = Jlog.create(tmp_path / "j", unit_limit=unit_limit)
    jlog.add_subscriber("s")
    with jlog.writer() as writer:
        writer.write_many([b"m%03d" % i for i in range(count)])
    return jlog


def test_unacknowledged_messages_are_delivered_again(tmp_path: Path) -> None:
    """A reader that stops before checkpointing gets the same messages from a new reader."""
    jlog = _jlog(tmp_path, 10, unit_limit=10_000)
    with jlog.reader("s") as reader:
        first = reader.read_batch(4)
        reader.checkpoint(first[1].id)
        reader.read_batch(4)
    with jlog.reader("s") as reader:
        assert [m.payload for m in reader] == [b"m%03d" % i for i in range(2, 10)]


def test_batches_stay_inside_one_segment(tmp_path: Path) -> None:
    """A batch never spans two segments, and the iterator crosses them in order."""
    jlog = _jlog(tmp_path, 40)
    with jlog.reader("s") as reader:
        batch = reader.read_batch(1000)
        assert len({m.id.log for m in batch}) == 1
        reader.rewind()
        assert [m.payload for m in reader] == [b"m%03d" % i for i in range(40)]


def test_read_interval_semantics(tmp_path: Path) -> None:
    """read_interval reports the checkpoint's segment only, from the checkpoint on."""
    jlog = _jlog(tmp_path, 20)
    with jlog.reader("s") as reader:
        interval = reader.read_interval()
        assert interval.start == MessageId(0, 1)
        per_segment = interval.count
        assert interval.finish == MessageId(0, per_segment)
        reader.checkpoint(MessageId(0, 2))
        interval = reader.read_interval()
        assert (interval.start, interval.count) == (MessageId(0, 3), per_segment - 2)
        reader.checkpoint(interval.finish)
        interval = reader.read_interval()
        assert interval.start == MessageId(1, 1)
        assert jlog.checkpoint("s") == MessageId(1, 0)
        assert reader.read_message(MessageId(1, 1)).payload == b"m%03d" % per_segment


def test_read_messages_outside_the_segment_is_refused(tmp_path: Path) -> None:
    """Asking for messages a segment does not hold raises instead of returning junk."""
    jlog = _jlog(tmp_path, 3, unit_limit=10_000)
    with jlog.reader("s") as reader:
        with pytest.raises(JlogInvalidArgument):
            reader.read_messages(MessageId(0, 3), 2)
        with pytest.raises(JlogInvalidArgument):
            reader.read_message(MessageId(0, 0))


def test_reader_sees_messages_written_after_it_opened(tmp_path: Path) -> None:
    """A reader polling a growing segment picks up new records incrementally."""
    jlog = _jlog(tmp_path, 2, unit_limit=10_000)
    with jlog.reader("s") as reader, jlog.writer() as writer:
        assert len(reader.read_batch()) == 2
        assert reader.read_batch() == []
        writer.write(b"late")
        assert [m.payload for m in reader.read_batch()] == [b"late"]


def test_tail_holds_no_data_back(tmp_path: Path) -> None:
    """A ghost tail reads new messages but never keeps a segment from being deleted."""
    jlog = _jlog(tmp_path, 0)
    with jlog.tail(start=Whence.BEGIN) as tail, jlog.writer() as writer:
        writer.write_many([b"a" * 40] * 6)
        assert len(list(tail)) == 6
        assert not list(jlog.path.glob("cp.7e*"))
        with jlog.reader("s") as reader:
            batch = list(reader)
            reader.checkpoint(batch[-1].id)
            reader.read_interval()
        writer.write(b"after")
        assert [m.payload for m in tail] == [b"after"]
    assert "00000000" not in {p.name for p in jlog.path.iterdir()}


def test_tail_from_end_with_back(tmp_path: Path) -> None:
    """A tail at END sees only new messages, plus the last N with back=N."""
    jlog = _jlog(tmp_path, 5, unit_limit=10_000)
    with jlog.tail() as tail:
        assert list(tail) == []
    with jlog.tail(back=2) as tail:
        assert [m.payload for m in tail] == [b"m003", b"m004"]


def test_tail_survives_its_segment_being_deleted(tmp_path: Path) -> None:
    """When retention deletes the tail's segment, the tail moves on to the oldest one left."""
    jlog = _jlog(tmp_path, 9)
    with jlog.tail(start=Whence.BEGIN) as tail:
        jlog.set_checkpoint("s", MessageId(1, 0))
        assert not (jlog.path / "00000000").exists()
        rest = list(tail)
    assert [m.payload for m in rest] == [b"m%03d" % i for i in range(5, 9)]


def test_closed_reader_refuses_use(tmp_path: Path) -> None:
    """Using a reader after close() raises JlogClosed."""
    jlog = _jlog(tmp_path, 1)
    reader = jlog.reader("s")
    reader.close()
    reader.close()
    with pytest.raises(JlogClosed):
        reader.read_batch()


def test_threads_share_a_writer_and_every_record_arrives(tmp_path: Path) -> None:
    """Four threads writing through one writer lose nothing and keep each thread's order."""
    jlog = Jlog.create(tmp_path / "j", unit_limit=2000)
    jlog.add_subscriber("s")
    with jlog.writer() as writer:

        def work(tid: int) -> None:
            for i in range(300):
                writer.write(b"%d:%d" % (tid, i))

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seen: dict[int, list[int]] = {t: [] for t in range(4)}
    with jlog.reader("s") as reader:
        for m in reader:
            tid, i = m.payload.split(b":")
            seen[int(tid)].append(int(i))
    assert all(v == list(range(300)) for v in seen.values())


def test_follow_stops_when_asked(tmp_path: Path) -> None:
    """follow() yields new messages and returns once its stop event is set."""
    jlog = _jlog(tmp_path, 3, unit_limit=10_000)
    stop = threading.Event()
    got = []
    with jlog.reader("s") as reader:
        for m in reader.follow(poll_interval=0.01, stop=stop):
            got.append(m.payload)
            if len(got) == 3:
                stop.set()
    assert got == [b"m000", b"m001", b"m002"]
