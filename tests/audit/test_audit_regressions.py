"""Regressions from the outside check of the audit series (issue 13, audit items)."""

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.audit import (
    ASLogger,
    AuditSeries,
    IncrementBatch,
    KeyFamily,
    ManualClock,
    Origin,
    Prefix,
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


def _fill_minutes(root: Path, minutes: range) -> SnapshotStore:
    """Log one one-minute raw file per minute offset, each counting key V4 + 1 once."""
    clock = ManualClock(T0)
    series = AuditSeries("conn", clock=clock, track_intervals=True)
    store = SnapshotStore(root=root)
    for minute in minutes:
        clock.set(T0 + 60 * minute)
        series.take_interval()
        series.add(V4 + 1)
        clock.advance(60)
        store.write_interval(series.take_interval())
    return store


def _damage(path: Path) -> None:
    """Flip one byte in the middle of a file."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_raw_file_is_quarantined_and_maintenance_goes_on(tmp_path: Path) -> None:
    """A damaged raw file is moved aside and reported; roll-ups and retention still run."""
    store = _fill_minutes(tmp_path, range(0, 3 * 24 * 60, 30))  # 3 days, one file per 30 min
    _damage(tmp_path / "conn.20240601T003000")
    store = SnapshotStore(root=tmp_path, retention_seconds=86400, rollup_retention_seconds=864000)
    report = store.maintain(T0 + 3 * 86400 + 600)
    assert [p.name for p in report.quarantined] == ["conn.20240601T003000"]
    assert (tmp_path / "quarantine" / "raw" / "conn.20240601T003000").exists()
    assert len(report.hourly) == 72 and len(report.daily) == 3
    first_day = {r.start: store.read(r).items() for r in store.refs("day")}[int(T0)]
    assert first_day == {V4 + 1: 47}  # every intact half hour of the first day
    assert report.expired  # retention ran
    assert all(ref.start >= T0 + 2 * 86400 - 3600 for ref in store.refs("raw"))
    assert store.maintain(T0 + 3 * 86400 + 600).quarantined == ()


def test_a_damaged_file_being_added_to_is_replaced_not_fatal(tmp_path: Path) -> None:
    """A second interval in the same second replaces a damaged raw file instead of failing."""
    store = _fill_minutes(tmp_path, range(1))
    _damage(tmp_path / "conn.20240601T000000")
    _fill_minutes(tmp_path, range(1))
    assert read_snapshot(tmp_path / "conn.20240601T000000").items() == {V4 + 1: 1}
    assert (tmp_path / "quarantine" / "raw" / "conn.20240601T000000").exists()
    assert len(store.refs("raw")) == 1


def test_show_available_survives_a_damaged_oldest_file(tmp_path: Path) -> None:
    """show available lists a series whose oldest file is damaged, from another file."""
    from mhafail.audit import QueryEngine

    store = _fill_minutes(tmp_path, range(3))
    _damage(tmp_path / "conn.20240601T000000")
    (row,) = QueryEngine(store=store).run("show available").available
    assert (row["series"], row["family"], row["raw"]) == ("conn", "ipv4", 3)
    for name in ("conn.20240601T000100", "conn.20240601T000200"):
        _damage(tmp_path / name)
    (row,) = QueryEngine(store=store).run("show available").available
    assert row["family"] == "unknown"


@pytest.mark.parametrize(
    "date",
    [
        "\uff12\uff10\uff12\uff14-06-01",  # fullwidth digits
        "2024-\uff106-01",
        "2024-06-01T1\u0662:00",  # Arabic-Indic two
        "2024-06-01T12:00:0\u07c0",  # NKo zero
    ],
)
def test_dates_with_non_ascii_digits_are_refused(date: str) -> None:
    """Dates take ASCII digits only; Unicode digits are a syntax error, not 2024."""
    from mhafail.audit import parse_query
    from mhafail.errors import QuerySyntaxError

    with pytest.raises(QuerySyntaxError, match="date"):
        parse_query(f"show count for 198.18.0.0/16 in conn since {date}")


def _crafted(family: KeyFamily, keys: bytes, counts: list[int], total: int) -> bytes:
    """Build a snapshot file by hand with a valid CRC (what an attacker or a buggy writer makes)."""
    import json
    import struct
    import zlib

    meta = {
        "format": "mhafail-audit-snapshot",
        "version": 1,
        "series": "conn",
        "family": family.value,
        "resolution": "raw",
        "start": int(T0),
        "end": int(T0) + 60,
        "entries": len(counts),
        "total": total,
        "dropped": 0,
        "sources": 1,
    }
    head = json.dumps(meta).encode()
    body = b"MHAUDIT\n" + len(head).to_bytes(4, "big") + head + keys
    body += struct.pack(f">{len(counts)}Q", *counts)
    return body + zlib.crc32(body).to_bytes(4, "big")


@pytest.mark.parametrize(
    ("family", "keys", "total", "problem"),
    [
        (KeyFamily.IPV4, (V4 + 2).to_bytes(4, "big") + (V4 + 1).to_bytes(4, "big"), 3, "order"),
        (KeyFamily.IPV4, (V4 + 1).to_bytes(4, "big") * 2, 3, "order"),
        (KeyFamily.IPV6, (2).to_bytes(16, "big") + (1).to_bytes(16, "big"), 3, "order"),
        (KeyFamily.STRING, b"\x00\x01b\x00\x01a", 3, "order"),
        (KeyFamily.IPV4, (V4 + 1).to_bytes(4, "big") + (V4 + 2).to_bytes(4, "big"), 4, "total"),
    ],
)
def test_crafted_snapshots_with_valid_crc_are_checked(
    tmp_path: Path, family: KeyFamily, keys: bytes, total: int, problem: str
) -> None:
    """Unsorted keys or a header total that disagrees with the counts raise SnapshotCorrupt."""
    from mhafail.errors import SnapshotCorrupt

    path = tmp_path / "conn.20240601T000000"
    path.write_bytes(_crafted(family, keys, [1, 2], total))
    with pytest.raises(SnapshotCorrupt, match=problem):
        read_snapshot(path)


def test_node_cli_adds_string_keys_with_spaces(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The audit node's stdin commands take shell-quoted keys, so string keys may hold spaces."""
    import io
    import json

    from mhafail.cli._audit import _read_commands

    who = AuditSeries("who", family="string", clock=ManualClock(T0))
    commands = 'add who "a b" 2\nadd who \'a b\'\ncount who "a b"\nadd who "unclosed\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(commands))
    _read_commands(None, {"who": who})
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["event"] for e in events] == ["added", "added", "count", "error"]
    assert events[0]["key"] == "a b"
    assert events[2]["count"] == 3
    assert "quotation" in events[3]["error"]


