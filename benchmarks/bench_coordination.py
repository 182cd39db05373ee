"""Coordination benchmark: ZooKeeper start, connect time, membership propagation.

    python benchmarks/bench_coordination.py [--quick]

Prints one line per figure. Membership propagation: with 4 members live, a
5th joins (or leaves gracefully); the latency is the time from the
action until every other member's view shows the change, p50/p99 over
the trials.
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

from mhafail.coordination import ClusterView, Coordinator, Membership, NodeInfo
from mhafail.testing import ZooKeeperServer


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(v: float) -> str:
    return f"{v * 1000:.1f} ms"


def bench_start(trials: int) -> None:
    times = []
    for _ in range(trials):
        t0 = time.monotonic()
        server = ZooKeeperServer(tick_time=100).start()
        times.append(time.monotonic() - t0)
        server.cleanup()
    print(
        f"zookeeper launcher start (ready for clients): p50 {ms(statistics.median(times))}"
        f"  max {ms(max(times))}  (n={trials})"
    )


def bench_connect(zk: ZooKeeperServer, trials: int) -> None:
    times = []
    for _ in range(trials):
        t0 = time.monotonic()
        c = Coordinator(
            hosts=zk.address, cluster="bench-connect", session_timeout=2, open_acl=True
        ).start()
        times.append(time.monotonic() - t0)
        c.stop()
    print(
        f"coordinator connect (session + root + valid lease): p50 {ms(statistics.median(times))}"
        f"  p99 {ms(pct(times, 0.99))}  (n={trials})"
    )


class Watcher:
    """Records when a member's view first satisfies a predicate."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.views: list[tuple[float, ClusterView]] = []

    def __call__(self, view: ClusterView) -> None:
        with self.cond:
            self.views.append((time.monotonic(), view))
            self.cond.notify_all()

    def first(self, pred: object, after: float, timeout: float = 10) -> float:
        end = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, v in self.views:
                    if t >= after and pred(v):  # type: ignore[operator]
                        return t
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("view never changed")
                self.cond.wait(left)


def bench_propagation(zk: ZooKeeperServer, trials: int) -> None:
    cluster = f"bench-members-{os.getpid()}"
    coordinators = [
        Coordinator(hosts=zk.address, cluster=cluster, session_timeout=2, open_acl=True).start()
        for _ in range(5)
    ]
    watchers = [Watcher() for _ in range(4)]
    members = []
    for i, (c, w) in enumerate(zip(coordinators, watchers, strict=False)):
        m = Membership(coordinator=c, info=NodeInfo(name=f"n{i}", pid=os.getpid()), refresh=60)
        m.add_listener(w)
        members.append(m.start())
    members[0].wait_for(lambda v: len(v) == 4, 10)
    joins, leaves = [], []
    for _ in range(trials):
        t0 = time.monotonic()
        m5 = Membership(
            coordinator=coordinators[4], info=NodeInfo(name="n4", pid=os.getpid()), refresh=60
        ).start()
        joins.append(max(w.first(lambda v: "n4" in v, t0) for w in watchers) - t0)
        t0 = time.monotonic()
        m5.stop()
        leaves.append(max(w.first(lambda v: "n4" not in v, t0) for w in watchers) - t0)
    for m in members:
        m.stop()
    for c in coordinators:
        c.stop()
    print(
        f"membership propagation, 5 members, join : p50 {ms(statistics.median(joins))}"
        f"  p99 {ms(pct(joins, 0.99))}  (n={trials})"
    )
    print(
        f"membership propagation, 5 members, leave: p50 {ms(statistics.median(leaves))}"
        f"  p99 {ms(pct(leaves, 0.99))}  (n={trials})"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="few trials, for a smoke run")
    args = parser.parse_args()
    bench_start(2 if args.quick else 5)
    with ZooKeeperServer(tick_time=100) as zk:
        bench_connect(zk, 5 if args.quick else 50)
        bench_propagation(zk, 5 if args.quick else 100)


if __name__ == "__main__":
    main()
