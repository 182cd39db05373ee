"""Benchmark mhafail.jlog: write, write_many, read, and the cost of each durability policy.

Run ``python benchmarks/bench_jlog.py`` (``--quick`` for a short smoke run).
Each figure uses a fresh jlog in a temporary directory on the local disk
with the default 4 MiB segments; reads go through ``read_batch`` and
``read_many`` with a checkpoint after every batch, like a real consumer.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import shutil
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from mhafail.jlog import Durability, Jlog


def _fresh(root: Path, name: str) -> Jlog:
    path = root / name
    if path.exists():
        shutil.rmtree(path)
    jlog = Jlog.create(path)
    jlog.add_subscriber("bench")
    return jlog


def bench_write(jlog: Jlog, payload: bytes, count: int, durability: Durability) -> float:
    """Return msg/s for ``count`` single ``write()`` calls."""
    with jlog.writer(durability=durability) as writer:
        write = writer.write
        start = time.perf_counter()
        for _ in range(count):
            write(payload)
        elapsed = time.perf_counter() - start
    return count / elapsed


def bench_write_many(jlog: Jlog, payload: bytes, count: int, batch: int) -> float:
    """Return msg/s for ``write_many()`` in batches of ``batch``."""
    items = [payload] * batch
    with jlog.writer() as writer:
        start = time.perf_counter()
        for _ in range(count // batch):
            writer.write_many(items)
        elapsed = time.perf_counter() - start
    return (count // batch * batch) / elapsed


def bench_syscall_floor(root: Path, size: int, count: int) -> float:
    """Return appends/s of a bare per-record locked append (four system calls, no Python).

    OFD lock, ``lseek`` to the end, ``pwrite`` of one record, unlock: what
    an append costs when it locks per record, as libjlog does and as
    ``write()`` did before it kept the lock across a burst (one ``pwrite``
    per record now; docs/jlog.md, "Concurrency").
    """
    record = b"r" * (size + 16)
    fd = os.open(root / "floor", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    lock = fcntl.F_OFD_SETLKW  # type: ignore[attr-defined]  # Linux
    on, off = (
        struct.pack("hh4xqqi4x", fcntl.F_WRLCK, 0, 0, 0, 0),
        struct.pack("hh4xqqi4x", fcntl.F_UNLCK, 0, 0, 0, 0),
    )
    try:
        start = time.perf_counter()
        for _ in range(count):
            fcntl.fcntl(fd, lock, on)
            os.pwrite(fd, record, os.lseek(fd, 0, os.SEEK_END))
            fcntl.fcntl(fd, lock, off)
        return count / (time.perf_counter() - start)
    finally:
        os.close(fd)


def bench_read(jlog: Jlog, expected: int) -> float:
    """Return msg/s reading everything with a checkpoint per batch."""
    with jlog.reader("bench") as reader:
        start = time.perf_counter()
        got = 0
        while True:
            batch = reader.read_batch(4096)
            if not batch:
                break
            got += len(batch)
            reader.checkpoint(batch[-1].id)
        elapsed = time.perf_counter() - start
    if got != expected:
        raise SystemExit(f"read {got} messages, expected {expected}")
    return got / elapsed


def bench_read_many(jlog: Jlog, expected: int) -> float:
    """Return msg/s reading everything with ``read_many`` and a checkpoint per block."""
    with jlog.reader("bench") as reader:
        start = time.perf_counter()
        got = 0
        while block := reader.read_many(4096):
            got += len(block)
            reader.checkpoint(block.last)
        elapsed = time.perf_counter() - start
    if got != expected:
        raise SystemExit(f"read {got} messages, expected {expected}")
    return got / elapsed


def _best(runs: int, fn: Callable[[], float]) -> float:
    return max(fn() for _ in range(runs))


def main() -> None:
    """Run the benchmark and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, one run each")
    args = parser.parse_args()
    count = 20_000 if args.quick else 200_000
    fsync_count = 200 if args.quick else 2_000
    runs = 1 if args.quick else 3
    print(f"# mhafail.jlog benchmark, Python {platform.python_version()}, {platform.machine()}")
    print(f"# {count} messages per figure (fsync policy: {fsync_count}); best of {runs} runs")
    with tempfile.TemporaryDirectory(prefix="bench-jlog-") as tmp:
        root = Path(tmp)
        for size in (100, 1024):
            payload = b"x" * size
            rate = _best(
                runs,
                lambda p=payload: bench_write(_fresh(root, "w"), p, count, Durability.none()),
            )
            print(f"write       {size:>5} B  {rate:>12,.0f} msg/s")
            rate = _best(runs, lambda s=size: bench_syscall_floor(root, s, count))
            print(f"(lock/record) {size:>5} B {rate:>10,.0f} appends/s  (lock+lseek+pwrite+unlock)")
            rate = _best(
                runs, lambda p=payload: bench_write_many(_fresh(root, "m"), p, count, 1000)
            )
            print(f"write_many  {size:>5} B  {rate:>12,.0f} msg/s  (batches of 1000)")

            def read_once(p: bytes = payload) -> float:
                jlog = _fresh(root, "r")
                bench_write_many(jlog, p, count, 1000)
                return bench_read(jlog, count)

            rate = _best(runs, read_once)
            print(f"read        {size:>5} B  {rate:>12,.0f} msg/s  (read_batch + checkpoint)")

            def read_many_once(p: bytes = payload) -> float:
                jlog = _fresh(root, "r")
                bench_write_many(jlog, p, count, 1000)
                return bench_read_many(jlog, count)

            rate = _best(runs, read_many_once)
            print(f"read_many   {size:>5} B  {rate:>12,.0f} msg/s  (read_many + checkpoint)")
        payload = b"x" * 100
        policies = [
            ("none", Durability.none(), count),
            ("group(max_records=100)", Durability.group(max_records=100), count // 4),
            ("group(max_delay=0.01)", Durability.group(max_delay=0.01), count // 4),
            ("fsync", Durability.fsync(), fsync_count),
        ]
        for label, policy, n in policies:
            rate = _best(runs, lambda p=policy, n=n: bench_write(_fresh(root, "d"), payload, n, p))
            print(f"durability  {label:<24} write() 100 B  {rate:>12,.0f} msg/s")


if __name__ == "__main__":
    main()
