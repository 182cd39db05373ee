"""The jlogs written by the C libjlog 2.6.0 read exactly as their manifest says."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mhafail.jlog import Jlog, MessageId, Whence


def _decode(items: list[str]) -> list[bytes]:
    return [base64.b64decode(x) for x in items]


def _read_all(jlog: Jlog, subscriber: str) -> list[bytes]:
    with jlog.reader(subscriber) as reader:
        return [m.payload for m in reader]


@pytest.mark.parametrize("name", ["c-basic", "c-end-subscriber", "c-lz4", "c-multiseg"])
def test_every_subscriber_reads_its_manifest(
    name: str, c_jlog: Callable[[str], Path], manifest: dict[str, Any]
) -> None:
    """Each subscriber of a C-written jlog reads exactly the manifest's payloads, in order."""
    jlog = Jlog.open(c_jlog(name))
    for subscriber, expected in manifest[name]["subscribers"].items():
        assert _read_all(jlog, subscriber) == _decode(expected), subscriber


def test_lz4_fixture_is_detected_as_compressed(c_jlog: Callable[[str], Path]) -> None:
    """The c-lz4 jlog's metastore announces LZ4 records, including an empty payload."""
    jlog = Jlog.open(c_jlog("c-lz4"))
    assert jlog.meta.compressed
    payloads = _read_all(jlog, "s")
    assert b"" in payloads


def test_multiseg_unit_limit_and_pending_counts(
    c_jlog: Callable[[str], Path], manifest: dict[str, Any]
) -> None:
    """The multi-segment fixture shows its unit limit and each subscriber's backlog."""
    jlog = Jlog.open(c_jlog("c-multiseg"))
    assert jlog.meta.unit_limit == manifest["c-multiseg"]["unit_limit"]
    assert jlog.meta.storage_log == 3
    pending = {s.name: s.pending for s in jlog.subscribers()}
    assert pending == {n: len(v) for n, v in manifest["c-multiseg"]["subscribers"].items()}


def test_multiseg_read_interval_never_crosses_a_segment(c_jlog: Callable[[str], Path]) -> None:
    """read_interval returns one segment at a time and moves a finished checkpoint on."""
    jlog = Jlog.open(c_jlog("c-multiseg"))
    with jlog.reader("beta") as reader:
        seen_logs = []
        while True:
            interval = reader.read_interval()
            if interval.count == 0:
                break
            assert interval.start.log == interval.finish.log
            messages = reader.read_messages(interval.start, interval.count)
            assert [m.id for m in messages][-1] == interval.finish
            seen_logs.append(interval.start.log)
            reader.checkpoint(interval.finish)
    assert seen_logs == [0, 1, 2, 3]


def test_multiseg_retention_deletes_segments_once_all_subscribers_pass(
    c_jlog: Callable[[str], Path],
) -> None:
    """Segment 0 is deleted only when beta, the last subscriber needing it, moves past it."""
    path = c_jlog("c-multiseg")
    jlog = Jlog.open(path)
    with jlog.reader("alpha") as reader:
        batch = list(reader)
        reader.checkpoint(batch[-1].id)
    assert (path / "00000000").exists()
    with jlog.reader("beta") as reader:
        batch = list(reader)
        reader.checkpoint(batch[-1].id)
        reader.read_interval()
    assert not (path / "00000000").exists()
    assert not (path / "00000001").exists()
    assert (path / "00000003").exists()


def test_end_subscriber_added_by_mhafail_sees_only_new_messages(
    c_jlog: Callable[[str], Path],
) -> None:
    """A subscriber mhafail adds at END on a C jlog reads only what is written after it."""
    jlog = Jlog.open(c_jlog("c-end-subscriber"))
    start = jlog.add_subscriber("newcomer", Whence.END)
    assert start == MessageId(0, 6)
    with jlog.writer() as writer:
        writer.write(b"after-3")
    assert _read_all(jlog, "newcomer") == [b"after-3"]


def test_precommit_crash_is_flushed_by_the_next_writer(
    c_jlog: Callable[[str], Path], manifest: dict[str, Any]
) -> None:
    """Readers see 2 records until a writer opens and appends the 3 pending ones in order."""
    path = c_jlog("c-precommit-crash")
    spec = manifest["c-precommit-crash"]
    jlog = Jlog.open(path)
    with jlog.reader("s") as reader:
        assert [m.payload for m in reader] == _decode(spec["visible_before_flush"])
    with jlog.writer() as writer:
        assert writer.pre_commit_records == 3
    assert (path / "pre_commit").read_bytes()[:4] == bytes(4)
    assert _read_all(jlog, "s") == _decode(spec["after_writer_open_close"])
    with jlog.writer() as writer:
        assert writer.pre_commit_records == 0
    assert _read_all(jlog, "s") == _decode(spec["after_writer_open_close"])


@pytest.mark.parametrize(
    "name", ["c-basic", "c-end-subscriber", "c-lz4", "c-multiseg", "c-precommit-crash"]
)
def test_inspect_finds_c_fixtures_healthy(name: str, c_jlog: Callable[[str], Path]) -> None:
    """inspect() reports nothing wrong with healthy C jlogs (only the pending pre_commit)."""
    report = Jlog.open(c_jlog(name)).inspect()
    kinds = {p.kind.value for p in report.problems}
    assert kinds == ({"pre_commit_pending"} if name == "c-precommit-crash" else set())


def test_reader_index_matches_the_c_index(c_jlog: Callable[[str], Path], tmp_path: Path) -> None:
    """The .idx mhafail builds is byte-identical to the one libjlog built for the same data."""
    path = c_jlog("c-multiseg")
    c_index = (path / "00000000.idx").read_bytes()
    (path / "00000000.idx").unlink()
    jlog = Jlog.open(path)
    with jlog.reader("beta") as reader:
        reader.read_batch(1)
    assert (path / "00000000.idx").read_bytes() == c_index


def test_repair_flushes_a_crashed_writers_pre_commit(
    c_jlog: Callable[[str], Path], manifest: dict[str, Any]
) -> None:
    """repair() reports the pending pre_commit and flushes its 3 records through a writer."""
    jlog = Jlog.open(c_jlog("c-precommit-crash"))
    report = jlog.repair()
    assert [p.kind.value for p in report.found] == ["pre_commit_pending"]
    assert (report.pre_commit_records, report.remaining) == (3, [])
    assert _read_all(jlog, "s") == _decode(manifest["c-precommit-crash"]["after_writer_open_close"])