def test_stats_say_which_prefix_lengths_stay_exact_past_max_keys() -> None:
    """Past max_keys /8 stays exact, /12 (from the full /16 level) undercounts; stats say /8."""
    series = AuditSeries("conn", clock=ManualClock(T0), max_keys=4)
    series.add_many(f"127.{i}.0.1" for i in range(10))
    assert series.count("127.0.0.0/8") == 10
    assert series.count("0.0.0.0/0") == 10
    assert series.count("127.0.0.0/12") <= 10
    stats = series.stats()
    assert stats.exact_up_to[0] == 8
    assert stats.exact_up_to[1:] == (32,) * 5
    assert AuditSeries("s", family="string", clock=ManualClock(T0)).stats().exact_up_to[0] == 0


_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.lists(st.integers(0, 4095), min_size=1, max_size=60)),
        st.tuples(st.just("count"), st.integers(0, 32), st.integers(0, 4095)),
        st.tuples(st.just("tick"), st.integers(1, 400)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_OPS, st.sampled_from([4, 64, 1 << 20]))
def test_counts_between_levels_stay_right_as_windows_change(
    ops: list[tuple[Any, ...]], max_keys: int
) -> None:
    """Counts at every length match a brute-force recount (a lower bound past max_keys)."""
    clock = ManualClock(T0)
    series = AuditSeries("conn", clock=clock, max_keys=max_keys)
    seen: list[tuple[float, int]] = []
    for op in ops:
        if op[0] == "add":
            keys = [V4 + (k << 12) + k for k in op[1]]  # spread over /8../32 buckets
            if len(keys) % 2:
                series.add_many(keys)
            else:
                for key in keys:
                    series.add(key)
            seen.extend((clock.time(), key) for key in keys)
        elif op[0] == "tick":
            clock.advance(op[1])
        else:
            length, k = op[1], op[2]
            value = (V4 + (k << 12) + k) >> (32 - length) << (32 - length) if length else 0
            oldest = (clock.time() // 300 - 5) * 300
            truth = sum(
                1
                for t, key in seen
                if t >= oldest and key >> (32 - length) == value >> (32 - length)
            )
            got = series.count(Prefix(KeyFamily.IPV4, value, length))
            if max_keys == 1 << 20:
                assert got == truth
            else:
                assert got <= truth


def test_counts_include_windows_that_only_merges_created() -> None:
    """A window created by a merge (older, or one ahead once the clock gets there) is counted."""
    clock = ManualClock(T0 + 600)
    series = AuditSeries("conn", clock=clock)
    start = int(T0 // 300) * 300
    batch = IncrementBatch(
        series="conn",
        family=KeyFamily.IPV4,
        window_seconds=300,
        origin=Origin("a", 1),
        seq=1,
        windows={start: {V4: 2}, start + 900: {V4: 5}},
    )
    assert series.merge(batch).applied == 7
    assert [series.count("198.18.0.0/24", range(i, i + 1)) for i in range(3)] == [0, 0, 2]
    assert (series.count(V4), series.count("198.18.0.0/20", 2)) == (2, 0)
    clock.advance(300)
    assert [series.count("198.18.0.0/24", range(i, i + 1)) for i in range(4)] == [5, 0, 0, 2]
    assert series.count("0.0.0.0/0") == 7
