"""Takeover with real processes, a real ZooKeeper and a shared directory standing in for the SAN.

Each node is ``helpers/spool_node.py`` (coordinator, membership, spool lock,
spool, takeover); delivered messages go to a TCP sink in the test, which
counts them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mhafail.errors import TestingError
from mhafail.spool import rank
from mhafail.testing import EventProcess, ZooKeeperServer

pytestmark = pytest.mark.zookeeper

NODE = str(Path(__file__).parent / "helpers" / "spool_node.py")


class Sink:
    """A TCP next hop: records one ``<id> <node>`` line per delivery and answers ``ok``."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            for raw in reader:
                mid, node = raw.decode().split()
                with self._lock:
                    self.lines.append((mid, node))
                conn.sendall(b"ok\n")

    def ids(self) -> collections.Counter[str]:
        """How often each id was delivered."""
        with self._lock:
            return collections.Counter(m for m, _ in self.lines)

    def wait_for(self, count: int, timeout: float) -> None:
        """Wait until ``count`` distinct ids arrived."""
        end = time.monotonic() + timeout
        while len(self.ids()) < count:
            if time.monotonic() > end:
                raise AssertionError(f"sink has {len(self.ids())} of {count} messages")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop accepting."""
        self._server.close()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """A delivery sink; closed after the test."""
    s = Sink()
    yield s
    s.close()


@pytest.fixture
def spawn(
    zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path, sink: Sink
) -> Iterator[Callable[..., EventProcess]]:
    """Start spool nodes sharing ``tmp_path/san``; all killed after the test."""
    root = tmp_path / "san"
    root.mkdir()
    made: list[EventProcess] = []

    def make(node: str, *extra: str, start: bool = True) -> EventProcess:
        argv = [
            sys.executable, NODE, "--zk", zookeeper.address, "--cluster", zk_cluster,
            "--node", node, "--root", str(root), "--sink", sink.address, *extra,
        ]  # fmt: skip
        proc = EventProcess(argv, name=node, stdin=True, log_dir=tmp_path)
        made.append(proc)
        if start:
            proc.start(timeout=30)
        return proc

    yield make
    for proc in made:
        if proc.running:
            proc.resume()
            proc.kill()


def takeovers(procs: list[EventProcess], of: str, kind: str = "complete") -> list[dict[str, Any]]:
    """The takeover events of ``kind`` for node ``of`` printed by ``procs``."""
    return [
        e
        for p in procs
        for e in p.events
        if e["event"] == "takeover" and e["node"] == of and e["kind"] == kind
    ]


def put(proc: EventProcess, count: int) -> list[str]:
    """Have ``proc`` put ``count`` messages; return their ids."""
    proc.send(f"put {count}")
    event = proc.wait_event(lambda e: e["event"] == "put", 60)
    assert event["count"] == count
    return list(event["ids"])


def test_sigkill_one_survivor_imports_all_and_each_is_delivered_once(
    spawn: Callable[..., EventProcess], sink: Sink, tmp_path: Path
) -> None:
    """A node holding 1,000 messages is SIGKILLed: one survivor imports all, each delivered once."""
    a = spawn("a")
    ids = put(a, 1000)
    b = spawn("b", "--deliver")
    c = spawn("c", "--deliver")
    a.kill()
    sink.wait_for(1000, 30)
    time.sleep(0.5)  # room for a duplicate to show up
    counts = sink.ids()
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    done = takeovers([b, c], "a")
    assert len(done) == 1
    assert done[0]["moved"] == 1000
    assert os.listdir(tmp_path / "san" / "nodes" / "a" / "spool" / "msg") == []


def test_importer_killed_midway_another_finishes_without_duplicate_or_loss(
    spawn: Callable[..., EventProcess], sink: Sink
) -> None:
    """The survivor importing a dead spool is SIGKILLed after one batch; the other finishes."""
    first, second = rank("a", ["b", "c"])
    a = spawn("a")
    ids = put(a, 1200)
    a.send("file")  # filed in msg/: moved in batches of 20 (the log comes over at once)
    a.wait_event(lambda e: e["event"] == "filed", 30)
    a.send("put 300")  # these stay in the log only
    later = a.wait_event(lambda e: e["event"] == "put" and e["ids"][0] not in ids, 60)
    assert later["count"] == 300
    ids += later["ids"]
    importer = spawn(first, "--batch", "20")
    finisher = spawn(second, "--deliver", "--batch", "500")
    a.kill()
    importer.wait_event(
        lambda e: e["event"] == "takeover" and e["kind"] == "batch" and e["node"] == "a", 30
    )
    importer.kill()
    sink.wait_for(1500, 40)
    time.sleep(0.5)
    counts = sink.ids()
    assert set(counts) == set(ids)
    assert max(counts.values()) == 1
    # The finisher resumed the interrupted import of a and took over the importer's spool.
    resumed = takeovers([finisher], "a")
    assert resumed and resumed[-1]["moved"] < 1500
    assert takeovers([finisher], first)


def test_two_survivors_racing_for_one_dead_node_only_one_imports(
    spawn: Callable[..., EventProcess], sink: Sink
) -> None:
    """With no placement delay both survivors try at once; exactly one imports."""
    a = spawn("a")
    ids = put(a, 300)
    b = spawn("b", "--deliver", "--step", "0")
    c = spawn("c", "--deliver", "--step", "0")
    a.kill()
    sink.wait_for(300, 30)
    time.sleep(1.0)
    assert set(sink.ids()) == set(ids)
    assert max(sink.ids().values()) == 1
    started = takeovers([b, c], "a", "started")
    assert len(started) == 1
    assert [e["moved"] for e in takeovers([b, c], "a")] == [300]


def test_sigstop_past_the_session_fences_the_node_for_good(
    spawn: Callable[..., EventProcess], sink: Sink, tmp_path: Path
) -> None:
    """A node frozen past its session is taken over; resumed, its writes and deliveries fail."""
    a = spawn("a")
    b = spawn("b", "--deliver")
    a.send("produce")
    a.wait_event(lambda e: e["event"] == "acked", 10)
    time.sleep(0.3)
    a.pause()
    paused_at = time.monotonic()
    # Frozen inside a change, it holds the lock file and the claim waits for
    # it (docs/spool.md); either way the takeover completes once it resumes.
    with contextlib.suppress(TestingError):
        b.wait_event(lambda e: e["event"] == "takeover" and e["kind"] == "complete", 6)
    a.resume()
    resumed_at = time.monotonic()
    b.wait_event(lambda e: e["event"] == "takeover" and e["kind"] == "complete", 15)
    a.wait_event(lambda e: e["event"] == "lock" and e["state"] == "fenced", 5)
    time.sleep(1.0)
    a.send("deliver")  # the stale process tries to deliver what it thinks it holds
    time.sleep(1.0)
    acked = [e["id"] for e in a.events if e["event"] == "acked"]
    assert acked
    # A put acknowledged before the freeze may print its event after the
    # resume (SIGSTOP between the two): what counts is when the put began,
    # and below, that every acknowledged message reaches the sink once, by b.
    late = [e for e in a.events if e["event"] == "acked" and e["started"] > paused_at]
    assert late == [], "a put begun after the freeze was acknowledged"
    assert any(e["event"] == "refused" and e["t"] > resumed_at for e in a.events)
    sink.wait_for(len(acked), 15)
    counts = sink.ids()
    assert set(acked) <= set(counts)
    assert max(counts.values()) == 1
    assert len(set(counts) - set(acked)) <= 1  # at most the put in flight at the freeze
    assert all(node == "b" for _, node in sink.lines)
    assert os.listdir(tmp_path / "san" / "nodes" / "a" / "spool" / "msg") == []
