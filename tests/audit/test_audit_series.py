"""AuditSeries: counting, rolling windows, bounded memory, bad input."""

import ipaddress
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.audit import AuditSeries, KeyFamily, ManualClock, parse_prefix
from mhafail.errors import AuditError, AuditInvalidArgument

T0 = 1_717_200_000.0  # 2024-06-01T00:00:00Z, a multiple of 300
V4_BASE = int(ipaddress.IPv4Address("198.18.0.0"))
V6_BASE = int(ipaddress.IPv6Address("2001:db8::"))

# An event is (seconds after T0, key offset inside the test range, n).
events_v4 = st.lists(
    st.tuples(st.integers(0, 3000), st.integers(0, 2**17 - 1), st.integers(1, 5)), max_size=60
)


def _prefixes(width: int, base: int, span_bits: int) -> st.SearchStrategy[tuple[int, int]]:
    def build(offset: int, length: int) -> tuple[int, int]:
        shift = width - length
        return ((base + offset) >> shift) << shift, length

    return st.builds(
        build, st.integers(0, 2**span_bits - 1), st.integers(width - span_bits - 2, width)
    )


@settings(max_examples=150, deadline=None)
@given(
    events=events_v4,
    queries=st.lists(
        st.tuples(_prefixes(32, V4_BASE, 17), st.integers(0, 5), st.integers(1, 6)), min_size=1
    ),
    use_batch=st.booleans(),
)
def test_ipv4_counts_equal_brute_force(
    events: list[tuple[int, int, int]],
    queries: list[tuple[tuple[int, int], int, int]],
    use_batch: bool,
) -> None:
    """count(prefix, windows=range) equals brute force for any prefix length and window range."""
    clock = ManualClock(T0)
    series = AuditSeries("conn", window_seconds=300, windows=6, clock=clock)
    log: list[tuple[int, int, int]] = []
    for at, offset, n in sorted(events):
        clock.set(T0 + at)
        key = V4_BASE + offset
        if use_batch:
            series.add_many([key] * n)
        else:
            series.add(str(ipaddress.IPv4Address(key)) if offset % 2 else key, n)
        log.append((at, key, n))
    now_window = int((clock.time() // 300) * 300)
    for (value, length), first, count in queries:
        windows = range(first, min(first + count, 6))
        net = ipaddress.IPv4Network((value, length))
        expected = sum(
            n
            for at, key, n in log
            if (now_window - int((T0 + at) // 300) * 300) // 300 in windows
            and ipaddress.IPv4Address(key) in net
        )
        assert series.count(str(net), windows=windows) == expected


@settings(max_examples=60, deadline=None)
@given(
    keys=st.lists(st.integers(0, 2**20 - 1), max_size=80),
    queries=st.lists(_prefixes(128, V6_BASE, 20), min_size=1, max_size=10),
)
def test_ipv6_counts_equal_brute_force(keys: list[int], queries: list[tuple[int, int]]) -> None:
    """IPv6 prefix counts, including lengths between the kept levels, equal brute force."""
    series = AuditSeries("conn6", family="ipv6", clock=ManualClock(T0))
    series.add_many(V6_BASE + k for k in keys)
    for value, length in queries:
        net = ipaddress.IPv6Network((value, length))
        expected = sum(1 for k in keys if ipaddress.IPv6Address(V6_BASE + k) in net)
        assert series.count(str(net)) == expected
    assert series.count("::/0") == len(keys)


def test_windows_roll_and_age_out_on_the_clock() -> None:
    """Counts move to older windows as the clock passes boundaries and vanish after the last."""
    clock = ManualClock(T0)
    series = AuditSeries("conn", window_seconds=300, windows=3, clock=clock)
    series.add("203.0.113.9", 4)
    assert series.count("203.0.113.0/24", windows=1) == 4
    clock.advance(300)
    assert series.count("203.0.113.0/24", windows=1) == 0
    assert series.count("203.0.113.0/24", windows=range(1, 2)) == 4
    series.add("203.0.113.10")
    assert series.count("203.0.113.0/24") == 5
    clock.advance(300)
    assert series.count("203.0.113.0/24", windows=range(2, 3)) == 4
    assert series.count("203.0.113.10", windows=range(1, 2)) == 1
    clock.advance(299)
    assert series.count("203.0.113.0/24") == 5
    clock.advance(1)
    assert series.count("203.0.113.0/24") == 1
    clock.advance(600)
    assert series.count("203.0.113.0/24") == 0
    assert series.stats().keys == (0, 0, 0)


def test_clock_jumping_far_ahead_clears_everything() -> None:
    """A clock step past every window leaves no stale counts behind."""
    clock = ManualClock(T0)
    series = AuditSeries("conn", clock=clock)
    series.add_many(["198.18.0.1", "198.18.0.2"])
    clock.advance(86400)
    assert series.count("0.0.0.0/0") == 0
    assert series.stats().keys == (0,) * 6


def test_clock_stepping_back_keeps_counting_in_the_current_window() -> None:
    """A wall clock stepped backwards neither loses counts nor reopens old windows."""
    clock = ManualClock(T0 + 600)
    series = AuditSeries("conn", clock=clock)
    series.add(1)
    clock.set(T0)
    series.add(1)
    assert series.count(1, windows=1) == 2


def test_string_series_count_exact_keys() -> None:
    """String series count exact keys and refuse CIDRs and ints."""
    series = AuditSeries("senders", family="string", clock=ManualClock(T0))
    series.add("example.com")
    series.add_many(["example.com", "example.org"])
    assert series.count("example.com") == 2
    assert series.count("example.net") == 0
    with pytest.raises(AuditInvalidArgument, match="counts strings"):
        series.add(5)
    with pytest.raises(AuditInvalidArgument):
        series.count(parse_prefix("198.18.0.0/15"))


def test_max_keys_bounds_memory_and_keeps_coarse_counts_exact() -> None:
    """Past max_keys new exact keys are dropped and reported; totals and /24 counts stay exact."""
    series = AuditSeries("conn", clock=ManualClock(T0), max_keys=10)
    keys = [V4_BASE + i for i in range(25)]  # one /24, 25 addresses
    series.add_many(keys)
    stats = series.stats()
    assert stats.keys[0] == 10
    assert stats.dropped[0] == 15
    assert series.count("198.18.0.0/24") == 25
    assert series.count("0.0.0.0/0") == 25
    assert series.count("198.18.0.0/28") <= 16


def test_add_many_equals_repeated_add() -> None:
    """The batch path counts exactly what single adds would, text and int keys mixed."""
    one = AuditSeries("a", clock=ManualClock(T0))
    many = AuditSeries("a", clock=ManualClock(T0))
    keys: list[int | str] = ["198.18.0.1", V4_BASE + 1, "198.18.3.4", V4_BASE + 700, "198.18.0.1"]
    for key in keys:
        one.add(key)
    assert many.add_many(keys) == 5
    for cidr in ("198.18.0.1", "198.18.0.0/22", "198.18.0.0/15", "0.0.0.0/0"):
        assert one.count(cidr) == many.count(cidr)


@pytest.mark.parametrize(
    ("key", "n", "fragment"),
    [
        ("198.18.0.256", 1, "256 > 255"),
        (2**32, 1, "not a 32-bit"),
        (-1, 1, "not a 32-bit"),
        (True, 1, "not bool"),
        (1.5, 1, "not float"),
        ("198.18.0.1", 0, "n must be an integer"),
        ("198.18.0.1", 2.0, "n must be an integer"),
        ("2001:db8::1", 1, "four dotted octets"),
    ],
)
def test_bad_adds_are_refused_and_count_nothing(key: object, n: object, fragment: str) -> None:
    """Malformed keys or counts raise AuditInvalidArgument and leave the series unchanged."""
    series = AuditSeries("conn", clock=ManualClock(T0))
    with pytest.raises(AuditInvalidArgument, match=fragment):
        series.add(key, n)  # type: ignore[arg-type]
    if n == 1:
        with pytest.raises(AuditInvalidArgument):
            series.add_many(["198.18.0.1", key])  # type: ignore[list-item]
    assert series.count("0.0.0.0/0") == 0


def test_bad_series_arguments_are_refused() -> None:
    """Bad names, sizes, families, window ranges and count targets raise AuditInvalidArgument."""
    with pytest.raises(AuditInvalidArgument, match="series name"):
        AuditSeries("bad.name")
    with pytest.raises(AuditInvalidArgument, match="window_seconds"):
        AuditSeries("a", window_seconds=0)
    with pytest.raises(AuditInvalidArgument, match="family"):
        AuditSeries("a", family="ipv5")
    series = AuditSeries("a", clock=ManualClock(T0))
    with pytest.raises(AuditInvalidArgument, match="outside"):
        series.count("198.18.0.0/15", windows=range(0, 7))
    with pytest.raises(AuditInvalidArgument, match="outside"):
        series.count("198.18.0.0/15", windows=9)
    with pytest.raises(AuditInvalidArgument, match="host bits"):
        series.count("198.18.0.1/15")
    with pytest.raises(AuditInvalidArgument, match="cannot count"):
        series.count(1.0)  # type: ignore[arg-type]
    with pytest.raises(AuditError, match="track_intervals"):
        series.take_interval()


def test_take_interval_returns_and_resets_interval_counts() -> None:
    """take_interval returns the counts since the last call, across window rolls, and resets."""
    clock = ManualClock(T0)
    series = AuditSeries("conn", clock=clock, track_intervals=True)
    series.add("198.18.0.1", 2)
    clock.advance(400)  # crosses a window boundary: intervals are independent of windows
    series.add("198.18.0.2")
    first = series.take_interval()
    assert (first.start, first.end, first.total()) == (T0, T0 + 400, 3)
    assert first.counts == {V4_BASE + 1: 2, V4_BASE + 2: 1}
    clock.advance(60)
    second = series.take_interval()
    assert (second.start, second.end, dict(second.counts)) == (T0 + 400, T0 + 460, {})
    assert series.count("198.18.0.0/15") == 3


def test_concurrent_adds_are_all_counted() -> None:
    """Adds from several threads while another thread counts are never lost."""
    series = AuditSeries("conn", clock=ManualClock(T0))
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            series.count("198.18.0.0/15")

    def writer(offset: int) -> None:
        for i in range(5000):
            series.add(V4_BASE + (i * 7 + offset) % 1000)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    read = threading.Thread(target=reader)
    read.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    read.join()
    assert series.count("198.18.0.0/15") == 15000


def test_family_is_reported_in_stats() -> None:
    """stats() names the family and the current window start."""
    series = AuditSeries("conn6", family=KeyFamily.IPV6, clock=ManualClock(T0 + 10))
    stats = series.stats()
    assert (stats.family, stats.current_start) == (KeyFamily.IPV6, int(T0))
