"""ASLogger and the snapshot store: files per interval, selection, roll-ups, retention."""

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.audit import ASLogger, AuditSeries, ManualClock, SnapshotStore, read_snapshot
from mhafail.errors import AuditInvalidArgument, SnapshotCorrupt

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z
V4 = 3323068416  # 198.18.0.0


def _series(clock: ManualClock, name: str = "conn", **kw: object) -> AuditSeries:
    return AuditSeries(name, clock=clock, track_intervals=True, **kw)  # type: ignore[arg-type]


def test_each_interval_writes_one_file_per_selected_series_and_resets(tmp_path: Path) -> None:
    """Every run writes <series>.<YYYYMMDDTHHMMSS> holding just that interval's counts."""
    clock = ManualClock(T0)
    conn, rcpt = _series(clock), _series(clock, "rcpt")
    logger = ASLogger(
        store=SnapshotStore(root=tmp_path), series=[conn, rcpt], include=["^conn$"], clock=clock
    )
    conn.add("198.18.0.1", 3)
    rcpt.add("198.18.0.1")
    clock.advance(60)
    first = logger.run_once()
    conn.add("198.18.0.2")
    clock.advance(60)
    second = logger.run_once()
    assert [Path(p).name for p in first.written + second.written] == [
        "conn.20240601T000000",
        "conn.20240601T000100",
    ]
    snap = read_snapshot(tmp_path / "conn.20240601T000000")
    assert snap.items() == {V4 + 1: 3}
    assert (snap.header.start, snap.header.end, snap.header.resolution) == (
        int(T0),
        int(T0) + 60,
        "raw",
    )
    assert read_snapshot(tmp_path / "conn.20240601T000100").items() == {V4 + 2: 1}
    assert not list(tmp_path.glob("rcpt.*"))


def test_selection_defaults_to_nothing_and_honours_exclude(tmp_path: Path) -> None:
    """No include pattern logs nothing; exclude wins over include."""
    clock = ManualClock(T0)
    every = [_series(clock, n) for n in ("conn", "conn_v6", "rcpt")]
    store = SnapshotStore(root=tmp_path)
    assert ASLogger(store=store, series=every, clock=clock).selected() == []
    logger = ASLogger(
        store=store, series=every, include=["conn", "rc"], exclude=["v6$"], clock=clock
    )
    assert [s.name for s in logger.selected()] == ["conn", "rcpt"]


def test_bad_logger_configuration_is_refused(tmp_path: Path) -> None:
    """Bad patterns, intervals and untracked series are refused when the logger is built."""
    clock = ManualClock(T0)
    store = SnapshotStore(root=tmp_path)
    with pytest.raises(AuditInvalidArgument, match="bad series pattern"):
        ASLogger(store=store, series=[], include=["("], clock=clock)
    with pytest.raises(AuditInvalidArgument, match="log_interval"):
        ASLogger(store=store, series=[], log_interval=0, clock=clock)
    with pytest.raises(AuditInvalidArgument, match="track_intervals"):
        ASLogger(store=store, series=[AuditSeries("conn", clock=clock)], include=["."], clock=clock)


def _fill(tmp: Path, minutes: list[tuple[int, list[int]]]) -> tuple[SnapshotStore, ManualClock]:
    """Log one minute interval per entry (minute offset, keys) and return the store."""
    clock = ManualClock(T0)
    series = _series(clock)
    store = SnapshotStore(root=tmp)
    for minute, keys in minutes:
        clock.set(T0 + 60 * minute)
        series.take_interval()  # start the interval at this minute
        series.add_many(V4 + k for k in keys)
        clock.advance(60)
        store.write_interval(series.take_interval())
    return store, clock


@settings(max_examples=25, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3 * 24 * 60), st.lists(st.integers(0, 2**12), max_size=8)),
        unique_by=lambda m: m[0],
        max_size=30,
    )
)
def test_rollups_sum_to_the_raw_files(minutes: list[tuple[int, list[int]]]) -> None:
    """Hourly and daily roll-ups hold exactly the sum of the raw files they cover."""
    with tempfile.TemporaryDirectory() as tmp:
        store, clock = _fill(Path(tmp), minutes)
        clock.set(T0 + 5 * 86400)
        store.maintain(clock.time())
        raw = {ref.start: store.read(ref).items() for ref in store.refs("raw")}
        for resolution, span in (("hour", 3600), ("day", 86400)):
            for ref in store.refs(resolution):
                expected: dict[int, int] = {}
                for start, counts in raw.items():
                    if ref.start <= start < ref.start + span:
                        for k, n in counts.items():
                            expected[k] = expected.get(k, 0) + n
                assert store.read(ref).items() == expected
        covered_days = {ref.start for ref in store.refs("day")}
        assert covered_days == {s - s % 86400 for s in raw}
        assert store.maintain(clock.time()).hourly == ()  # idempotent


def test_rollups_wait_for_the_period_and_grace_to_end(tmp_path: Path) -> None:
    """An hour is rolled up only after it ended plus the grace period."""
    store, clock = _fill(tmp_path, [(0, [1]), (59, [2])])
    clock.set(T0 + 3600 + 119)
    assert store.maintain(clock.time(), grace_seconds=120).hourly == ()
    clock.set(T0 + 3600 + 120)
    assert len(store.maintain(clock.time(), grace_seconds=120).hourly) == 1


def test_late_raw_file_is_added_to_existing_rollups(tmp_path: Path) -> None:
    """A raw snapshot written after its hour was rolled up lands in the roll-ups too."""
    store, clock = _fill(tmp_path, [(0, [1])])
    store.maintain(T0 + 2 * 86400)
    clock.set(T0 + 600)
    late = _series(clock)
    late.add(V4 + 9, 2)
    clock.advance(60)
    store.write_interval(late.take_interval())
    (hour,) = store.refs("hour")
    (day,) = store.refs("day")
    assert store.read(hour).items() == store.read(day).items() == {V4 + 1: 1, V4 + 9: 2}


def test_retention_deletes_old_files_only(tmp_path: Path) -> None:
    """Files older than the retention period are deleted; newer ones stay."""
    _fill(tmp_path, [(0, [1]), (2 * 24 * 60, [2])])
    store = SnapshotStore(root=tmp_path, retention_seconds=86400 + 3600)
    report = store.maintain(T0 + 3 * 86400 + 3600)
    assert {p.name for p in report.expired} == {"conn.20240601T000000"}
    assert [ref.start for ref in store.refs("raw")] == [int(T0) + 2 * 86400]
    assert len(store.refs("day")) == 1


def test_a_file_whose_header_disagrees_with_its_name_is_refused(tmp_path: Path) -> None:
    """A snapshot renamed by hand is detected rather than counted at the wrong time."""
    store, _ = _fill(tmp_path, [(0, [1])])
    (tmp_path / "conn.20240601T000000").rename(tmp_path / "conn.20240601T000500")
    (ref,) = store.refs("raw")
    with pytest.raises(SnapshotCorrupt, match="header names"):
        store.read(ref)


def test_logger_thread_writes_on_its_own(tmp_path: Path) -> None:
    """start() snapshots on a background thread until stop()."""
    import time

    series = AuditSeries("conn", track_intervals=True)
    logger = ASLogger(
        store=SnapshotStore(root=tmp_path), series=[series], include=["conn"], log_interval=0.05
    )
    series.add("198.18.0.1")
    logger.start()
    try:
        deadline = time.monotonic() + 10
        while not list(tmp_path.glob("conn.*")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logger.stop()
    total = sum(read_snapshot(p).header.total for p in tmp_path.glob("conn.*"))
    assert total == 1
