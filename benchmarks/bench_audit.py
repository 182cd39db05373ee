"""Benchmark mhafail.audit: add throughput, count latency, memory, 30-day snapshot query.

Run:  .venv/bin/python benchmarks/bench_audit.py [--quick]

Compares, in the same run, ``AuditSeries`` with a straightforward
dict-per-prefix counter (one dict per prefix length 0..32, so any prefix
is one lookup) and with py-radix (one tree node per address, prefix counts
summed over ``search_covered``). Data are synthetic integers in 64.0.0.0/8
(1M distinct addresses need more room than the documentation ranges have);
nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import radix

from mhafail.audit import (
    AuditSeries,
    KeyFamily,
    ManualClock,
    QueryEngine,
    SnapshotStore,
    format_address,
)
from mhafail.audit._snapshot import SnapshotHeader, encode_snapshot
from mhafail.audit._store import format_stamp, parse_stamp

BASE = 64 << 24  # 64.0.0.0/8
T0 = 1_717_200_000  # 2024-06-01T00:00:00Z


class DictPerPrefix:
    """The straightforward baseline: one dict per prefix length, updated on every add."""

    def __init__(self) -> None:
        self.levels: list[dict[int, int]] = [{} for _ in range(33)]

    def add(self, key: int) -> None:
        for length, level in enumerate(self.levels):
            bucket = key >> (32 - length)
            level[bucket] = level.get(bucket, 0) + 1

    def count(self, value: int, length: int) -> int:
        return self.levels[length].get(value >> (32 - length), 0)


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds / 1e6:6.2f} M/s"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def per_call_us(fn: Callable[[], object], calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean microseconds per call."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def bench_add(n_events: int, distinct: list[int]) -> None:
    rng = random.Random(1)
    events = [rng.choice(distinct) for _ in range(n_events)]
    texts = [format_address(k, KeyFamily.IPV4) for k in events]
    print(f"\n## add throughput ({n_events:,} events drawn from {len(distinct):,} addresses)")
    clock = ManualClock(T0)

    series = AuditSeries("bench", clock=clock)
    add = series.add
    t = timed(lambda: [add(k) for k in events])
    t_fold = timed(lambda: series.count(BASE))
    print(
        f"AuditSeries.add(int)            {rate(n_events, t)}"
        f"  (+ fold {t_fold * 1e3:.0f} ms before the first count)"
    )
    series = AuditSeries("bench", clock=clock)
    add = series.add
    t = timed(lambda: [add(k) for k in texts])
    print(f"AuditSeries.add(str)            {rate(n_events, t)}")
    series = AuditSeries("bench", clock=clock)
    t = timed(lambda: (series.add_many(events), series.count(BASE)))
    print(
        f"AuditSeries.add_many(ints)      {rate(n_events, t)}"
        "  (including the fold, counts queryable)"
    )
    series = AuditSeries("bench", clock=clock)
    t = timed(lambda: (series.add_many(texts), series.count(BASE)))
    print(f"AuditSeries.add_many(strs)      {rate(n_events, t)}  (including parsing and the fold)")

    baseline = DictPerPrefix()
    badd = baseline.add
    t = timed(lambda: [badd(k) for k in events])
    print(f"dict-per-prefix add(int)        {rate(n_events, t)}")

    tree = radix.Radix()

    def radix_add(key: int) -> None:
        text = format_address(key, KeyFamily.IPV4)
        node = tree.search_exact(text)
        if node is None:
            node = tree.add(text)
            node.data["n"] = 0
        node.data["n"] += 1

    sample = events[: max(n_events // 5, 1)]
    t = timed(lambda: [radix_add(k) for k in sample])
    print(f"py-radix add (from int)         {rate(len(sample), t)}  (on {len(sample):,} events)")


def bench_count(distinct: list[int]) -> None:
    n = len(distinct)
    print(f"\n## count latency, live series holding {n:,} distinct addresses in 64.0.0.0/8")
    clock = ManualClock(T0)
    series = AuditSeries("bench", clock=clock)
    texts = [format_address(k, KeyFamily.IPV4) for k in distinct]
    # Parsing inside the trace charges the series for its own key objects.
    tracemalloc.start()
    series.add_many(texts)
    series.count(BASE)
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del texts
    print(
        f"memory: {current / 2**20:.0f} MiB for {n:,} distinct IPv4 addresses in one window "
        f"({current / n:.0f} bytes per address, all four levels)"
    )
    probe = distinct[12345]
    slash24 = format_address(probe >> 8 << 8, KeyFamily.IPV4) + "/24"
    slash16 = format_address(probe >> 16 << 16, KeyFamily.IPV4) + "/16"
    slash20 = format_address(probe >> 12 << 12, KeyFamily.IPV4) + "/20"
    from mhafail.audit import parse_prefix

    p24, p16 = parse_prefix(slash24), parse_prefix(slash16)
    for label, target in (
        ("/24 (str)", slash24),
        ("/16 (str)", slash16),
        ("/24 (Prefix)", p24),
        ("/16 (Prefix)", p16),
        ("/20 (str, between levels)", slash20),
    ):
        us = per_call_us(lambda target=target: series.count(target), 20_000)
        print(
            f"AuditSeries.count {label:26} {us:7.2f} us"
            f"  (6 windows summed) = {series.count(target)}"
        )
    clock.advance(1)

    def add_then_count() -> None:
        series.add(probe)
        series.count(p24)

    us = per_call_us(add_then_count, 20_000)
    print(f"AuditSeries add+count /24 (the per-connection pattern) {us:.2f} us")

    baseline = DictPerPrefix()
    for key in distinct:
        baseline.add(key)
    for label, length in (("/24", 24), ("/16", 16)):
        us = per_call_us(lambda length=length: baseline.count(probe, length), 50_000)
        print(f"dict-per-prefix count {label:22} {us:7.2f} us")

    tree = radix.Radix()
    for key in distinct[: min(n, 300_000)]:
        tree.add(format_address(key, KeyFamily.IPV4)).data["n"] = 1

    def radix_count(cidr: str) -> int:
        return sum(node.data["n"] for node in tree.search_covered(cidr))

    for label, cidr in (("/24", slash24), ("/16", slash16)):
        calls = 2000 if label == "/24" else 50
        us = per_call_us(lambda cidr=cidr: radix_count(cidr), calls, repeats=3)
        print(f"py-radix count {label:29} {us:7.2f} us  (tree of {min(n, 300_000):,} addresses)")


def bench_query(days: int, per_file: int) -> None:
    minutes = days * 24 * 60
    print(
        f"\n## query over {days} days of 1-minute snapshots"
        f" ({minutes:,} raw files, {per_file} addresses each)"
    )
    root = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        rng = random.Random(2)
        start = time.perf_counter()
        for m in range(minutes):
            counts = {BASE + rng.randrange(1 << 24): rng.randrange(1, 5) for _ in range(per_file)}
            when = T0 + 60 * m
            header = SnapshotHeader("conn", KeyFamily.IPV4, "raw", when, when + 60, 0, 0)
            # Same bytes as write_snapshot, without an fsync per generated file.
            (root / f"conn.{format_stamp(when)}").write_bytes(encode_snapshot(header, counts))
        print(f"generated in {time.perf_counter() - start:.1f} s")
        store = SnapshotStore(root=root)
        engine = QueryEngine(store=store)
        first = time.strftime("%Y-%m-%d", time.gmtime(T0))
        last = time.strftime("%Y-%m-%d", time.gmtime(T0 + (days - 1) * 86400))
        query = f"show count for 64.18.0.0/16 in conn from {first} to {last}"
        print(f"query: {query}")
        t = timed(lambda: engine.run(query))
        raw_answer = engine.run(query).rows
        print(f"raw files only:        {t:8.3f} s  (first query: parses every file name)")
        t = timed(lambda: store.maintain(T0 + (days + 1) * 86400))
        print(f"condensing roll-ups:   {t:8.3f} s  (once; the as_logger does it incrementally)")
        parse_stamp.cache_clear()
        print(
            f"with daily roll-ups:   {timed(lambda: engine.run(query)):8.3f} s  (cold: first query)"
        )
        times = [timed(lambda: engine.run(query)) for _ in range(3)]
        print(f"with daily roll-ups:   {statistics.median(times):8.3f} s  (warm: median of 3)")
        assert engine.run(query).rows == raw_answer, "roll-ups changed the answer"
        breakdown = query + " cidrsize 24 order by count limit 10"
        print(
            "with roll-ups, cidrsize 24 order by count limit 10:"
            f" {timed(lambda: engine.run(breakdown)):.3f} s"
        )
    finally:
        shutil.rmtree(root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    n_distinct = 200_000 if args.quick else 1_000_000
    rng = random.Random(0)
    distinct = rng.sample(range(BASE, BASE + (1 << 24)), n_distinct)
    n_events = 200_000 if args.quick else 1_000_000
    bench_add(n_events, distinct)  # nearly every event a new address: the worst case
    bench_add(n_events, distinct[:10_000])  # repeat visitors, as an MTA mostly sees
    bench_count(distinct)
    bench_query(3 if args.quick else 30, 50 if args.quick else 200)


if __name__ == "__main__":
    main()
