"""CIDR queries: the parser's errors and the engine's answers against brute force."""

import datetime as dt
import ipaddress
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.audit import (
    CountQuery,
    IntervalCounts,
    KeyFamily,
    QueryEngine,
    ShowAvailable,
    SnapshotStore,
    parse_query,
)
from mhafail.errors import AuditInvalidArgument, QuerySyntaxError, UnknownSeries

T0 = 1_717_200_000  # 2024-06-01T00:00:00Z
DAY = 86400
V4 = int(ipaddress.IPv4Address("198.18.0.0"))
V6 = int(ipaddress.IPv6Address("2001:db8::"))

Snap = tuple[str, int, dict[int, int]]


def _write(store: SnapshotStore, snaps: list[Snap], family: KeyFamily) -> None:
    for series, start, counts in snaps:
        store.write_interval(
            IntervalCounts(series, family, float(start), float(start + 60), counts)
        )


def _date_text(minutes: int | None, day: int) -> tuple[str, int, int]:
    """Return (query text, start epoch, end epoch if used as 'to') for a day and optional minute."""
    base = dt.datetime.fromtimestamp(T0 + day * DAY, dt.UTC)
    if minutes is None:
        return base.strftime("%Y-%m-%d"), T0 + day * DAY, T0 + (day + 1) * DAY
    when = base + dt.timedelta(minutes=minutes)
    epoch = int(when.timestamp())
    return when.strftime("%Y-%m-%dT%H:%M"), epoch, epoch


def brute_force(
    snaps: list[Snap],
    *,
    target: str,
    names: list[str],
    union: bool,
    lo: int | None,
    hi: int | None,
    sizes: tuple[int, int] | None,
    order: str,
    daily: bool,
    limit: int | None,
    threshold: int | None,
) -> list[tuple[str | None, str, tuple[int, ...]]]:
    """The documented semantics, computed the slow obvious way with the ipaddress module."""
    net = ipaddress.ip_network(target)
    cols = 1 if union else len(names)
    groups: dict[int | None, dict[Any, list[int]]] = {}
    days: set[int | None] = set()
    for series, start, counts in snaps:
        if (
            series not in names
            or (lo is not None and start < lo)
            or (hi is not None and start >= hi)
        ):
            continue
        day = start - start % DAY if daily else None
        days.add(day)
        col = 0 if union else names.index(series)
        for cell, n in _cells(net, counts, sizes):
            groups.setdefault(day, {}).setdefault(cell, [0] * cols)[col] += n
    if not daily and not days:
        days = {None}
    rows = []
    for day in sorted(days, key=lambda d: d or 0):
        cells = groups.get(day, {})
        if sizes is None:
            cells = {net: cells.get(net, [0] * cols)}
        kept = [
            (cell, tuple(c))
            for cell, c in cells.items()
            if threshold is None or max(c) >= threshold
        ]
        if order == "count":
            kept.sort(key=lambda kc: (-max(kc[1]), int(kc[0].network_address), kc[0].prefixlen))
        else:
            kept.sort(key=lambda kc: (int(kc[0].network_address), kc[0].prefixlen))
        if limit is not None:
            kept = kept[:limit]
        day_text = (
            dt.datetime.fromtimestamp(day, dt.UTC).strftime("%Y-%m-%d") if day is not None else None
        )
        rows.extend((day_text, str(cell), counts) for cell, counts in kept)
    return rows


def _cells(
    net: Any, counts: dict[int, int], sizes: tuple[int, int] | None
) -> list[tuple[Any, int]]:
    """Return (network, count) for every breakdown cell each matching key falls in."""
    out = []
    for key, n in counts.items():
        ip = ipaddress.IPv4Address(key) if net.max_prefixlen == 32 else ipaddress.IPv6Address(key)
        if ip not in net:
            continue
        if sizes is None:
            out.append((net, n))
            continue
        for size in range(sizes[0], sizes[1] + 1):
            out.append((ipaddress.ip_network(f"{ip}/{size}", strict=False), n))
    return out


