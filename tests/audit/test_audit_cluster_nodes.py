"""Cluster-wide series across real node processes (``mhafail audit node``) and real ZooKeeper."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from mhafail.audit import QueryEngine, SnapshotStore
from mhafail.errors import UnknownSeries
from mhafail.testing import ZooKeeperServer

pytestmark = pytest.mark.zookeeper

Event = dict[str, Any]


class AuditNode:
    """One ``mhafail audit node`` process: commands go to its stdin, JSON events come back."""

    def __init__(
        self,
        *,
        zk: str,
        cluster: str,
        name: str,
        listen: bool,
        logs: Path,
        timeout: str = "2",
        args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.argv = [
            sys.executable,
            "-m",
            "mhafail",
            "audit",
            "node",
            "--zk",
            zk,
            "--cluster",
            cluster,
            "--node",
            name,
            "--series",
            "conn:ipv4:60:6",
            "--interval",
            "0.1",
            "--timeout",
            timeout,
            "--session-timeout",
            "2",
            "--role",
            "manager" if listen else "mta",
        ]
        if listen:
            self.argv += ["--listen", "127.0.0.1:0"]
        self.argv += args
        self.logs = logs
        self.starts = 0
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._line = 0

    def start(self) -> AuditNode:
        """Start the process (a new incarnation); wait_ready() waits for it."""
        self.starts += 1
        self._stderr = (self.logs / f"{self.name}-{self.starts}.log").open("wb")
        with self._cond:
            self.events = []
        self._line = 0
        self._proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            with self._cond:
                self.events.append(json.loads(raw))
                self._cond.notify_all()
        proc.stdout.close()

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """Return the first event of this incarnation matching ``predicate``."""
        with self._cond:
            end = time.monotonic() + timeout
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = end - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{self.name}: no matching event; last ones {self.events[-3:]}")
                self._cond.wait(left)

    def wait_ready(self) -> Event:
        return self.wait_event(lambda e: e["event"] == "ready")

    def command(self, text: str) -> Event:
        """Send one command line and return the event answering it."""
        assert self._proc is not None and self._proc.stdin is not None
        self._line += 1
        line = self._line
        self._proc.stdin.write(text.encode() + b"\n")
        self._proc.stdin.flush()
        event = self.wait_event(lambda e: e.get("line") == line)
        assert event["event"] != "error", event
        return event

    def refused(self, text: str) -> str:
        """Send a command that must fail and return the error it got."""
        assert self._proc is not None and self._proc.stdin is not None
        self._line += 1
        line = self._line
        self._proc.stdin.write(text.encode() + b"\n")
        self._proc.stdin.flush()
        event = self.wait_event(lambda e: e.get("line") == line)
        assert event["event"] == "error", event
        return str(event["error"])

    def count(self, target: str) -> int:
        return int(self.command(f"count conn {target}")["count"])

    def wait_count(self, target: str, expected: int, timeout: float = 20.0) -> None:
        """Poll the node's count of ``target`` until it equals ``expected``."""
        end = time.monotonic() + timeout
        while (got := self.count(target)) != expected:
            if time.monotonic() > end:
                pytest.fail(f"{self.name}: count {target} stayed {got}, expected {expected}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the process, as a crash would."""
        self._end(signal.SIGKILL)

    def terminate(self) -> int:
        """SIGTERM the process (it leaves the cluster cleanly); return its exit status."""
        return self._end(signal.SIGTERM)

    def pause(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        os.kill(self._proc.pid, signal.SIGCONT)

    def _end(self, sig: int) -> int:
        proc, self._proc = self._proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            os.kill(proc.pid, sig)
            os.kill(proc.pid, signal.SIGCONT)
        try:
            status = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            status = proc.wait()
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        if self._reader is not None:
            self._reader.join(10)
        if self._stderr is not None:
            self._stderr.close()
        return status


@pytest.fixture
def nodes(
    zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path
) -> Iterator[Callable[..., AuditNode]]:
    made: list[AuditNode] = []

    def make(name: str, *, listen: bool = False, **extra: Any) -> AuditNode:
        node = AuditNode(
            zk=zookeeper.address,
            cluster=zk_cluster,
            name=name,
            listen=listen,
            logs=tmp_path,
            **extra,
        )
        made.append(node)
        return node

    yield make
    for node in made:
        node.kill()


def test_sums_are_right_and_restarts_never_double_count(
    nodes: Callable[..., AuditNode],
) -> None:
    """Managers and peer-sharing nodes sum every node; node and manager restarts double nothing."""
    m = nodes("m", listen=True)
    c = nodes("c", listen=True)  # an MTA node with peer sharing: it listens too
    a, b = nodes("a"), nodes("b")
    for node in (m, c, a, b):
        node.start()
    for node in (m, c, a, b):
        node.wait_ready()
    a.command("add conn 198.18.0.1 50")
    a.command("add conn 198.18.1.7 10")
    b.command("add conn 203.0.113.5 20")
    c.command("add conn 198.19.0.1 5")
    m.command("add conn 198.18.0.9 1")
    m.wait_count("0.0.0.0/0", 86)
    c.wait_count("0.0.0.0/0", 86)
    assert (m.count("198.18.0.0/16"), m.count("198.18.0.1"), m.count("203.0.113.0/24")) == (
        61,
        50,
        20,
    )
    assert (a.count("0.0.0.0/0"), b.count("0.0.0.0/0")) == (60, 20)  # senders count their own

    # A node crashes and comes back under the same name: a new origin, starting empty.
    a.kill()
    a.start().wait_ready()
    assert a.count("0.0.0.0/0") == 0
    a.command("add conn 198.18.0.1 30")
    m.wait_count("198.18.0.1", 80)  # the dead incarnation's 50 stay until their window ages out
    c.wait_count("198.18.0.1", 80)
    b.command("add conn 203.0.113.5 1")  # a barrier: once it arrives, later batches went too
    m.wait_count("203.0.113.0/24", 21)
    c.wait_count("203.0.113.0/24", 21)
    assert a.command("flush 10")["ok"] is True
    assert (m.count("198.18.0.1"), m.count("0.0.0.0/0")) == (80, 117)
    assert (c.count("198.18.0.1"), c.count("0.0.0.0/0")) == (80, 117)

    # The manager crashes and comes back empty: each live node refills it once.
    m.kill()
    m.start().wait_ready()
    m.wait_count("0.0.0.0/0", 56)  # a's 30 + b's 21 + c's 5; the dead ones' counts are gone
    b.command("add conn 203.0.113.5 1")
    m.wait_count("203.0.113.0/24", 22)
    for node in (a, b, c):
        assert node.command("flush 10")["ok"] is True
    assert (m.count("198.18.0.1"), m.count("0.0.0.0/0")) == (30, 57)
    stats = m.command("stats")
    assert stats["received"]["snapshots"] == 3
    assert stats["received"]["gaps"] == 0
    assert c.count("0.0.0.0/0") == 118  # c kept everything: 117 + the second barrier
    assert m.terminate() == 0
    assert m.events[-1]["event"] == "stopped"


def test_a_paused_receiver_gets_every_batch_once(
    nodes: Callable[..., AuditNode], tmp_path: Path
) -> None:
    """Pushes that time out while the manager is stopped arrive after it resumes, once."""
    snapshots = tmp_path / "snapshots"
    m = nodes("m", listen=True, args=("--log-dir", str(snapshots), "--log-interval", "0.2"))
    a = nodes("a", timeout="0.3")
    m.start()
    a.start()
    m.wait_ready()
    a.wait_ready()
    assert "not an IPv4 address" in a.refused("add conn 198.18.0.300")
    assert "no series 'rcpt' (this node has conn)" in a.refused("count rcpt 198.18.0.0/15")
    assert "unknown command 'drop conn'" in a.refused("drop conn")
    a.command("add conn 198.18.0.1 1")
    m.wait_count("198.18.0.1", 1)
    m.pause()
    try:
        for i in range(8):
            a.command(f"add conn 198.18.0.1 {i + 1}")
            time.sleep(0.15)
    finally:
        m.resume()
    m.wait_count("198.18.0.1", 37)
    assert a.command("flush 10")["ok"] is True
    assert m.count("198.18.0.1") == 37
    peers = a.command("stats")["peers"]
    assert [p["node"] for p in peers] == ["m"]
    assert peers[0]["failures"] >= 1  # the pause did cut pushes off
    assert peers[0]["lost"] == 0
    # The manager's as_logger snapshots hold the cluster-wide counts, for mhafail cidr.
    engine = QueryEngine(store=SnapshotStore(root=snapshots))
    query = "show count for 198.18.0.0/24 in conn"
    end = time.monotonic() + 20
    while _logged(engine, query) != 37:
        assert time.monotonic() < end, f"snapshots hold {_logged(engine, query)}, not 37"
        time.sleep(0.1)


def _logged(engine: QueryEngine, query: str) -> int:
    """The count a query over the snapshot files answers (0 before the first file)."""
    try:
        rows = engine.run(query).to_json()["rows"]
    except UnknownSeries:
        return 0
    return int(rows[0]["count"]) if rows else 0
