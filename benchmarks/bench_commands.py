"""Benchmark mhafail.commands: broadcast round trip to 10 nodes, beside a naive baseline.

Run ``python benchmarks/bench_commands.py`` (``--quick`` for a short smoke run).
A real ZooKeeper server (from the testing kit) and 10 node processes run on
this machine. Each node process runs a ``CommandAgent`` with the built-ins
and, for the baseline, a plain TCP server that answers ``ping`` lines.

* Broadcast round trip: ``CommandClient.broadcast("ping")`` then ``wait``
  until all 10 replies are in ZooKeeper; p50/p99 over the rounds.
* Baseline, in the same run, alternating with the broadcasts: a fresh TCP
  connection to each node in turn, one ``ping`` line, one answer line
  (no authentication, no durability, no run-once marker).
* Requests/s: ``--concurrent`` broadcasts sent at once from threads; the
  figure is broadcasts completed (all 10 replies) per second.
* ``--profile``: every node records each step of each request with
  ``CommandAgent(trace=...)`` (monotonic clock, shared by the processes of
  one machine); the summary then gives, per step, the median and p99 time
  since the manager began the broadcast, over all nodes and rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from mhafail.testing import ZooKeeperServer


def node_main(args: argparse.Namespace) -> int:
    """One node: an agent with the built-ins and a naive TCP ping server."""
    import signal

    profiles = start_cprofile() if args.cprofile else None

    from mhafail.commands import CommandAgent, register_builtins
    from mhafail.coordination import Coordinator, Membership, NodeInfo

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    coordinator = Coordinator(hosts=args.zk, cluster=args.cluster, open_acl=True).start()
    membership = Membership(coordinator=coordinator, info=NodeInfo(name=args.node)).start()
    steps: list[tuple[str, str, float]] = []
    agent = CommandAgent(
        coordinator=coordinator,
        node=args.node,
        state_dir=args.state_dir,
        trace=(lambda step, rid, at: steps.append((step, rid, at))) if args.profile else None,
    )
    register_builtins(agent, membership=membership)
    agent.start()
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while not stop.is_set():
            conn, _ = server.accept()
            with conn, conn.makefile("rwb") as stream:
                if stream.readline().strip() == b"ping":
                    stream.write(json.dumps({"pong": args.node}).encode() + b"\n")
                    stream.flush()

    threading.Thread(target=serve, daemon=True).start()
    print(json.dumps({"ready": args.node, "port": server.getsockname()[1]}), flush=True)
    stop.wait()
    if args.profile:
        threads = {}
        for thread in threading.enumerate():
            if thread.native_id is not None:
                threads[thread.name] = round(cpu_seconds(os.getpid(), thread.native_id), 2)
        threads["(process)"] = round(cpu_seconds(os.getpid()), 2)
        Path(args.state_dir, "threads.json").write_text(json.dumps(threads))
    agent.stop()
    membership.stop()
    coordinator.stop()
    if args.profile:
        Path(args.state_dir, "trace.json").write_text(json.dumps(steps))
    if profiles is not None:
        save_cprofile(profiles, Path(args.state_dir, "cprofile.txt"))
    return 0


def start_cprofile() -> list[Any]:
    """Profile every thread started from now on (``--cprofile``; not the main thread, which
    only starts the node); returns the profiles."""
    import cProfile

    profiles: list[Any] = []
    run = threading.Thread.run

    def profiled(self: threading.Thread) -> None:
        profile = cProfile.Profile(time.thread_time)  # CPU, not waiting
        profiles.append(profile)
        profile.enable()
        try:
            run(self)
        finally:
            profile.disable()

    threading.Thread.run = profiled  # type: ignore[method-assign]
    return profiles


def save_cprofile(profiles: list[Any], path: Path) -> None:
    """Write the merged profiles of all threads, by own time, to ``path``."""
    import io
    import pstats

    out = io.StringIO()
    stats = pstats.Stats(profiles[0], stream=out)
    for profile in profiles[1:]:
        stats.add(profile)
    stats.sort_stats("tottime").print_stats(45)
    stats.sort_stats("cumulative").print_stats(60)
    path.write_text(out.getvalue())


def naive_round(ports: list[int]) -> float:
    """Sequential TCP requests to each node; seconds for all."""
    began = time.perf_counter()
    for port in ports:
        with socket.create_connection(("127.0.0.1", port)) as conn, conn.makefile("rwb") as s:
            s.write(b"ping\n")
            s.flush()
            if not s.readline():
                raise RuntimeError(f"no answer from port {port}")
    return time.perf_counter() - began


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank), in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """User plus system CPU time of a process (or one of its threads) so far (Linux /proc)."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    fields = Path(path).read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    client: Any,
    ports: list[int],
    args: argparse.Namespace,
    began_at: dict[str, list[float]],
    pids: dict[str, list[int]],
) -> dict[str, Any]:
    """Round trips beside the naive baseline, then concurrent broadcasts."""
    client.wait(client.broadcast("ping"), 10)  # warm up
    broadcast: list[float] = []
    naive: list[float] = []
    cpu_before = {k: sum(cpu_seconds(p) for p in v) for k, v in pids.items()}
    for _ in range(args.rounds):
        began = time.monotonic()
        rid = client.broadcast("ping", keep=60)
        sent = time.monotonic()
        result = client.wait(rid, 10)
        done = time.monotonic()
        broadcast.append(done - began)
        began_at[rid] = [began, sent, done]
        if len(result.replies) != args.nodes:
            raise RuntimeError(f"incomplete broadcast: {result}")
        naive.append(naive_round(ports))
    cpu = {
        k: round(1000 * (sum(cpu_seconds(p) for p in v) - cpu_before[k]) / args.rounds, 1)
        for k, v in pids.items()
    }
    ids: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        rid = client.broadcast("ping", keep=60)
        if not client.wait(rid, 60).complete:
            raise RuntimeError(f"incomplete broadcast {rid}")
        with lock:
            ids.append(rid)

    began = time.perf_counter()
    threads = [threading.Thread(target=one) for _ in range(args.concurrent)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    summary = {
        "nodes": args.nodes,
        "rounds": args.rounds,
        "broadcast_p50_ms": round(pct(broadcast, 50), 1),
        "broadcast_p99_ms": round(pct(broadcast, 99), 1),
        "broadcast_mean_ms": round(statistics.mean(broadcast) * 1000, 1),
        "naive_tcp_p50_ms": round(pct(naive, 50), 2),
        "naive_tcp_p99_ms": round(pct(naive, 99), 2),
        "concurrent_broadcasts": len(ids),
        "broadcasts_per_s": round(len(ids) / elapsed, 1),
        "node_requests_per_s": round(len(ids) * args.nodes / elapsed, 1),
        "cpu_ms_per_round": cpu,
    }
    return summary


STEPS = ("sent", "pass", "seen", "marked", "claimed", "started", "done", "replied", "gathered")


def profile(began_at: dict[str, list[float]], state_dirs: list[Path]) -> dict[str, Any]:
    """Per step, median and p99 ms since the broadcast began (all nodes, all rounds)."""
    since: dict[str, list[float]] = {step: [] for step in STEPS}
    for began, sent, done in began_at.values():
        since["sent"].append(sent - began)
        since["gathered"].append(done - began)
    for directory in state_dirs:
        path = directory / "trace.json"
        if not path.exists():
            continue
        for step, rid, at in json.loads(path.read_text()):
            if rid in began_at and step in since:
                since[step].append(at - began_at[rid][0])
    return {
        step: {"p50_ms": round(pct(v, 50), 1), "p99_ms": round(pct(v, 99), 1)}
        for step, v in since.items()
        if v
    }


def main() -> int:
    """Run the benchmark; print a JSON summary."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--node-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zk")
    parser.add_argument("--cluster", default="bench")
    parser.add_argument("--node")
    parser.add_argument("--state-dir")
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--profile", action="store_true", help="per-step timestamps")
    parser.add_argument(
        "--cprofile", metavar="FILE", help="cProfile every thread of node n0; write it to FILE"
    )
    args = parser.parse_args()
    if args.node_process:
        return node_main(args)
    if args.quick:
        args.rounds, args.concurrent = 40, 20

    from mhafail.commands import CommandClient
    from mhafail.coordination import Coordinator

    server = ZooKeeperServer().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            ports = []
            dirs = [Path(tmp) / f"n{i}" for i in range(args.nodes)]
            for i, state_dir in enumerate(dirs):
                proc = subprocess.Popen(
                    [sys.executable, __file__, "--node-process", "--zk", server.address,
                     "--cluster", args.cluster, "--node", f"n{i}",
                     "--state-dir", str(state_dir)] + (["--profile"] if args.profile else [])
                    + (["--cprofile", "1"] if args.cprofile and i == 0 else []),
                    stdout=subprocess.PIPE,
                )  # fmt: skip
                procs.append(proc)
            for proc in procs:
                assert proc.stdout is not None
                ports.append(json.loads(proc.stdout.readline())["port"])
            began_at: dict[str, list[float]] = {}
            with Coordinator(hosts=server.address, cluster=args.cluster, open_acl=True) as c:
                assert server.pid is not None
                pids = {
                    "nodes": [p.pid for p in procs],
                    "zookeeper": [server.pid],
                    "manager": [os.getpid()],
                }
                summary = measure(CommandClient(coordinator=c), ports, args, began_at, pids)
            stop_all(procs)
            if args.cprofile:
                Path(args.cprofile).write_text((dirs[0] / "cprofile.txt").read_text())
            if args.profile:
                summary["steps_since_broadcast"] = profile(began_at, dirs)
                summary["node_n0_thread_cpu_s"] = json.loads((dirs[0] / "threads.json").read_text())
            print(json.dumps(summary, indent=2))
    finally:
        stop_all(procs)
        server.cleanup()
    return 0


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM the node processes and wait for them (idempotent)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


if __name__ == "__main__":
    raise SystemExit(main())
