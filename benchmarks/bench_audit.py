"""Benchmark mhafail.audit: add throughput, count latency, memory, 30-day query, cluster series.

Run:  .venv/bin/python benchmarks/bench_audit.py [--quick] [--cluster-only]

The cluster section starts a ZooKeeper server (mhafail.testing) and runs a
manager and four sender nodes in this process, over loopback TCP.

Compares, in the same run, ``AuditSeries`` with a straightforward
dict-per-prefix counter (one dict per prefix length 0..32, so any prefix
is one lookup) and with py-radix (one tree node per address, prefix counts
summed over ``search_covered``). Data are synthetic integers in 64.0.0.0/8
(1M distinct addresses need more room than the documentation ranges have);
nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import json
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


def per_call_us(
    fn: Callable[[], object],
    calls: int,
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Median over ``repeats`` of the mean microseconds per call.

    ``clock=time.process_time`` measures CPU time: on a loaded machine
    wall time mostly measures the scheduler.
    """
    samples = []
    for _ in range(repeats):
        start = clock()
        for _ in range(calls):
            fn()
        samples.append((clock() - start) / calls * 1e6)
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
    between = {
        length: format_address(probe >> (32 - length) << (32 - length), KeyFamily.IPV4)
        + f"/{length}"
        for length in (9, 17, 25)
    }
    from mhafail.audit import parse_prefix

    p24, p16 = parse_prefix(slash24), parse_prefix(slash16)
    for label, target in (
        ("/24 (str)", slash24),
        ("/16 (str)", slash16),
        ("/24 (Prefix)", p24),
        ("/16 (Prefix)", p16),
        ("/20 (str, between levels)", slash20),
        *((f"/{length} (str, between levels)", text) for length, text in between.items()),
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

    bench_count_every_length(distinct)

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


def bench_count_every_length(distinct: list[int]) -> None:
    """Count latency for every prefix length /0../32 with all six windows populated."""
    clock = ManualClock(T0)
    series = AuditSeries("bench6", clock=clock)
    per_window = min(len(distinct) // 6, 30_000)
    for w in range(6):
        if w:
            clock.advance(300)
        series.add_many(distinct[w * per_window : (w + 1) * per_window])
    probe = distinct[12345 % per_window]
    for what, timer in (("wall", time.perf_counter), ("CPU", time.process_time)):
        times = {}
        for length in range(33):
            value = probe >> (32 - length) << (32 - length) if length else 0
            target = f"{format_address(value, KeyFamily.IPV4)}/{length}"
            series.count(target)
            times[length] = per_call_us(
                lambda target=target: series.count(target), 5_000, clock=timer
            )
        worst = max(times, key=lambda length: times[length])
        print(
            f"AuditSeries.count, 6 populated windows of {per_window:,} addresses, every length "
            f"/0../32 ({what} time): median {statistics.median(times.values()):.2f} us, "
            f"worst /{worst} {times[worst]:.2f} us"
        )


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


class ClusterNode:
    """An in-process cluster node: a series, its ClusterAudit, coordinator and membership."""

    def __init__(self, zk: str, name: str, *, listen: bool, interval: float) -> None:
        from mhafail.audit import ClusterAudit
        from mhafail.coordination import Coordinator, Membership, NodeInfo

        self.series = AuditSeries("conn", window_seconds=300, windows=6, export_increments=True)
        self.audit = ClusterAudit(
            node=name,
            series=[self.series],
            listen="127.0.0.1:0" if listen else None,
            interval=interval,
            secret=b"bench-audit-shared-secret",
        ).start()
        self.coordinator = Coordinator(
            hosts=zk, cluster="bench-audit", session_timeout=2, open_acl=True
        ).start()
        info = NodeInfo(name=name, endpoints=self.audit.endpoints())
        self.membership = Membership(coordinator=self.coordinator, info=info).start()
        self.audit.follow(self.membership)

    def wait_members(self, n: int) -> None:
        self.membership.wait_for(lambda view: len(view) == n, 30)

    def stop(self) -> None:
        self.membership.stop()
        self.audit.stop(flush_timeout=0)
        self.coordinator.stop()


def start_cluster(zk: str, interval: float) -> list[ClusterNode]:
    """A manager (first) and four senders, all in each other's view."""
    nodes = [ClusterNode(zk, "m", listen=True, interval=interval)]
    nodes += [ClusterNode(zk, f"n{i}", listen=False, interval=interval) for i in range(4)]
    for node in nodes:
        node.wait_members(5)
    return nodes


def bench_propagation(zk: str, interval: float, trials: int) -> None:
    nodes = start_cluster(zk, interval)
    manager, senders = nodes[0], nodes[1:]
    try:
        delays = []
        rng = random.Random(2)
        for trial in range(trials):
            time.sleep(rng.uniform(0, interval))  # land anywhere in the batch cycle
            key = BASE + trial
            t0 = time.perf_counter()
            senders[trial % 4].series.add(key)
            while manager.series.count(key) == 0:
                time.sleep(0.0005)
            delays.append(time.perf_counter() - t0)
        delays.sort()
        print(
            f"propagation add -> manager count, interval {interval} s: "
            f"p50 {statistics.median(delays) * 1000:.0f} ms"
            f"  p99 {delays[int(0.99 * (len(delays) - 1))] * 1000:.0f} ms"
            f"  max {delays[-1] * 1000:.0f} ms  (n={trials})"
        )
    finally:
        for node in nodes:
            node.stop()


def bench_manager(zk: str, per_node: int) -> None:
    nodes = start_cluster(zk, 0.5)
    manager, senders = nodes[0], nodes[1:]
    try:
        keys = random.Random(3).sample(range(BASE, BASE + (1 << 24)), per_node * 4)
        t0 = time.perf_counter()
        for i, sender in enumerate(senders):
            sender.series.add_many(keys[i * per_node : (i + 1) * per_node])
        for sender in senders:
            assert sender.audit.flush(120)
        spread = time.perf_counter() - t0
        print(
            f"4 nodes x {per_node:,} new addresses each -> manager, flushed: {spread:.2f} s"
            f" ({len(keys) / spread / 1e3:.0f}k addresses/s end to end)"
        )
        local = AuditSeries("conn", window_seconds=300, windows=6)
        local.add_many(keys)
        total = local.count("0.0.0.0/0")
        assert manager.series.count("0.0.0.0/0") == total
        # On the manager the merged series is an ordinary AuditSeries: same cost as local.
        probe = keys[5]
        slash24 = format_address(probe >> 8 << 8, KeyFamily.IPV4) + "/24"
        series = manager.series
        us_merged = per_call_us(lambda: series.count(slash24), 20_000)
        us_local = per_call_us(lambda: local.count(slash24), 20_000)
        print(
            f"manager count /24 over {len(keys):,} addresses from 4 nodes: "
            f"{us_merged:.2f} us (a local series with the same data: {us_local:.2f} us)"
        )
        # A manager restart: every live node refills the new one with a snapshot.
        manager.stop()
        t0 = time.perf_counter()
        nodes[0] = manager = ClusterNode(zk, "m", listen=True, interval=0.5)
        while manager.series.count("0.0.0.0/0") < total:
            time.sleep(0.005)
        print(
            f"manager restart -> refilled by 4 snapshots ({len(keys):,} addresses): "
            f"{time.perf_counter() - t0:.2f} s (including its ZooKeeper join)"
        )
    finally:
        for node in nodes:
            node.stop()


def bench_cluster(quick: bool) -> None:
    from mhafail.testing import ZooKeeperServer

    print("\n## cluster-wide series (1 manager + 4 sender nodes in one process, loopback TCP)")
    zk = ZooKeeperServer(tick_time=100).start()
    try:
        for interval in (0.5, 0.1):
            bench_propagation(zk.address, interval, 15 if quick else 60)
        bench_manager(zk.address, 25_000 if quick else 100_000)
        bench_batch_cost(quick)
    finally:
        zk.cleanup()


def bench_batch_cost(quick: bool) -> None:
    from mhafail.audit import IncrementBatch, Origin
    from mhafail.audit._wire import encode_frame

    n = 10_000
    rng = random.Random(4)
    keys = rng.sample(range(BASE, BASE + (1 << 24)), n)
    rounds = 5 if quick else 20
    encode = decode = merge = 0.0
    size = 0
    for r in range(rounds):
        sender = AuditSeries("conn", export_increments=True)
        receiver = AuditSeries("conn")
        sender.add_many(keys)
        batch = sender.take_batch(Origin("n0", r))
        assert batch is not None
        t0 = time.perf_counter()
        frame = encode_frame({"items": [{"snapshot": False, "batch": batch.to_json()}]})
        t1 = time.perf_counter()
        wire = json.loads(frame[4:])["items"][0]["batch"]
        decoded = IncrementBatch.from_json(wire)
        t2 = time.perf_counter()
        receiver.merge(decoded)
        t3 = time.perf_counter()
        encode += t1 - t0
        decode += t2 - t1
        merge += t3 - t2
        size = len(frame)
    per = 1e6 / (rounds * n)
    print(
        f"batch of {n:,} distinct addresses: {size / n:.1f} bytes/address on the wire; "
        f"encode {encode * per:.2f} us, decode {decode * per:.2f} us, "
        f"merge {merge * per:.2f} us per address"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--cluster-only", action="store_true", help="only the cluster section")
    parser.add_argument("--count-only", action="store_true", help="only the count latency section")
    args = parser.parse_args()
    if args.cluster_only:
        bench_cluster(args.quick)
        return
    n_distinct = 200_000 if args.quick else 1_000_000
    rng = random.Random(0)
    distinct = rng.sample(range(BASE, BASE + (1 << 24)), n_distinct)
    if args.count_only:
        bench_count(distinct)
        return
    n_events = 200_000 if args.quick else 1_000_000
    bench_add(n_events, distinct)  # nearly every event a new address: the worst case
    bench_add(n_events, distinct[:10_000])  # repeat visitors, as an MTA mostly sees
    bench_count(distinct)
    bench_query(3 if args.quick else 30, 50 if args.quick else 200)
    bench_cluster(args.quick)


if __name__ == "__main__":
    main()
