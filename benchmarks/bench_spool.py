"""Benchmark mhafail.spool: put rates beside a plain maildir writer, and takeover time.

Run ``python benchmarks/bench_spool.py`` (``--quick`` for a short smoke run).
Needs ZooKeeper (Debian's ``zookeeper`` package) for the fenced spool and
the takeover; everything is written to one temporary directory on the
local disk, so every writer shares the same file system.

Put rates (messages of ``--size`` bytes, ``--clients`` concurrent threads,
``--runs`` times; every row writes the same data with the same number of
threads, each into a fresh directory):

* maildir: the classic writer: write to ``tmp/``, fsync, rename into
  ``new/``. Without an fsync of the directory the rename may not survive a
  power loss, so it is shown both ways; "fsync dir" is the durability the
  spool gives (an acknowledged message survives a power loss), and the
  baseline of the ratios, at the same number of clients.
* spool, fsync per message: ``Spool(group_commit=False)``.
* spool, group commit: ``Spool(group_commit=True)`` (the default): the
  commit log; each acknowledged message is as durable as with "fsync dir".
  Shown twice: the rate of acknowledgements, and the same run counting
  the spool's close, which files every message still in the log only
  (a message delivered before its segment is checkpointed never gets a
  file; here none is delivered) and retires the log.

Asyncio (an aiosmtpd server's shape): ``--clients`` tasks on one event
loop; the spool's ``aput`` against the durable maildir writer run in a
thread pool of as many threads, and against the same writer from as many
plain threads (its best rate), measured in each run one after the other.

Every put row is run ``--warmup`` times (default 1) before the counted
runs: a process's first run pays for memory touched for the first time.

Takeover: a node holds ``--takeover`` messages; it leaves the membership,
then its session is closed (the server drops its ephemerals at once) and a
survivor with ``grace=0`` takes the spool over. Shown per phase, from the
session end: to the survivor's "started" (lock and lock file taken), to its
commit log adopted, to "complete". Once with the holder's spool closed,
then ``--takeover-runs`` times with the holder crashed (spool not closed).
``--only-takeover`` skips the put rates.

Thread driver: every threaded row (maildir and spool alike) runs
``--clients`` plain threads, each looping over its share of the puts, as
an MTA's session threads would; until session 5 a thread pool with one
submit per message (its queue and futures cost a hand-off per put that
was the benchmark's, not the writer's).

``--bound`` (alone, no ZooKeeper): the spool's thread pattern with no
spool in it: ``--clients`` threads each doing some Python work per put,
then blocking on a lock of their own that one committer thread releases
after one ``pwrite`` and one ``fdatasync`` per batch. What CPython threads
allow on this machine, for the threaded put rows. Beside it, two other
designs with the same work per put: (a) each caller ``pwrite``s its own
record under the lock and waits on a condition that the committer
notifies once per ``fdatasync``; and no committer at all, each caller
writing then calling ``fdatasync`` itself.

``--procs N`` (alone): the durable maildir writer and the group-commit
spool with the ``--clients`` threads split over N processes (spawned),
the spool as one node per process (its own directory, lock and session):
a spool shard per process. Same threads in all, same disk, same messages.

Fairness, every put row: the same number of client threads for the
maildir writer and the spool, the same messages (``--size`` random bytes,
one envelope), one temporary directory on the same file system, and the
same durability when a put returns (the message survives a power loss).
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import secrets
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

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
from mhafail.spool._wal import logged as wal_logged
from mhafail.testing import ZooKeeperServer

ENV = Envelope(sender="bench@example.org", recipients=("rcpt@example.net",))


def maildir_put(root: Path, data: bytes, *, dir_fsync: bool) -> Path:
    """One maildir delivery: tmp, fsync, rename (and optionally fsync new/); the file."""
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
    return root / "new" / name


def new_maildir(path: Path) -> Path:
    """Make the maildir ``path`` (``tmp/``, ``new/``, ``cur/``) and return it."""
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def rate(put: Callable[[], object], count: int, clients: int) -> float:
    """Messages per second for ``count`` calls of ``put()`` from ``clients`` threads.

    Each thread loops over its share of the calls, as an MTA's session
    threads would (no thread pool: a pool's queue and futures would add a
    hand-off per call that is the benchmark's, not the writer's). Every
    threaded row, maildir or spool, goes through this same driver.
    """
    shares = [count // clients + (i < count % clients) for i in range(clients)]
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            for _ in range(n):
                put()
        except BaseException as exc:  # surfaced below: a failed row must not look fast
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in shares]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return count / elapsed


def bench_bound(work: Path, *, count: int, size: int, clients: int, runs: int) -> None:
    """Print what CPython threads alone allow: the spool's put pattern with no spool in it.

    ``clients`` threads each do ``units`` of Python work per put (one
    unit: two ``json.dumps`` of a message header, about 7 us here), queue
    a lock and block on it; one committer thread writes each batch with
    one ``pwrite`` and one ``fdatasync`` into a pre-written file (as the
    commit log does) and releases the batch's locks. The rate with 0
    units is the cost of the wake-up and the GIL hand-off per put alone.
    """
    header = {
        "id": "0" * 26,
        "sender": ENV.sender,
        "recipients": list(ENV.recipients),
        "origin": "n1",
        "created": 1.0,
        "size": size,
        "crc32": 0,
    }
    path = work / "bound.log"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    segment = 8 * 1024 * 1024
    os.write(fd, bytes(segment))
    os.fsync(fd)
    print(f"\nbound: {clients} threads, {count} puts of {size} bytes, no spool (msg/s)")
    try:
        for units in (0, 1, 3, 5):
            for design, run in BOUND_DESIGNS.items():
                rates = [
                    run(
                        fd,
                        segment=segment,
                        header=header,
                        units=units,
                        count=count,
                        size=size,
                        clients=clients,
                    )
                    for _ in range(runs)
                ]
                print(f"{units:>2} units, {design:<36} " + " ".join(f"{r:>9.0f}" for r in rates))
    finally:
        os.close(fd)


def _bound_run(
    fd: int,
    *,
    segment: int,
    header: dict[str, object],
    units: int,
    count: int,
    size: int,
    clients: int,
) -> float:
    mu = threading.Lock()
    pending: list[Any] = []
    kick = threading.Event()
    stop = threading.Event()

    def committer() -> None:
        offset = 0
        while not stop.is_set():
            kick.wait(0.01)
            kick.clear()
            while True:
                with mu:
                    batch, pending[:] = pending[:], []
                if not batch:
                    break
                data = bytes(len(batch) * (size + 64))
                if offset + len(data) > segment:
                    offset = 0
                os.pwrite(fd, data, offset)
                os.fdatasync(fd)
                offset += len(data) + (-len(data) % 4096)
                for waiter in batch:
                    waiter.release()

    def put() -> None:
        for _ in range(units):
            json.dumps(header, separators=(",", ":"))
            json.dumps(header)
        waiter = _thread.allocate_lock()
        waiter.acquire()
        with mu:
            pending.append(waiter)
        kick.set()
        waiter.acquire()

    return _with_committer(committer, stop, put, count, clients)


def _with_committer(
    committer: Callable[[], None],
    stop: threading.Event,
    put: Callable[[], None],
    count: int,
    clients: int,
) -> float:
    """The put rate of ``put`` while ``committer`` runs on its own thread (stopped after)."""
    thread = threading.Thread(target=committer, daemon=True)
    thread.start()
    try:
        return rate(put, count, clients)
    finally:
        stop.set()
        thread.join()


def _bound_callers_write(
    fd: int,
    *,
    segment: int,
    header: dict[str, object],
    units: int,
    count: int,
    size: int,
    clients: int,
) -> float:
    """Design (a): each caller writes its own record under the lock, one flush per group.

    The caller ``pwrite``s its record into the shared file under the lock
    and waits on a condition; the committer does one ``fdatasync`` for all
    written so far and wakes the waiters with one ``notify_all``.
    """
    cond = threading.Condition(threading.Lock())
    state = {"offset": 0, "written": 0, "durable": 0}
    record = bytes(size + 64)
    step = len(record) + (-len(record) % 4096)
    kick = threading.Event()
    stop = threading.Event()

    def committer() -> None:
        while not stop.is_set():
            kick.wait(0.01)
            kick.clear()
            while True:
                with cond:
                    target = state["written"]
                if target == state["durable"]:
                    break
                os.fdatasync(fd)
                with cond:
                    state["durable"] = target
                    cond.notify_all()

    def put() -> None:
        for _ in range(units):
            json.dumps(header, separators=(",", ":"))
            json.dumps(header)
        with cond:
            if state["offset"] + step > segment:
                state["offset"] = 0
            os.pwrite(fd, record, state["offset"])
            state["offset"] += step
            state["written"] += 1
            mine = state["written"]
            kick.set()
            while state["durable"] < mine:
                cond.wait()

    return _with_committer(committer, stop, put, count, clients)


def _bound_callers_sync(
    fd: int,
    *,
    segment: int,
    header: dict[str, object],
    units: int,
    count: int,
    size: int,
    clients: int,
) -> float:
    """No committer: each caller writes its record under a lock, then ``fdatasync``s itself.

    (The kernel merges concurrent flushes; a caller blocks in the system
    call instead of on a lock.)
    """
    mu = threading.Lock()
    state = {"offset": 0}
    record = bytes(size + 64)
    step = len(record) + (-len(record) % 4096)

    def put() -> None:
        for _ in range(units):
            json.dumps(header, separators=(",", ":"))
            json.dumps(header)
        with mu:
            if state["offset"] + step > segment:
                state["offset"] = 0
            os.pwrite(fd, record, state["offset"])
            state["offset"] += step
        os.fdatasync(fd)

    return rate(put, count, clients)


BOUND_DESIGNS = {
    "committer thread (the spool's)": _bound_run,
    "(a) callers write, one notify_all": _bound_callers_write,
    "callers write and fdatasync": _bound_callers_sync,
}


def coordinator(zk: ZooKeeperServer, cluster: str) -> Coordinator:
    """A started open coordinator with a short session."""
    return Coordinator(
        hosts=zk.address, cluster=cluster, session_timeout=2.0, server_tick=0.1, open_acl=True
    ).start()


def async_rate(call: Callable[[], Awaitable[object]], count: int, tasks: int) -> float:
    """Messages per second for ``count`` awaits of ``call()`` from ``tasks`` asyncio tasks."""

    async def main() -> float:
        left = count

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await call()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(tasks)))
        return count / (time.perf_counter() - start)

    return asyncio.run(main())


def bench_asyncio(
    work: Path,
    zk: ZooKeeperServer,
    *,
    count: int,
    size: int,
    tasks: int,
    runs: int,
    warmup: int = 1,
) -> None:
    """Print put rates from asyncio tasks (an aiosmtpd server's shape), side by side.

    Each run measures, one after the other on the same disk: the durable
    maildir writer called from ``tasks`` asyncio tasks through a thread
    pool of as many threads (how an asyncio server calls a blocking
    writer), the same writer from as many plain threads (its best rate
    here), and the spool's ``aput`` from ``tasks`` tasks. ``warmup`` runs
    come first and are not counted: a process's first run pays for
    memory it touches for the first time (15-30% slower here, every row).
    """
    data = os.urandom(size)
    c = coordinator(zk, "benchaio")
    pool_row, thread_row, spool_row = (
        "maildir + fsync dir, in a thread pool",
        "maildir + fsync dir, plain threads",
        "spool, group commit, aput",
    )
    rows: dict[str, list[float]] = {}
    try:
        for run in range(1 - warmup, runs + 1):
            measured: dict[str, float] = {}
            md = new_maildir(work / f"aio-maildir-{run}")
            with ThreadPoolExecutor(tasks) as pool:

                async def put_md(md: Path = md, pool: ThreadPoolExecutor = pool) -> None:
                    loop = asyncio.get_running_loop()
                    await loop.run_in_executor(pool, lambda: maildir_put(md, data, dir_fsync=True))

                measured[pool_row] = async_rate(put_md, count, tasks)
            md = new_maildir(work / f"aio-maildir-threads-{run}")

            def put_md_thread(md: Path = md) -> None:
                maildir_put(md, data, dir_fsync=True)

            measured[thread_row] = rate(put_md_thread, count, tasks)
            root = work / f"aio-san-{run}"
            root.mkdir()
            paths = NodePaths(root, "benchaio", f"a{run + warmup}").create()
            lock = SpoolLock(coordinator=c, paths=paths)
            lock.acquire(10)
            spool = Spool(directory=paths.spool, node=paths.node, fence=lock).open()

            async def put_spool(spool: Spool = spool) -> None:
                await spool.aput(ENV, data)

            measured[spool_row] = async_rate(put_spool, count, tasks)
            spool.close()
            lock.release()
            if run >= 1:
                for label, value in measured.items():
                    rows.setdefault(label, []).append(value)
    finally:
        c.stop()
    print(
        f"\nasyncio: {tasks} tasks (or threads), {count} puts of {size} bytes per row,"
        f" {runs} runs after {warmup} warm-up (msg/s)"
    )
    for label, rates in rows.items():
        print(f"{label:<42} " + " ".join(f"{r:>9.0f}" for r in rates))
    for base in (pool_row, thread_row):
        ratios = [r / b for r, b in zip(rows[spool_row], rows[base], strict=True)]
        met = sum(x >= 5 for x in ratios)
        print(
            f"{'aput / ' + base.split(', ')[1]:<42} "
            + " ".join(f"{x:>8.1f}x" for x in ratios)
            + f"   >= 5x in {met} of {len(ratios)}"
        )


def spool_rate(
    work: Path,
    c: Coordinator,
    data: bytes,
    *,
    group: bool,
    count: int,
    clients: int,
    tag: str,
    deliver: bool = False,
) -> tuple[float, float]:
    """Acknowledged puts per second into a fresh fenced spool, and the same counting its close.

    The close of a group-commit spool files every message still in the
    log only (one new file each) and retires the log.
    """
    root = work / f"san-{tag}"
    root.mkdir()
    paths = NodePaths(root, "benchputs", f"n{tag}").create()
    lock = SpoolLock(coordinator=c, paths=paths)
    lock.acquire(10)
    spool = Spool(directory=paths.spool, node=paths.node, fence=lock, group_commit=group).open()

    def put() -> None:
        mid = spool.put(ENV, data)
        if deliver:
            spool.done(mid)

    start = time.perf_counter()
    acked = rate(put, count, clients)
    spool.close()  # group commit: every message filed, msg/ durable, the log retired
    elapsed = time.perf_counter() - start
    lock.release()
    return acked, count / elapsed


def bench_puts(
    work: Path,
    zk: ZooKeeperServer,
    *,
    count: int,
    size: int,
    clients: int,
    runs: int,
    warmup: int = 1,
) -> None:
    """Print the put rates side by side, ``runs`` times, and the ratio at equal concurrency.

    ``warmup`` runs of every row come first and are not counted (a
    process's first run pays for memory it touches for the first time).
    """
    data = os.urandom(size)
    c = coordinator(zk, "benchputs")
    writers = [
        ("maildir: tmp, fsync, rename", "md", False),
        ("maildir: tmp, fsync, rename, fsync dir", "mdd", True),
        ("spool, fsync per message", "each", False),
        ("spool, group commit (commit log)", "group", True),
        ("maildir + fsync dir, each then unlinked", "mdx", True),
        ("spool, group commit, each then done()", "gdone", True),
    ]
    closing = "  same, counting the close (files them all)"
    table: dict[tuple[str, int], list[float]] = {}
    try:
        for run in range(1 - warmup, runs + 1):
            for label, tag, flag in writers:
                for threads in sorted({1, clients}):
                    where = f"{tag}-{threads}-{run}"
                    if tag.startswith("md"):
                        md = new_maildir(work / f"maildir-{where}")

                        def put(md: Path = md, d: bool = flag, x: bool = tag == "mdx") -> None:
                            path = maildir_put(md, data, dir_fsync=d)
                            if x:
                                path.unlink()

                        r = rate(put, count, threads)
                    else:
                        r, with_close = spool_rate(
                            work,
                            c,
                            data,
                            group=flag,
                            count=count,
                            clients=threads,
                            tag=where,
                            deliver=tag == "gdone",
                        )
                    if run < 1:
                        continue  # a warm-up run
                    table.setdefault((label, threads), []).append(r)
                    if tag == "group":
                        table.setdefault((closing, threads), []).append(with_close)
    finally:
        c.stop()
    print(
        f"\nput of {size}-byte messages, {count} per row, same disk ({work}), {runs} runs"
        f" after {warmup} warm-up;"
        " every row: the same client threads, messages and durability"
    )
    head = " ".join(f"{'run ' + str(n):>9}" for n in range(1, runs + 1))
    print(f"{'writer':<42} {'clients':>7} {head}  (msg/s)")
    for (label, threads), rates in sorted(table.items(), key=lambda kv: kv[0][1]):
        cells = " ".join(f"{r:>9.0f}" for r in rates)
        print(f"{label:<42} {threads:>7} {cells}")
    base = "maildir: tmp, fsync, rename, fsync dir"
    print(f"\nratio to {base!r} (or its row with unlink) at the same number of clients:")
    for (label, threads), rates in sorted(table.items(), key=lambda kv: kv[0][1]):
        if not label.startswith("maildir"):
            against = "maildir + fsync dir, each then unlinked" if "done" in label else base
            ratios = [r / b for r, b in zip(rates, table[(against, threads)], strict=True)]
            cells = " ".join(f"{x:>8.1f}x" for x in ratios)
            print(f"{label:<42} {threads:>7} {cells}")


def _proc_client(
    kind: str,
    zk_address: str,
    root: str,
    cluster: str,
    node: str,
    *,
    size: int,
    count: int,
    threads: int,
    barrier: Any,
    out: Any,
) -> None:
    """One process of ``bench_procs``: ``threads`` threads put ``count`` messages; send times."""
    data = os.urandom(size)
    stop: Callable[[], None] = lambda: None  # noqa: E731
    if kind == "maildir":
        md = new_maildir(Path(root) / node)

        def put() -> None:
            maildir_put(md, data, dir_fsync=True)
    else:
        c = Coordinator(
            hosts=zk_address, cluster=cluster, session_timeout=2.0, server_tick=0.1, open_acl=True
        ).start()
        paths = NodePaths(Path(root), cluster, node).create()
        lock = SpoolLock(coordinator=c, paths=paths)
        lock.acquire(10)
        spool = Spool(directory=paths.spool, node=node, fence=lock).open()

        def put() -> None:
            spool.put(ENV, data)

        def stop() -> None:
            spool.close()
            lock.release()
            c.stop()

    barrier.wait()
    start = time.perf_counter()  # CLOCK_MONOTONIC: comparable across processes
    rate(put, count, threads)
    out.put((start, time.perf_counter()))
    stop()


def bench_procs(
    work: Path, zk: ZooKeeperServer, *, procs: int, count: int, size: int, clients: int, runs: int
) -> None:
    """Print put rates with the ``clients`` threads split over ``procs`` processes.

    Maildir: ``procs`` processes writing one maildir each. Spool: ``procs``
    processes, each a node of its own (its own spool directory, lock and
    ZooKeeper session: a node name per process, taken over one by one like
    any node). Same threads in total, same disk, same messages: the rate
    is all messages over the span from the first start to the last end.
    """
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with ZooKeeper threads
    shares = [count // procs + (i < count % procs) for i in range(procs)]
    threads = [clients // procs + (i < clients % procs) for i in range(procs)]
    rows: dict[str, list[float]] = {}
    for run in range(1, runs + 1):
        for kind in ("maildir", "spool"):
            root = work / f"procs-{kind}-{run}"
            root.mkdir()
            barrier, out = ctx.Barrier(procs), ctx.Queue()
            workers = [
                ctx.Process(
                    target=_proc_client,
                    args=(kind, zk.address, str(root), "benchprocs", f"p{run}x{i}"),
                    kwargs={
                        "size": size,
                        "count": shares[i],
                        "threads": threads[i],
                        "barrier": barrier,
                        "out": out,
                    },
                )
                for i in range(procs)
            ]
            for worker in workers:
                worker.start()
            spans = [out.get(timeout=300) for _ in workers]
            for worker in workers:
                worker.join(60)
                if worker.exitcode != 0:
                    raise RuntimeError(f"a {kind} process failed: exit code {worker.exitcode}")
            elapsed = max(e for _, e in spans) - min(s for s, _ in spans)
            rows.setdefault(kind, []).append(count / elapsed)
    print(
        f"\n{procs} processes, {clients} threads in all, {count} puts of {size} bytes per row, "
        f"{runs} runs (msg/s)"
    )
    labels = {
        "maildir": "maildir + fsync dir, a maildir each",
        "spool": "spool, group commit, a node each",
    }
    for kind, rates in rows.items():
        print(f"{labels[kind]:<42} " + " ".join(f"{r:>9.0f}" for r in rates))
    ratios = [r / b for r, b in zip(rows["spool"], rows["maildir"], strict=True)]
    print(f"{'ratio':<42} " + " ".join(f"{x:>8.1f}x" for x in ratios))


PHASES = (
    ("session end -> takeover started", "end", "started"),
    ("takeover started -> log adopted", "started", "log"),
    ("log adopted -> complete", "log", "complete"),
    ("session end -> complete", "end", "complete"),
)


def holder(
    zk: ZooKeeperServer, root: Path, cluster: str, count: int, *, crashed: bool
) -> tuple[Coordinator, Membership, Spool]:
    """Node "dead", a member holding ``count`` messages (its spool closed unless ``crashed``)."""
    dead_c = coordinator(zk, cluster)
    dead_paths = NodePaths(root, cluster, "dead").create()
    dead_lock = SpoolLock(coordinator=dead_c, paths=dead_paths)
    dead_lock.acquire(10)
    dead = Spool(directory=dead_paths.spool, node="dead", fence=dead_lock).open()
    data = os.urandom(4096)
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda _: dead.put(ENV, data), range(count)))
    if not crashed:
        dead.close()
    return dead_c, Membership(coordinator=dead_c, info=NodeInfo(name="dead")).start(), dead


def bench_takeover(
    work: Path, zk: ZooKeeperServer, count: int, *, crashed: bool
) -> dict[str, float]:
    """Time a survivor's takeover of ``count`` messages, phase by phase; print and return it.

    ``crashed``: the holder does not close its spool (as if SIGKILLed): what
    it acknowledged last is in its commit log only, and the survivor takes
    that log over by renaming it into its own (no file per message) before
    moving the filed rest.

    The holder leaves the membership first and its session ends only once
    the survivor has seen it gone: the order in which a survivor last
    waited for its periodic pass (the lock's deletion fired no watch). A
    SIGKILL drops both at once. Returns the phase marks, in seconds from
    the session end (``started``, ``log``, ``complete``) and ``logged``.
    """
    root = work / f"san-takeover-{crashed}-{secrets.token_hex(3)}"
    root.mkdir()
    cluster = f"benchtake{secrets.token_hex(3)}"
    dead_c, dead_m, dead = holder(zk, root, cluster, count, crashed=crashed)
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
        now = time.perf_counter()
        marks.setdefault(event.kind.value, now)
        if event.kind is EventKind.BATCH and event.detail == "commit log":
            marks.setdefault("log", now)
        if event.kind is EventKind.COMPLETE:
            marks.setdefault("log", marks["started"])  # no log adopted: the phase is empty
            marks["moved"] = event.moved
            done.set()

    takeover.add_listener(on_event)
    takeover.start()
    deadline = time.monotonic() + 10
    while "dead" not in m.view.names and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    dead_m.stop()
    while "dead" in m.view.names and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # the survivor's pass for the membership change has run
    # Counted at the crash (its checkpointer may have filed some while idle).
    logged = sum(1 for mid in wal_logged(dead.directory) if not (dead.msg_dir / mid).exists())
    marks["end"] = time.perf_counter()
    dead_c.stop()  # the session ends at once: the server drops its ephemerals
    done.wait(60)
    how = "holder crashed" if crashed else "holder closed its spool first"
    print(f"\ntakeover of {count} messages (4 KiB each), grace 0, one survivor, {how}")
    print(f"  in the commit log only          : {logged}")
    print_phases(marks)
    takeover.stop()
    spool.close()
    lock.release()
    m.stop()
    c.stop()
    dead.close()  # fenced by now: no checkpoint
    result = {k: marks.get(k, float("nan")) - marks["end"] for k in ("started", "log", "complete")}
    result["logged"] = logged
    return result


def print_phases(marks: dict[str, float]) -> None:
    """Print one takeover's phases from its marks (perf_counter times)."""
    nan = float("nan")
    for label, a, b in PHASES:
        print(f"  {label:<32}: {marks.get(b, nan) - marks.get(a, nan):.3f} s")
    print(f"  messages moved                  : {int(marks.get('moved', 0))}")


def takeover_summary(results: list[dict[str, float]]) -> None:
    """Print the phases of repeated crashed-holder takeovers, one column per run."""
    print(f"\ncrashed holder, {len(results)} runs (s from the session end)")
    print(f"{'in the commit log only':<34}" + "".join(f"{r['logged']:>8.0f}" for r in results))
    for label, a, b in PHASES:
        cells = "".join(f"{r[b] - (0.0 if a == 'end' else r[a]):>8.3f}" for r in results)
        print(f"{label:<34}{cells}")


def main() -> None:
    """Run the spool benchmarks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts (smoke run)")
    parser.add_argument("--count", type=int, default=4000)
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--takeover", type=int, default=10000)
    parser.add_argument("--runs", type=int, default=3, help="repeat the put comparison")
    parser.add_argument(
        "--warmup", type=int, default=1, help="uncounted runs of every put row first"
    )
    parser.add_argument("--skip-takeover", action="store_true")
    parser.add_argument(
        "--only-takeover", action="store_true", help="skip the put rates: the takeover only"
    )
    parser.add_argument(
        "--takeover-runs", type=int, default=1, help="repeat the crashed-holder takeover"
    )
    parser.add_argument(
        "--bound", action="store_true", help="only the bare thread pattern (what threads allow)"
    )
    parser.add_argument(
        "--procs",
        type=int,
        default=0,
        help="only the put rates with the clients split over this many processes",
    )
    args = parser.parse_args()
    if args.warmup < 0 or args.runs < 1 or args.clients < 1 or args.count < 1:
        parser.error("--warmup must be >= 0; --runs, --clients and --count >= 1")
    if args.quick:
        args.count, args.takeover, args.runs, args.warmup = 200, 1000, 1, 0
    print(f"python {platform.python_version()} on {platform.platform()}, {os.cpu_count()} CPUs")
    if args.bound:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            bench_bound(
                Path(tmp), count=args.count, size=args.size, clients=args.clients, runs=args.runs
            )
        return
    zk = ZooKeeperServer(tick_time=100).start()
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            if args.procs:
                bench_procs(
                    Path(tmp),
                    zk,
                    procs=args.procs,
                    count=args.count,
                    size=args.size,
                    clients=args.clients,
                    runs=args.runs,
                )
                return
            if not args.only_takeover:
                bench_puts(
                    Path(tmp),
                    zk,
                    count=args.count,
                    size=args.size,
                    clients=args.clients,
                    runs=args.runs,
                    warmup=args.warmup,
                )
                bench_asyncio(
                    Path(tmp),
                    zk,
                    count=args.count,
                    size=args.size,
                    tasks=args.clients,
                    runs=args.runs,
                    warmup=args.warmup,
                )
            if not args.skip_takeover:
                bench_takeover(Path(tmp), zk, args.takeover, crashed=False)
                results = [
                    bench_takeover(Path(tmp), zk, args.takeover, crashed=True)
                    for _ in range(args.takeover_runs)
                ]
                if len(results) > 1:
                    takeover_summary(results)
    finally:
        zk.cleanup()


if __name__ == "__main__":
    main()