@st.composite
def queries(draw: st.DrawFn, family: KeyFamily) -> tuple[str, dict[str, Any]]:
    """Draw a query text and the parameters the brute force needs."""
    width, base, span = (32, V4, 17) if family is KeyFamily.IPV4 else (128, V6, 20)
    length = draw(st.integers(width - span - 1, width))
    shift = width - length
    offset = draw(st.integers(0, 2**span - 1))
    value = ((base + offset) >> shift) << shift
    target = str(ipaddress.ip_network((value, length)))
    names = draw(st.sampled_from([["a"], ["a", "b"], ["b", "a"], ["b"]]))
    union = len(names) > 1 and draw(st.booleans())
    series_text = f"union({','.join(names)})" if union else ",".join(names)
    clauses: list[str] = []
    lo = hi = None
    when = draw(st.sampled_from(["none", "from", "since", "on"]))
    if when == "from":
        a_text, lo, _ = _date_text(draw(st.none() | st.integers(0, 1439)), draw(st.integers(-1, 3)))
        b_day = draw(st.integers(-1, 4))
        b_text, _, b_end = _date_text(draw(st.none() | st.integers(0, 1439)), b_day)
        hi = b_end
        if hi <= lo:
            lo = hi = None
            when = "none"
        else:
            clauses.append(f"from {a_text} to {b_text}")
    if when == "since":
        text, lo, _ = _date_text(draw(st.none() | st.integers(0, 1439)), draw(st.integers(-1, 3)))
        clauses.append(f"since {text}")
    if when == "on":
        text, lo, hi = _date_text(None, draw(st.integers(-1, 3)))
        clauses.append(f"on {text}")
    sizes = None
    if draw(st.booleans()):
        low = draw(st.integers(length, min(length + 8, width)))
        high = draw(st.integers(low, min(low + 3, width)))
        sizes = (low, high)
        clauses.append(
            f"cidrsize {low}"
            if low == high and draw(st.booleans())
            else f"cidrsize {low} to {high}"
        )
    order = draw(st.sampled_from(["cidr", "count", None]))
    if order:
        clauses.append(f"order by {order}")
    aggregate = draw(st.sampled_from([None, "aggregate", "aggregate daily", "aggregate total"]))
    if aggregate:
        clauses.append(aggregate)
    limit = draw(st.none() | st.integers(1, 6))
    if limit is not None:
        clauses.append(f"limit {limit}")
    threshold = draw(st.none() | st.integers(0, 6))
    if threshold is not None:
        clauses.append(f"threshold {threshold}")
    clauses = draw(st.permutations(clauses))
    text = f"show count for {target} in {series_text} {' '.join(clauses)}"
    params = {
        "target": target,
        "names": names,
        "union": union,
        "lo": lo,
        "hi": hi,
        "sizes": sizes,
        "order": order or "cidr",
        "daily": aggregate == "aggregate daily",
        "limit": limit,
        "threshold": threshold,
    }
    return text, params


def _snaps(family: KeyFamily) -> st.SearchStrategy[list[Snap]]:
    base, span = (V4, 17) if family is KeyFamily.IPV4 else (V6, 20)
    one = st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(0, 3 * 24 * 60 - 1).map(lambda m: T0 + 60 * m),
        st.dictionaries(
            st.integers(0, 2**span - 1).map(lambda k: base + k), st.integers(1, 4), max_size=6
        ),
    )
    return st.lists(one, min_size=1, max_size=25, unique_by=lambda s: (s[0], s[1]))


