"""Cluster-wide series across real node processes (``mhafail audit node``) and real ZooKeeper."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mhafail.audit import QueryEngine, SnapshotStore
from mhafail.errors import UnknownSeries
from mhafail.testing import EventProcess, ZooKeeperServer

pytestmark = pytest.mark.zookeeper

Event = dict[str, Any]


class AuditNode(EventProcess):
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
        session_timeout: str = "1",
        args: tuple[str, ...] = (),
    ) -> None:
        argv = [
            sys.executable, "-m", "mhafail", "audit", "node", "--zk", zk, "--cluster", cluster,
            "--node", name, "--series", "conn:ipv4:60:6", "--interval", "0.1",
            "--timeout", timeout, "--session-timeout", session_timeout,
            "--role", "manager" if listen else "mta",
        ]  # fmt: skip
        secret = logs.parent / "audit-secret"
        if not secret.exists():
            secret.write_bytes(b"audit-nodes-test-secret-0123\n")
            secret.chmod(0o600)
        argv += ["--secret-file", str(secret)]
        if listen:
            argv += ["--listen", "127.0.0.1:0"]
        super().__init__([*argv, *args], name=name, stdin=True, log_dir=logs)
        self._line = 0

    def start(
        self, ready: Callable[[Event], bool] | None = None, timeout: float = 30.0
    ) -> AuditNode:
        """Start the process (a new incarnation); wait_ready() waits for it."""
        self._line = 0
        super().start(ready, timeout)
        return self

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """Return the first event of this incarnation matching ``predicate``."""
        return super().wait_event(predicate, timeout)

    def wait_ready(self) -> Event:
        return self.wait_event(lambda e: e["event"] == "ready")

    def _ask(self, text: str) -> Event:
        self._line += 1
        line = self._line
        self.send(text)
        return self.wait_event(lambda e: e.get("line") == line)

    def command(self, text: str) -> Event:
        """Send one command line and return the event answering it."""
        event = self._ask(text)
        assert event["event"] != "error", event
        return event

    def refused(self, text: str) -> str:
        """Send a command that must fail and return the error it got."""
        event = self._ask(text)
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

    # A node crashes and comes back under the same name: a new origin, which gets
    # its own pre-crash counts back from its receivers (m and c), once.
    a.kill()
    a.start().wait_ready()
    a.wait_count("0.0.0.0/0", 60)
    a.command("add conn 198.18.0.1 30")
    m.wait_count("198.18.0.1", 80)  # the dead incarnation's 50 stay, the new 30 add to them
    c.wait_count("198.18.0.1", 80)
    b.command("add conn 203.0.113.5 1")  # a barrier: once it arrives, later batches went too
    m.wait_count("203.0.113.0/24", 21)
    c.wait_count("203.0.113.0/24", 21)
    assert a.command("flush 10")["ok"] is True
    assert (m.count("198.18.0.1"), m.count("0.0.0.0/0")) == (80, 117)
    assert (c.count("198.18.0.1"), c.count("0.0.0.0/0")) == (80, 117)
    assert (a.count("198.18.0.1"), a.count("0.0.0.0/0")) == (80, 90)
    assert a.command("stats")["restored"] == {"conn": 60}

    # The manager crashes and comes back empty: each live node refills it once (a's
    # restored 60 included, pushed as history), and c, a receiver of m's own pushes,
    # hands m's own pre-crash count back.
    m.kill()
    m.start().wait_ready()
    m.wait_count("0.0.0.0/0", 117)
    b.command("add conn 203.0.113.5 1")
    m.wait_count("203.0.113.0/24", 22)
    for node in (a, b, c):
        assert node.command("flush 10")["ok"] is True
    assert (m.count("198.18.0.1"), m.count("0.0.0.0/0")) == (80, 118)
    stats = m.command("stats")
    assert stats["received"]["snapshots"] == 3
    assert stats["received"]["histories_merged"] == 1
    assert stats["received"]["gaps"] == 0
    assert stats["restored"] == {"conn": 1}
    assert c.count("0.0.0.0/0") == 118  # c kept everything: 117 + the second barrier
    assert m.terminate() == 0
    assert m.events[-1]["event"] == "stopped"


def test_a_restarted_node_comes_back_with_the_true_sum_once(
    nodes: Callable[..., AuditNode],
) -> None:
    """A SIGKILLed node restarts with its own pre-crash counts, once, from two receivers."""
    m = nodes("m", listen=True)
    c = nodes("c", listen=True)  # peer sharing: a receiver that counts too
    a = nodes("a")
    for node in (m, c, a):
        node.start()
    for node in (m, c, a):
        node.wait_ready()
    for i in range(1, 6):
        a.command(f"add conn 198.18.0.{i} {i * 10}")  # 150 in all, over several batches
        time.sleep(0.12)
    c.command("add conn 198.19.0.1 5")
    m.command("add conn 203.0.113.1 1")
    for node in (m, c):
        node.wait_count("0.0.0.0/0", 156)
    for restored in (150, 151):  # the second restart gets both earlier incarnations back
        a.kill()  # SIGKILL: nothing is flushed or said
        a.start().wait_ready()
        a.wait_count("0.0.0.0/0", restored)
        a.command("add conn 198.18.0.1 1")
        # flush returns once both receivers confirmed the new batch, which a sender
        # pushes only after it merged that receiver's history: both histories are in.
        assert a.command("flush 10")["ok"] is True
        assert a.count("0.0.0.0/0") == restored + 1
        assert a.command("stats")["restored"] == {"conn": restored}
    for node in (m, c):
        node.wait_count("0.0.0.0/0", 158)
    assert (m.count("198.18.0.1"), c.count("198.18.0.1"), a.count("198.18.0.1")) == (12, 12, 12)
    # The peer-sharing receiver crashes too: it comes back with its own 5 (from m) and
    # everyone else's live counts (snapshots), which is the cluster sum once more.
    c.kill()
    c.start().wait_ready()
    c.wait_count("0.0.0.0/0", 158)
    assert c.command("flush 10")["ok"] is True
    assert c.command("stats")["restored"] == {"conn": 5}
    assert (m.count("0.0.0.0/0"), c.count("0.0.0.0/0"), a.count("0.0.0.0/0")) == (158, 158, 152)


def test_a_paused_receiver_gets_every_batch_once(
    nodes: Callable[..., AuditNode], tmp_path: Path
) -> None:
    """Pushes that time out while the manager is stopped arrive after it resumes, once."""
    snapshots = tmp_path / "snapshots"
    # 2 s sessions: the 1.2 s pause must stay inside m's session, so that a keeps
    # m as a peer and its pushes time out (a shorter session would drop m instead).
    m = nodes(
        "m", listen=True, session_timeout="2",
        args=("--log-dir", str(snapshots), "--log-interval", "0.2"),
    )  # fmt: skip
    a = nodes("a", timeout="0.3", session_timeout="2")
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
