"""Benchmark mhafail.logs: end-to-end throughput and append-to-durable latency.

Run ``python benchmarks/bench_logs.py`` (``--quick`` for a short smoke run).
A real ZooKeeper server (from the testing kit) and three node processes
(``mhafail logs serve``) run on this machine; the manager (a
``LogAggregator``) runs in this process so it can time every commit.

* Throughput: each node's jlog is filled with 200-byte records first, then
  the manager starts and pulls everything; records/s = all records / time
  until the last one is durable (fsynced, state saved) on the manager.
* Every connection is authenticated with a shared secret (per-frame MACs);
  ``--no-secret`` measures the unauthenticated loopback mode instead.
* Latency: three writer processes append at a steady rate per node (default
  5,000 records/s each); latency = time the commit holding a record was
  saved on the manager - the record's jlog write time. p50/p99 reported.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.jlog import Jlog
from mhafail.logs import Commit, LogAggregator, ensure_log
from mhafail.testing import ZooKeeperServer

NODES = ("n1", "n2", "n3")
PAYLOAD = 200


def _payload(node: str, seq: int) -> bytes:
    head = f"{node} {seq:010d} {time.time():.6f} ".encode()
    return head + b"x" * (PAYLOAD - len(head))


def writer_main(path: str, rate: int, seconds: float) -> None:
    """Child mode: append ``rate`` records/s to ``path`` for ``seconds`` (10 ms ticks)."""
    node = Path(path).parent.name
    with Jlog.open(path).writer() as writer:
        start = time.monotonic()
        seq = 0
        while (now := time.monotonic()) - start < seconds:
            due = int((now - start) * rate)
            if due > seq:
                writer.write_many([_payload(node, i) for i in range(seq, due)])
                seq = due
            time.sleep(0.005)
    print(seq)


# Shared secret for nodes and manager (None: unauthenticated loopback mode).
AUTH: dict[str, bytes | None] = {"secret": b"bench-logs-shared-secret-0123"}


def _auth_args(root: Path) -> list[str]:
    secret = AUTH["secret"]
    if secret is None:
        return ["--allow-unauthenticated"]
    path = root / "secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(secret)
    path.chmod(0o600)
    return ["--secret-file", str(path)]


def _start_nodes(zk: str, cluster: str, root: Path) -> list[subprocess.Popen[bytes]]:
    procs = []
    auth = _auth_args(root)
    for node in NODES:
        argv = [
            sys.executable, "-m", "mhafail", "logs", "serve", "--zk", zk, "--cluster", cluster,
            "--node", node, "--log", f"mainlog={root / node / 'mainlog'}", "--manager", "bench",
            "--session-timeout", "2", "--zk-open", *auth,
        ]  # fmt: skip
        procs.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert json.loads(line)["event"] == "ready", line
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


class Manager:
    """An in-process aggregator with its own coordinator and membership."""

    def __init__(self, zk: str, cluster: str, base: Path) -> None:
        self.commits: list[Commit] = []
        self.lock = threading.Lock()
        self.coordinator = Coordinator(
            hosts=zk, cluster=cluster, session_timeout=2, open_acl=True
        ).start()
        self.membership = Membership(
            coordinator=self.coordinator, info=NodeInfo(name="bench-manager")
        ).start()
        self.aggregator = LogAggregator(
            coordinator=self.coordinator,
            membership=self.membership,
            name="bench",
            base=base,
            secret=AUTH["secret"],
            on_commit=self._on_commit,
        )

    def _on_commit(self, commit: Commit) -> None:
        with self.lock:
            self.commits.append(commit)

    def records(self) -> int:
        return sum(s.records for s in self.aggregator.status())

    def close(self) -> None:
        self.aggregator.stop()
        self.membership.stop()
        self.coordinator.stop()


def bench_throughput(zk: str, root: Path, per_node: int) -> float:
    """Records/s from three pre-filled nodes into one manager, durable on arrival."""
    cluster = f"tp{os.getpid()}"
    for node in NODES:
        jlog = ensure_log(root / cluster / node / "mainlog", ["bench"])
        with jlog.writer() as writer:
            for start in range(0, per_node, 1000):
                n = min(1000, per_node - start)
                writer.write_many([_payload(node, start + i) for i in range(n)])
    nodes = _start_nodes(zk, cluster, root / cluster)
    try:
        manager = Manager(zk, cluster, root / cluster / "out")
        try:
            start = time.perf_counter()
            manager.aggregator.start()
            total = per_node * len(NODES)
            while manager.records() < total:
                time.sleep(0.01)
            elapsed = time.perf_counter() - start
        finally:
            manager.close()
    finally:
        _stop(nodes)
    return total / elapsed


def bench_latency(zk: str, root: Path, rate: int, seconds: float) -> tuple[float, float, int]:
    """p50 and p99 append-to-durable latency (ms) at ``rate`` records/s per node."""
    cluster = f"lat{os.getpid()}"
    nodes = _start_nodes(zk, cluster, root / cluster)
    try:
        manager = Manager(zk, cluster, root / cluster / "out")
        try:
            manager.aggregator.start()
            while len(manager.aggregator.status()) < len(NODES):
                time.sleep(0.05)
            writers = []
            for n in NODES:
                argv = [sys.executable, __file__, "--writer", str(root / cluster / n / "mainlog")]
                argv += [str(rate), str(seconds)]
                writers.append(subprocess.Popen(argv, stdout=subprocess.PIPE))
            written = 0
            for proc in writers:
                out, _ = proc.communicate(seconds + 60)
                written += int(out)
            while manager.records() < written:
                time.sleep(0.01)
        finally:
            manager.close()
    finally:
        _stop(nodes)
    latencies = sorted((c.durable_at - t) * 1000 for c in manager.commits for t in c.times)
    return (
        latencies[len(latencies) // 2],
        latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        len(latencies),
    )


def main() -> None:
    """Run the benchmarks and print the figures."""
    if len(sys.argv) == 5 and sys.argv[1] == "--writer":
        writer_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--rate", type=int, default=5000, help="records/s per node for latency")
    parser.add_argument("--no-secret", action="store_true", help="unauthenticated loopback mode")
    args = parser.parse_args()
    if args.no_secret:
        AUTH["secret"] = None
    per_node = 20_000 if args.quick else 200_000
    seconds = 3.0 if args.quick else 20.0
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus, {PAYLOAD}-byte records")
    print(
        "authentication:", "none (loopback opt-in)" if AUTH["secret"] is None else "shared secret"
    )
    zk = ZooKeeperServer(tick_time=100).start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-logs-", dir="/var/tmp") as tmp:
            root = Path(tmp)
            rate = bench_throughput(zk.address, root, per_node)
            print(f"throughput, 3 nodes -> 1 manager: {rate:,.0f} records/s ({per_node:,}/node)")
            p50, p99, n = bench_latency(zk.address, root, args.rate, seconds)
            print(
                f"latency at {args.rate:,} records/s per node ({n:,} records): "
                f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
    finally:
        zk.cleanup()


if __name__ == "__main__":
    main()
