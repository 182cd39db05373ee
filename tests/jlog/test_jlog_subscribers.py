"""Subscribers: add, remove, list, set/rewind, and the retention they drive."""

from __future__ import annotations

from pathlib import Path

import pytest

from mhafail.errors import JlogInvalidArgument, JlogSubscriberExists, JlogUnknownSubscriber
from mhafail.jlog import Jlog, MessageId, Whence


def _jlog_with_segments(tmp_path: Path, segments: int = 3) -> Jlog:
    """A jlog with unit_limit 100 and `segments` full segments of 3 records (46 bytes) each."""
    jlog = Jlog.create(tmp_path / "j", unit_limit=100)
    with jlog.writer() as writer:
        for i in range(segments * 3):
            writer.write(b"%029d." % i)
    return jlog


def _segments(jlog: Jlog) -> list[str]:
    return sorted(p.name for p in jlog.path.iterdir() if len(p.name) == 8)


def test_adding_an_existing_subscriber_is_an_error(tmp_path: Path) -> None:
    """add_subscriber refuses a name that exists and leaves its checkpoint alone."""
    jlog = _jlog_with_segments(tmp_path, 1)
    jlog.add_subscriber("s")
    jlog.set_checkpoint("s", MessageId(0, 2))
    with pytest.raises(JlogSubscriberExists):
        jlog.add_subscriber("s", Whence.END)
    assert jlog.checkpoint("s") == MessageId(0, 2)


@pytest.mark.parametrize("name", ["", "x" * 127, "a\0b"])
def test_bad_subscriber_names_are_refused(tmp_path: Path, name: str) -> None:
    """Empty names, names over 126 bytes and names with NUL are refused before any file is made."""
    jlog = Jlog.create(tmp_path / "j")
    with pytest.raises(JlogInvalidArgument):
        jlog.add_subscriber(name)
    assert not list(jlog.path.glob("cp.*"))


def test_longest_allowed_name_works(tmp_path: Path) -> None:
    """A 126-byte name (a 255-byte checkpoint file name) is accepted."""
    jlog = Jlog.create(tmp_path / "j")
    jlog.add_subscriber("n" * 126)
    assert [s.name for s in jlog.subscribers()] == ["n" * 126]


def test_begin_and_end_positions(tmp_path: Path) -> None:
    """BEGIN starts before the oldest stored message, END after the newest."""
    jlog = _jlog_with_segments(tmp_path, 2)
    assert jlog.add_subscriber("b") == MessageId(0, 0)
    assert jlog.add_subscriber("e", Whence.END) == MessageId(2, 0)
    infos = {s.name: (s.position, s.pending) for s in jlog.subscribers()}
    assert infos == {"b": (MessageId(0, 0), 6), "e": (MessageId(2, 0), 0)}


def test_removing_the_slowest_subscriber_frees_its_segments(tmp_path: Path) -> None:
    """libjlog's trap fixed: removing the slowest subscriber deletes the segments only it held."""
    jlog = _jlog_with_segments(tmp_path, 3)
    jlog.add_subscriber("slow")
    jlog.add_subscriber("fast")
    with jlog.reader("fast") as reader:
        batch = list(reader)
        reader.checkpoint(batch[-1].id)
        reader.read_interval()
    assert _segments(jlog) == ["00000000", "00000001", "00000002", "00000003"]
    freed = jlog.remove_subscriber("slow")
    assert freed == [0, 1, 2]
    assert _segments(jlog) == ["00000003"]


def test_clean_without_subscribers_deletes_nothing(tmp_path: Path) -> None:
    """libjlog's trap fixed: with no subscribers, clean keeps all (unread) data."""
    jlog = _jlog_with_segments(tmp_path, 3)
    assert jlog.clean() == []
    assert len(_segments(jlog)) == 4
    jlog.add_subscriber("s")
    jlog.remove_subscriber("s")
    assert len(_segments(jlog)) == 4


def test_segment_being_written_is_never_deleted(tmp_path: Path) -> None:
    """Even when every subscriber is past everything, the storage_log segment stays."""
    jlog = _jlog_with_segments(tmp_path, 2)
    jlog.add_subscriber("s")
    jlog.set_checkpoint("s", MessageId(2, 0))
    assert _segments(jlog) == ["00000002"]
    assert jlog.clean() == []


def test_remove_unknown_subscriber_is_an_error(tmp_path: Path) -> None:
    """Removing or reading a subscriber that does not exist raises JlogUnknownSubscriber."""
    jlog = Jlog.create(tmp_path / "j")
    with pytest.raises(JlogUnknownSubscriber):
        jlog.remove_subscriber("ghost")
    with pytest.raises(JlogUnknownSubscriber):
        jlog.reader("ghost")
    with pytest.raises(JlogUnknownSubscriber):
        jlog.set_checkpoint("ghost", MessageId(0, 0))


def test_rewind_works_while_the_data_exists(tmp_path: Path) -> None:
    """A checkpoint can be moved back to stored data and the messages are read again."""
    jlog = _jlog_with_segments(tmp_path, 1)
    jlog.add_subscriber("s")
    jlog.add_subscriber("keeper")
    jlog.set_checkpoint("s", MessageId(0, 3))
    jlog.set_checkpoint("s", MessageId(0, 1))
    with jlog.reader("s") as reader:
        assert [m.id.marker for m in reader] == [2, 3]


def test_rewind_to_deleted_data_is_refused(tmp_path: Path) -> None:
    """Rewinding to a segment retention already deleted raises and changes nothing."""
    jlog = _jlog_with_segments(tmp_path, 2)
    jlog.add_subscriber("s")
    jlog.set_checkpoint("s", MessageId(1, 3))
    assert "00000000" not in _segments(jlog)
    with pytest.raises(JlogInvalidArgument, match="no longer exists"):
        jlog.set_checkpoint("s", MessageId(0, 1))
    assert jlog.checkpoint("s") == MessageId(1, 3)


def test_checkpoint_past_the_data_is_refused(tmp_path: Path) -> None:
    """Setting a checkpoint past the stored messages raises instead of skipping future data."""
    jlog = _jlog_with_segments(tmp_path, 1)
    jlog.add_subscriber("s")
    with pytest.raises(JlogInvalidArgument, match="only 3 messages"):
        jlog.set_checkpoint("s", MessageId(0, 4))
    with pytest.raises(JlogInvalidArgument, match="past the segment being written"):
        jlog.set_checkpoint("s", MessageId(5, 0))
    assert jlog.checkpoint("s") == MessageId(0, 0)


def test_pending_counts_span_segments(tmp_path: Path) -> None:
    """list reports every unread message across segments for each subscriber."""
    jlog = _jlog_with_segments(tmp_path, 3)
    jlog.add_subscriber("a")
    jlog.add_subscriber("b")
    jlog.set_checkpoint("b", MessageId(1, 1))
    pending = {s.name: s.pending for s in jlog.subscribers()}
    assert pending == {"a": 9, "b": 5}
