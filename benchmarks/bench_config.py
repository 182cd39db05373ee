"""Config replication benchmark: commit -> applied on every node, and memory per node.

Starts its own ZooKeeper (tickTime 100 ms) and N real node processes
(``mhafail config agent``), seeds a repository of ~1 MB over ~200 files,
then measures, for each commit changing one file, the time from calling
``commit()`` until every node's ``applied`` znode reports the new sha.
Memory is the resident set of each node process plus its git daemon.

    python benchmarks/bench_config.py            # 3 and 5 nodes, 40 commits each
    python benchmarks/bench_config.py --quick    # 3 nodes, 10 commits
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mhafail.config import ConfigRepository, NodeReport
from mhafail.coordination import Coordinator, Znode
from mhafail.testing import ZooKeeperServer
from mhafail.testing._children import reap, spawn

REPO = "mta"
AUTHOR = "Bench <bench@example.org>"


def _rss_kib(pid: int) -> int:
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _seed(size_files: int, total_bytes: int) -> dict[str, bytes | None]:
    rng = random.Random(1)
    per = total_bytes // size_files
    changes: dict[str, bytes | None] = {}
    for i in range(size_files):
        layer = ("global", "default", "n1")[i % 3]
        body = "".join(f"key_{j} = {rng.randrange(10**9)}\n" for j in range(per // 20))
        changes[f"{layer}/conf{i:03}.toml"] = body.encode()[:per]
    return changes


def run(nodes: int, commits: int, zk: ZooKeeperServer, workdir: Path) -> dict[str, float]:
    """Run one configuration and return its figures."""
    cluster = f"bench{nodes}_{os.getpid()}"
    procs = []
    names = [f"n{i + 1}" for i in range(nodes)]
    for name in names:
        log = open(workdir / f"{cluster}-{name}.out", "wb")  # noqa: SIM115 - closed below
        argv = [
            sys.executable, "-m", "mhafail", "config", "agent", "--zk", zk.address,
            "--cluster", cluster, "--node", name, "--dir", str(workdir / cluster / name),
            "--repo", REPO, "--session-timeout", "2",
        ]  # fmt: skip
        procs.append((spawn(argv, stdout=log, stderr=subprocess.STDOUT), log))
    coordinator = Coordinator(
        hosts=zk.address, cluster=cluster, session_timeout=2.0, open_acl=True
    ).start()
    try:
        deadline = time.monotonic() + 30
        while len(coordinator.znodes.children("members") or []) < nodes:
            if time.monotonic() > deadline:
                raise SystemExit("nodes did not start")
            time.sleep(0.05)
        repo = ConfigRepository(
            name=REPO, base=workdir / cluster / "n1", node="n1", coordinator=coordinator
        )
        applied: dict[str, str | None] = {}
        cond = threading.Condition()

        def watcher(name: str) -> None:
            def on(node: Znode | None) -> None:
                if node is not None:
                    report = NodeReport.from_json(name, node.data)
                    with cond:
                        applied[name] = report.sha if report.state.value == "applied" else None
                        cond.notify_all()

            coordinator.znodes.watch_data(f"config/{REPO}/applied/{name}", on)

        for name in names:
            watcher(name)

        def wait_all(sha: str) -> None:
            with cond:
                if not cond.wait_for(lambda: all(applied.get(n) == sha for n in names), 60):
                    raise SystemExit(f"not applied everywhere: {applied}")

        seed = repo.commit(_seed(200, 1 << 20), message="seed", author=AUTHOR)
        wait_all(seed.sha)
        latencies = []
        for i in range(commits):
            path = f"global/conf{(i * 3) % 200:03}.toml"
            t0 = time.monotonic()
            commit = repo.commit(
                {path: f"changed = {i}\n".encode()}, message=f"c{i}", author=AUTHOR
            )
            wait_all(commit.sha)
            latencies.append(time.monotonic() - t0)
        rss = [_rss_kib(p.pid) for p, _ in procs]
    finally:
        coordinator.stop()
        for proc, log in procs:
            reap(proc)
            log.close()
    latencies.sort()
    return {
        "nodes": nodes,
        "commits": commits,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "max_ms": latencies[-1] * 1000,
        "rss_mib_per_node": statistics.mean(rss) / 1024,
    }


def main() -> int:
    """Run the benchmark and print one line per configuration."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="3 nodes, 10 commits")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configs = [(3, 10)] if args.quick else [(3, 40), (5, 40)]
    zk = ZooKeeperServer(tick_time=100).start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="mhafail-bench-config-") as tmp:
            for nodes, commits in configs:
                results.append(run(nodes, commits, zk, Path(tmp)))
    finally:
        zk.cleanup()
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['nodes']} nodes, {r['commits']} commits (repo ~1 MB / 200 files): "
                f"commit->applied everywhere p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
                f"max {r['max_ms']:.0f} ms; RSS per node (agent + git daemon) "
                f"{r['rss_mib_per_node']:.1f} MiB"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
