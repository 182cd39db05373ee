"""Fixtures for log aggregation tests: node and manager processes, writers, output readers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mhafail.jlog import Jlog
from mhafail.testing import ZooKeeperServer
from mhafail.testing._children import reap, spawn

SECRET = b"0123456789abcdef-test-secret"


class LogProc:
    """One ``mhafail logs serve|manager`` process; its output goes to a file."""

    def __init__(self, name: str, argv: list[str], out: Path) -> None:
        self.name, self.argv, self.out = name, argv, out
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 30.0) -> LogProc:
        """Start the process and wait until it prints its ``ready`` line."""
        self.starts += 1
        mark = f"ready-{self.starts}"
        with open(self.out, "ab") as out:
            out.write(f"--- {mark}\n".encode())
            out.flush()
            self.proc = spawn(self.argv, stdout=out, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            text = self.out.read_bytes().split(f"--- {mark}\n".encode())[-1]
            for line in text.splitlines():
                if line.startswith(b"{") and json.loads(line).get("event") == "ready":
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.name} did not start: {self.out.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the process, as a crash would."""
        if self.proc is not None:
            reap(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> int:
        """SIGTERM the process and return its exit status."""
        if self.proc is None:
            return 0
        status = reap(self.proc)
        self.proc = None
        return status

    def output(self) -> str:
        """Everything the process printed so far."""
        return self.out.read_text(errors="replace")


class Lab:
    """Starts node services and managers of one cluster; stops them all afterwards."""

    def __init__(self, zk: str, cluster: str, root: Path) -> None:
        self.zk, self.cluster, self.root = zk, cluster, root
        self.procs: list[LogProc] = []

    def jlog(self, node: str, log: str = "mainlog") -> Path:
        """Where ``node`` keeps ``log``."""
        return self.root / "nodes" / node / log

    def node(
        self, node: str, *extra: str, logs: tuple[str, ...] = ("mainlog",), managers=("m1", "m2")
    ) -> LogProc:
        """Start ``mhafail logs serve`` for ``node``."""
        argv = [
            sys.executable, "-m", "mhafail", "-v", "logs", "serve", "--zk", self.zk,
            "--cluster", self.cluster, "--node", node, "--session-timeout", "1.0",
            "--heartbeat", "0.2", "--poll-interval", "0.02",
        ]  # fmt: skip
        for log in logs:
            argv += ["--log", f"{log}={self.jlog(node, log)}"]
        for manager in managers:
            argv += ["--manager", manager]
        if "--secret-file" not in extra:
            argv.append("--allow-unauthenticated")  # loopback only, as every test node is
        proc = LogProc(node, [*argv, *extra], self.root / f"{node}.out")
        self.procs.append(proc)
        return proc.start()

    def base(self, manager: str) -> Path:
        """A manager's output directory."""
        return self.root / "out" / manager

    def manager(self, name: str, *extra: str, base: Path | None = None) -> LogProc:
        """Start ``mhafail logs manager`` called ``name``."""
        argv = [
            sys.executable, "-m", "mhafail", "-v", "logs", "manager", "--zk", self.zk,
            "--cluster", self.cluster, "--name", name,
            "--base", str(base or self.base(name)), "--session-timeout", "1.0",
            "--heartbeat", "0.2", "--retry", "0.2",
        ]  # fmt: skip
        proc = LogProc(name, [*argv, *extra], self.root / f"{name}.out")
        self.procs.append(proc)
        return proc.start()

    def close(self) -> None:
        """Stop every process still running."""
        for proc in self.procs:
            proc.stop()


@pytest.fixture
def lab(zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path) -> Iterator[Lab]:
    """A cluster's worth of node and manager processes, stopped after the test."""
    made = Lab(zookeeper.address, zk_cluster, tmp_path)
    try:
        yield made
    finally:
        made.close()


def record(node: str, seq: int, size: int = 60) -> bytes:
    """The payload of record ``seq`` of ``node``: sequence number first, padded."""
    head = f"{node} {seq:08d} ".encode()
    return head + b"x" * max(0, size - len(head))


class Writer:
    """Appends numbered records to several nodes' jlogs from a background thread.

    Args:
        paths: node name -> jlog directory.
        total: records per node.
        per_tick: records per node per 10 ms tick (the rate).
    """

    def __init__(self, paths: dict[str, Path], total: int, per_tick: int = 20) -> None:
        self.paths, self.total, self.per_tick = paths, total, per_tick
        self.written = dict.fromkeys(paths, 0)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Writer:
        """Start writing."""
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            writers = {n: Jlog.open(p).writer() for n, p in self.paths.items()}
            try:
                while any(w < self.total for w in self.written.values()):
                    for node, writer in writers.items():
                        start = self.written[node]
                        stop = min(self.total, start + self.per_tick)
                        writer.write_many([record(node, i) for i in range(start, stop)])
                        self.written[node] = stop
                    time.sleep(0.01)
            finally:
                for writer in writers.values():
                    writer.close()
        except BaseException as exc:
            self.error = exc
            raise

    def join(self) -> None:
        """Wait until everything is written."""
        self._thread.join(120)
        assert self.error is None, self.error
        assert not self._thread.is_alive()


def output_lines(base: Path, cluster: str, node: str, log: str = "mainlog") -> list[bytes]:
    """A manager's output for (node, log): every day file in path order, as lines."""
    files = sorted(p for p in base.glob(f"*/*/*/{log}/{cluster}/{node}") if p.is_file())
    return b"".join(f.read_bytes() for f in files).splitlines()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it holds; fail naming ``what``."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def expect_exact(base: Path, cluster: str, nodes: list[str], total: int, timeout: float) -> None:
    """Wait until the output holds ``total`` records per node, then check them one by one."""

    def complete() -> bool:
        return all(len(output_lines(base, cluster, n)) >= total for n in nodes)

    try:
        wait_until(complete, timeout, f"{total} records per node in {base}")
    finally:
        for node in nodes:
            got = output_lines(base, cluster, node)
            want = [record(node, i) for i in range(total)]
            if got != want:
                seqs = [int(line.split()[1]) for line in got]
                dups = len(seqs) - len(set(seqs))
                missing = sorted(set(range(total)) - set(seqs))[:10]
                raise AssertionError(
                    f"{base.name}/{node}: {len(got)} lines, {dups} duplicated, "
                    f"first missing {missing}, in order: {seqs == sorted(seqs)}"
                )
