"""Benchmark mhafail.spool: put rates beside a plain maildir writer, and takeover time.

Run ``python benchmarks/bench_spool.py`` (``--quick`` for a short smoke run).
Needs ZooKeeper (Debian's ``zookeeper`` package) for the fenced spool and
the takeover; everything is written to one temporary directory on the
local disk, so every writer shares the same file system.

Put rates (messages of ``--size`` bytes, ``--clients`` concurrent threads):

* maildir: the classic writer: write to ``tmp/``, fsync, rename into
  ``new/``. Without an fsync of the directory the rename may not survive a
  power loss, so it is shown both ways; "+ dir fsync" is the durability
  the spool gives.
* spool, fsync per message: ``Spool(group_commit=False)``.
* spool, group commit: ``Spool(group_commit=True)`` (the default).

Takeover: a node holds ``--takeover`` messages; its session is closed (the
server expires it at once) and a survivor with ``grace=0`` takes the
spool over. The figure is from the close to the survivor's "complete".
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.spool import (
    Envelope,
    EventKind,
    NodePaths,
    Spool,
    SpoolLock,
    Takeover,
    TakeoverEvent,
)
from mhafail.testing import ZooKeeperServer

ENV = Envelope(sender="bench@example.org", recipients=("rcpt@example.net",))


def maildir_put(root: Path, data: bytes, *, dir_fsync: bool) -> None:
    """One maildir delivery: tmp, fsync, rename (and optionally fsync new/)."""
    name = f"{time.time_ns()}.{secrets.token_hex(4)}"
    tmp = root / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, root / "new" / name)
    if dir_fsync:
        dfd = os.open(root / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def rate(put: object, count: int, clients: int) -> float:
    """Messages per second for ``count`` calls of ``put()`` from ``clients`` threads."""
    call = put  # a zero-argument callable
    start = time.perf_counter()
    if clients == 1:
        for _ in range(count):
            call()  # type: ignore[operator]
    else:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(lambda _: call(), range(count)))  # type: ignore[operator]
    return count / (time.perf_counter() - start)


def coordinator(zk: ZooKeeperServer, cluster: str) -> Coordinator:
    """A started open coordinator with a short session."""
    return Coordinator(
        hosts=zk.address, cluster=cluster, session_timeout=2.0, server_tick=0.1, open_acl=True
    ).start()


def bench_puts(work: Path, zk: ZooKeeperServer, count: int, size: int, clients: int) -> None:
    """Print the put rates side by side."""
    data = os.urandom(size)
    rows: list[tuple[str, int, float]] = []
    for dir_fsync in (False, True):
        for threads in sorted({1, clients}):
            md = work / f"maildir-{dir_fsync}-{threads}"
            for sub in ("tmp", "new", "cur"):
                (md / sub).mkdir(parents=True)
            label = "maildir (tmp, fsync, rename" + (", dir fsync)" if dir_fsync else ")")
            r = rate(lambda md=md, d=dir_fsync: maildir_put(md, data, dir_fsync=d), count, threads)
            rows.append((label, threads, r))
    c = coordinator(zk, "benchputs")
    try:
        for group in (False, True):
            (work / f"san-{group}").mkdir()
            paths = NodePaths(work / f"san-{group}", "benchputs", f"n{int(group)}").create()
            lock = SpoolLock(coordinator=c, paths=paths)
            lock.acquire(10)
            spool = Spool(directory=paths.spool, node=paths.node, fence=lock, group_commit=group)
            spool.open()
            label = "spool, group commit" if group else "spool, fsync per message"
            for threads in sorted({1, clients}):
                r = rate(lambda s=spool: s.put(ENV, data), count, threads)
                rows.append((label, threads, r))
            spool.close()
            lock.release()
    finally:
        c.stop()
    base = {t: r for label, t, r in rows if label.startswith("maildir (tmp, fsync, rename, dir")}
    print(f"\nput of {size}-byte messages, {count} per row, same disk ({work})")
    print(f"{'writer':<44} {'clients':>7} {'msg/s':>10} {'x maildir+dir fsync':>20}")
    for label, threads, r in rows:
        print(f"{label:<44} {threads:>7} {r:>10.0f} {r / base[threads]:>19.1f}x")


def bench_takeover(work: Path, zk: ZooKeeperServer, count: int) -> None:
    """Print the time from a holder's session end to a survivor's completed takeover."""
    root = work / "san-takeover"
    root.mkdir()
    cluster = f"benchtake{secrets.token_hex(3)}"
    dead_c = coordinator(zk, cluster)
    dead_paths = NodePaths(root, cluster, "dead").create()
    dead_lock = SpoolLock(coordinator=dead_c, paths=dead_paths)
    dead_lock.acquire(10)
    dead = Spool(directory=dead_paths.spool, node="dead", fence=dead_lock).open()
    data = os.urandom(4096)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda _: dead.put(ENV, data), range(count)))
    dead.close()
    dead_m = Membership(coordinator=dead_c, info=NodeInfo(name="dead")).start()

    c = coordinator(zk, cluster)
    m = Membership(coordinator=c, info=NodeInfo(name="survivor")).start()
    paths = NodePaths(root, cluster, "survivor").create()
    lock = SpoolLock(coordinator=c, paths=paths)
    lock.acquire(10)
    spool = Spool(directory=paths.spool, node="survivor", fence=lock).open()
    takeover = Takeover(
        coordinator=c, membership=m, paths=paths, spool=spool, lock=lock, grace=0.0, step=0.0
    )
    done = threading.Event()
    marks: dict[str, float] = {}

    def on_event(event: TakeoverEvent) -> None:
        marks.setdefault(event.kind.value, time.perf_counter())
        if event.kind is EventKind.COMPLETE:
            marks["moved"] = event.moved
            done.set()

    takeover.add_listener(on_event)
    takeover.start()
    time.sleep(0.5)
    dead_m.stop()
    start = time.perf_counter()
    dead_c.stop()  # the session ends at once: the server drops its ephemerals
    done.wait(60)
    end = marks.get("complete", float("nan"))
    print(f"\ntakeover of {count} messages (4 KiB each), grace 0, one survivor")
    print(f"  session end -> takeover started : {marks.get('started', float('nan')) - start:.3f} s")
    print(f"  session end -> takeover complete: {end - start:.3f} s")
    print(f"  messages moved                  : {int(marks.get('moved', 0))}")
    takeover.stop()
    spool.close()
    lock.release()
    m.stop()
    c.stop()


def main() -> None:
    """Run the spool benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--takeover", type=int, default=10000)
    args = parser.parse_args()
    if args.quick:
        args.count, args.takeover = 200, 1000
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs")
    zk = ZooKeeperServer(tick_time=100).start()
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            bench_puts(Path(tmp), zk, args.count, args.size, args.clients)
            bench_takeover(Path(tmp), zk, args.takeover)
    finally:
        zk.cleanup()


if __name__ == "__main__":
    main()
