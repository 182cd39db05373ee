"""Regressions from the outside check of the audit series (issue 13, audit items)."""

from pathlib import Path

import pytest

from mhafail.audit import (
    ASLogger,
    AuditSeries,
    IncrementBatch,
    KeyFamily,
    ManualClock,
    Origin,
    SnapshotStore,
    read_snapshot,
)
from mhafail.errors import AuditInvalidArgument

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z
V4 = 3323068416  # 198.18.0.0


@pytest.mark.parametrize("n", [1.0, True, 2.5, 0, -1, 1 << 32, 1 << 64, "3", None])
def test_add_refuses_increments_that_are_not_bounded_ints(n: object) -> None:
    """add() refuses floats, bools and out-of-range n, and counts nothing."""
    series = AuditSeries("conn", clock=ManualClock(T0))
    with pytest.raises(AuditInvalidArgument, match="n must be an integer"):
        series.add("198.18.0.1", n)  # type: ignore[arg-type]
    assert series.count("198.18.0.0/15") == 0
    series.add("198.18.0.1", (1 << 32) - 1)
    assert series.count("198.18.0.1") == (1 << 32) - 1


def test_string_keys_a_snapshot_cannot_hold_are_refused_at_add() -> None:
    """A string key over 65535 UTF-8 bytes or with a lone surrogate is refused by add."""
    series = AuditSeries("who", family="string", clock=ManualClock(T0))
    for bad in ("x" * 65536, "é" * 40000, "a\udc80b"):
        with pytest.raises(AuditInvalidArgument, match="string key"):
            series.add(bad)
        with pytest.raises(AuditInvalidArgument, match="string key"):
            series.add_many([bad, "fine"])
    assert series.count("fine") == 0
    series.add("x" * 65535)
    assert series.count("x" * 65535) == 1


def test_one_overflowing_key_costs_no_other_key_its_interval(tmp_path: Path) -> None:
    """A key summing past 2**64 is saturated and reported; every other key is written."""
    clock = ManualClock(T0)
    conn = AuditSeries("conn", clock=clock, track_intervals=True)
    rcpt = AuditSeries("rcpt", clock=clock, track_intervals=True)
    huge = (1 << 64) - 1
    for seq in (1, 2):
        batch = IncrementBatch(
            series="conn",
            family=KeyFamily.IPV4,
            window_seconds=300,
            origin=Origin("peer", 1),
            seq=seq,
            windows={int(T0): {V4 + 9: huge}},
        )
        conn.merge(batch)
    conn.add("198.18.0.1", 5)
    rcpt.add("198.18.0.2", 7)
    logger = ASLogger(
        store=SnapshotStore(root=tmp_path), series=[conn, rcpt], include=["."], clock=clock
    )
    clock.advance(60)
    report = logger.run_once()
    assert len(report.written) == 2
    snap = read_snapshot(tmp_path / "conn.20240601T000000")
    assert snap.items() == {V4 + 1: 5, V4 + 9: huge}
    assert snap.header.dropped == huge
    assert snap.header.total == huge + 5
    assert read_snapshot(tmp_path / "rcpt.20240601T000000").items() == {V4 + 2: 7}


def test_batches_with_increments_past_u64_are_refused() -> None:
    """A merged batch increment must fit a snapshot count (below 2**64)."""
    series = AuditSeries("conn", clock=ManualClock(T0))
    batch = IncrementBatch(
        series="conn",
        family=KeyFamily.IPV4,
        window_seconds=300,
        origin=Origin("peer", 1),
        seq=1,
        windows={int(T0): {V4: 1 << 64}},
    )
    with pytest.raises(AuditInvalidArgument, match="increment"):
        series.merge(batch)