def _check(
    family: KeyFamily, snaps: list[Snap], rollups: bool, drawn: list[tuple[str, dict[str, Any]]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SnapshotStore(root=Path(tmp))
        _write(store, snaps, family)
        if rollups:
            store.maintain(T0 + 5 * DAY)
        engine = QueryEngine(store=store)
        for text, params in drawn:
            if not all(any(s[0] == name for s in snaps) for name in params["names"]):
                with pytest.raises(UnknownSeries):
                    engine.run(text)
                continue
            result = engine.run(text)
            got = [(row.day, row.cidr, row.counts) for row in result.rows]
            assert got == brute_force(snaps, **params), text


@settings(max_examples=60, deadline=None)
@given(
    snaps=_snaps(KeyFamily.IPV4),
    rollups=st.booleans(),
    drawn=st.lists(queries(KeyFamily.IPV4), min_size=1, max_size=6),
)
def test_ipv4_answers_equal_brute_force(
    snaps: list[Snap], rollups: bool, drawn: list[tuple[str, dict[str, Any]]]
) -> None:
    """Every clause combination over IPv4 snapshots, raw or rolled up, matches brute force."""
    _check(KeyFamily.IPV4, snaps, rollups, drawn)


@settings(max_examples=25, deadline=None)
@given(
    snaps=_snaps(KeyFamily.IPV6),
    rollups=st.booleans(),
    drawn=st.lists(queries(KeyFamily.IPV6), min_size=1, max_size=4),
)
def test_ipv6_answers_equal_brute_force(
    snaps: list[Snap], rollups: bool, drawn: list[tuple[str, dict[str, Any]]]
) -> None:
    """Every clause combination over IPv6 snapshots answers as brute force does."""
    _check(KeyFamily.IPV6, snaps, rollups, drawn)


def test_rollups_do_not_change_answers_and_are_used(tmp_path: Path) -> None:
    """A 30-day query reads the daily roll-ups instead of raw files and gets the same totals."""
    store = SnapshotStore(root=tmp_path)
    snaps = [("a", T0 + 3600 * h, {V4 + h % 7: 1 + h % 3}) for h in range(0, 24 * 4)]
    _write(store, snaps, KeyFamily.IPV4)
    engine = QueryEngine(store=store)
    text = "show count for 198.18.0.0/15 in a from 2024-06-01 to 2024-06-30 cidrsize 32"
    before = engine.run(text)
    store.maintain(T0 + 10 * DAY)
    assert [ref.resolution for ref in store.plan("a", T0, T0 + 30 * DAY)] == ["day"] * 4
    partial = store.plan("a", T0 + 1800, T0 + 2 * DAY)
    assert [ref.resolution for ref in partial] == ["hour"] * 23 + ["day"]
    assert engine.run(text) == before


def test_string_series_are_queried_with_quoted_keys(tmp_path: Path) -> None:
    """A quoted key counts a string series; a CIDR against it is a clear error."""
    store = SnapshotStore(root=tmp_path)
    store.write_interval(
        IntervalCounts("senders", KeyFamily.STRING, T0, T0 + 60, {'a b"c': 2, "x": 1})
    )
    engine = QueryEngine(store=store)
    assert engine.run('show count for "a b\\"c" in senders').rows[0].counts == (2,)
    with pytest.raises(
        AuditInvalidArgument, match=r"counts string keys; query it with a quoted key"
    ):
        engine.run("show count for 198.18.0.0/15 in senders")


def test_show_available_lists_series(tmp_path: Path) -> None:
    """show available lists each series with family, file counts and time span."""
    store = SnapshotStore(root=tmp_path)
    _write(store, [("a", T0, {V4: 1}), ("a", T0 + 60, {V4: 1})], KeyFamily.IPV4)
    result = QueryEngine(store=store).run("SHOW AVAILABLE")
    assert result.available == (
        {
            "series": "a",
            "family": "ipv4",
            "raw": 2,
            "hourly": 0,
            "daily": 0,
            "first": "20240601T000000",
            "last": "20240601T000100",
        },
    )
    assert "a" in result.to_text().splitlines()[1]


def test_unknown_series_and_wrong_family_are_named(tmp_path: Path) -> None:
    """Unknown series raise UnknownSeries listing what exists; IPv6 CIDRs on IPv4 data fail."""
    store = SnapshotStore(root=tmp_path)
    _write(store, [("a", T0, {V4: 1})], KeyFamily.IPV4)
    engine = QueryEngine(store=store)
    with pytest.raises(UnknownSeries, match=r"'nope' .*available: a"):
        engine.run("show count for 198.18.0.0/15 in a,nope")
    with pytest.raises(AuditInvalidArgument, match="counts ipv4 keys"):
        engine.run("show count for 2001:db8::/32 in a")


def test_result_renders_as_text_and_json(tmp_path: Path) -> None:
    """Text is one aligned line per prefix under a header; JSON carries per-series counts."""
    store = SnapshotStore(root=tmp_path)
    _write(store, [("a", T0, {V4: 3, V4 + 256: 1}), ("b", T0, {V4: 5})], KeyFamily.IPV4)
    result = QueryEngine(store=store).run(
        "show count for 198.18.0.0/16 in a,b cidrsize 24 on 2024-06-01 aggregate daily"
    )
    assert result.to_text().splitlines() == [
        "day         cidr           a  b",
        "2024-06-01  198.18.0.0/24  3  5",
        "2024-06-01  198.18.1.0/24  1  0",
    ]
    assert result.to_json()["rows"][0] == {
        "cidr": "198.18.0.0/24",
        "counts": {"a": 3, "b": 5},
        "day": "2024-06-01",
    }


def test_parser_builds_the_documented_values() -> None:
    """A full query parses into the CountQuery the grammar describes."""
    query = parse_query(
        "show count for 198.18.0.0/15 in union(a,b) from 2024-06-01 to 2024-06-02T12:00 "
        "cidrsize 16 to 24 order by count aggregate daily limit 10 threshold 5"
    )
    assert isinstance(query, CountQuery)
    assert (query.series, query.union, query.start, query.end) == (
        ("a", "b"),
        True,
        T0,
        T0 + DAY + 12 * 3600,
    )
    assert (query.cidrsize, query.order, query.daily, query.limit, query.threshold) == (
        (16, 24),
        "count",
        True,
        10,
        5,
    )
    assert parse_query("show   available") == ShowAvailable()
    to_day = parse_query("show count for 198.18.0.0/15 in a from 2024-06-01 to 2024-06-01")
    assert isinstance(to_day, CountQuery) and to_day.end == T0 + DAY


@pytest.mark.parametrize(
    ("text", "position", "expected"),
    [
        ("", 0, "'show'"),
        ("show counts", 5, "'available' or 'count'"),
        ("show available now", 15, "end of query"),
        ("show count for 198.18.0.1/15 in a", 15, "a CIDR"),
        ("show count for 198.18.0.0/40 in a", 15, "a CIDR"),
        ("show count for 198.18.0.0/15", 28, "'in'"),
        ("show count for 198.18.0.0/15 in", 31, "a series name"),
        ("show count for 198.18.0.0/15 in a.b", 32, "a series name"),
        ("show count for 198.18.0.0/15 in union(a b)", 40, "',' or ')'"),
        ("show count for 198.18.0.0/15 in union a", 38, "'('"),
        ("show count for 198.18.0.0/15 in a,a", 34, "distinct series names"),
        ("show count for 198.18.0.0/15 in a sorted", 34, "'from' or 'since'"),
        ("show count for 198.18.0.0/15 in a on 2024-02-30", 37, "a date"),
        ("show count for 198.18.0.0/15 in a on 1969-12-31", 37, "a date"),
        ("show count for 198.18.0.0/15 in a on 2024-06-01T10:00", 37, "a date YYYY-MM-DD (UTC)"),
        ("show count for 198.18.0.0/15 in a since 10000-01-01", 40, "a date"),
        (
            "show count for 198.18.0.0/15 in a from 2024-06-02 to 2024-06-01T00:00",
            53,
            "a 'to' date after",
        ),
        (
            "show count for 198.18.0.0/15 in a since 2024-06-01 on 2024-06-02",
            51,
            "at most one date clause",
        ),
        ("show count for 198.18.0.0/15 in a cidrsize 8", 43, "a prefix length (15..32)"),
        ("show count for 198.18.0.0/15 in a cidrsize 24 to 20", 49, "a prefix length (24..32)"),
        ("show count for 198.18.0.0/15 in a limit 0", 40, "a row limit (1..1000000)"),
        ("show count for 198.18.0.0/15 in a limit 99999999999999999999999999", 40, "a row limit"),
        ("show count for 198.18.0.0/15 in a threshold -1", 44, "a count"),
        ("show count for 198.18.0.0/15 in a order count", 40, "'by'"),
        ("show count for 198.18.0.0/15 in a order by size", 43, "'cidr' or 'count'"),
        ('show count for "unterminated in a', 15, 'a closing "'),
        ('show count for "k" in a cidrsize 3', 24, "no cidrsize for a string key"),
    ],
)
def test_malformed_queries_name_position_and_expectation(
    text: str, position: int, expected: str
) -> None:
    """A malformed query raises QuerySyntaxError naming the bad position and what was expected."""
    with pytest.raises(QuerySyntaxError) as info:
        parse_query(text)
    assert info.value.position == position, str(info.value)
    assert expected in info.value.expected, str(info.value)
    assert f"at position {position}" in str(info.value)


def test_overlong_query_is_refused() -> None:
    """A query longer than 10000 characters is refused before parsing."""
    with pytest.raises(QuerySyntaxError, match="too long"):
        parse_query("show count for 198.18.0.0/15 in " + "a," * 6000 + "a")
