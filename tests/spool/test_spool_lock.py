"""SpoolLock against a real ZooKeeper: tokens, fencing on lease loss, drain/import orders, CLI."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from mhafail.cli import main
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.errors import SpoolFenced, SpoolWriteFailed
from mhafail.spool import (
    Envelope,
    EventKind,
    LockState,
    NodePaths,
    Spool,
    SpoolLock,
    Takeover,
    TakeoverEvent,
)
from mhafail.spool._journal import read_journal
from mhafail.testing import TcpProxy, ZooKeeperServer, expire_session

pytestmark = pytest.mark.zookeeper

ENV = Envelope(sender="a@example.org", recipients=("b@example.net",))
Factory = Callable[..., Coordinator]


@attrs.define
class Stack:
    """One in-process node: coordinator, membership, lock, spool, takeover."""

    coordinator: Coordinator
    membership: Membership
    lock: SpoolLock
    spool: Spool
    takeover: Takeover
    events: list[TakeoverEvent]

    def stop(self) -> None:
        """Stop everything but the coordinator (the fixture stops it)."""
        self.takeover.stop()
        self.spool.close()
        self.lock.release()
        self.membership.stop()


@pytest.fixture
def stacks(coordinator_factory: Factory, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Make in-process nodes sharing ``tmp_path/san``; stopped after the test."""
    root = tmp_path / "san"
    root.mkdir(exist_ok=True)
    made: list[Stack] = []

    def make(name: str, *, grace: float = 60.0, refresh: float = 0.2, **kwargs: Any) -> Stack:
        c = coordinator_factory(session_timeout=1.0, server_tick=0.1, **kwargs)
        m = Membership(coordinator=c, info=NodeInfo(name=name)).start()
        paths = NodePaths(root, c.cluster, name).create()
        lock = SpoolLock(coordinator=c, paths=paths)
        lock.acquire(10)
        spool = Spool(directory=paths.spool, node=name, fence=lock).open()
        takeover = Takeover(
            coordinator=c,
            membership=m,
            paths=paths,
            spool=spool,
            lock=lock,
            grace=grace,
            step=0.5,
            refresh=refresh,
        )
        events: list[TakeoverEvent] = []
        takeover.add_listener(events.append)
        stack = Stack(c, m, lock, spool, takeover.start(), events)
        made.append(stack)
        return stack

    yield make
    for stack in made:
        stack.stop()


def wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until ``predicate()`` holds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def test_a_lock_that_goes_after_its_node_left_starts_the_takeover_by_its_watch(
    stacks: Callable[..., Stack],
) -> None:
    """A gone node's lock vanishing starts the takeover by itself, with no periodic pass."""
    survivor = stacks("n1", grace=0.0, refresh=3600.0)  # no periodic pass within the test
    dead = stacks("n2", grace=600.0)
    mids = {dead.spool.put(ENV, f"m{i}".encode()) for i in range(20)}
    dead.takeover.stop()
    dead.membership.stop()  # gone from the membership, its lock still held
    wait(lambda: "n2" not in survivor.membership.view.names)
    passes_after_now(survivor)  # a pass found n2 gone but its lock held
    assert survivor.events == []
    dead.coordinator.stop()  # only the lock goes now: nothing else for a watch to see
    wait(lambda: any(e.kind is EventKind.COMPLETE for e in survivor.events), timeout=30.0)
    kinds = [e.kind for e in survivor.events]
    assert kinds[0] is EventKind.STARTED and kinds[-1] is EventKind.COMPLETE
    assert set(survivor.spool.ids()) == mids


def passes_after_now(stack: Stack) -> None:
    """Wait for two kicked takeover passes: the second began after this call."""
    loop = stack.takeover._loop
    assert loop is not None
    passes = loop.passes  # a pass running now may have begun before: hence two
    for more in (1, 2):
        stack.takeover.kick()
        assert loop.wait_passes(passes + more, 10.0)


def test_the_lock_watches_are_placed_again_under_a_new_session(
    stacks: Callable[..., Stack],
) -> None:
    """After the survivor's session expired, a gone node's lock going still starts the takeover."""
    survivor = stacks("n1", grace=0.0, refresh=3600.0)  # no periodic pass within the test
    dead = stacks("n2", grace=600.0)
    mids = {dead.spool.put(ENV, f"m{i}".encode()) for i in range(5)}
    dead.takeover.stop()
    passes_after_now(survivor)  # the watch of n2's lock is placed
    old = expire_session(survivor.coordinator)
    wait(lambda: survivor.coordinator.session_id not in (None, old))
    survivor.lock.acquire(10)  # its own lock went with the old session
    wait(lambda: "n1" in survivor.membership.view.names)
    passes_after_now(survivor)
    dead.membership.stop()
    wait(lambda: "n2" not in survivor.membership.view.names)
    passes_after_now(survivor)
    assert [e for e in survivor.events if e.kind is not EventKind.FAILED] == []
    dead.coordinator.stop()
    wait(lambda: any(e.kind is EventKind.COMPLETE for e in survivor.events), timeout=30.0)
    assert set(survivor.spool.ids()) == mids


def test_tokens_grow_and_a_held_lock_is_exclusive(
    coordinator_factory: Factory, tmp_path: Path
) -> None:
    """The token is the lock znode's zxid; a second holder waits, then gets a higher token."""
    paths = NodePaths(tmp_path, "c1", "n1").create()
    first = SpoolLock(coordinator=coordinator_factory(), paths=paths)
    token = first.acquire(5)
    assert token > 0
    spool = Spool(directory=paths.spool, node="n1", fence=first, group_commit=False).open()
    spool.put(ENV, b"x")
    second = SpoolLock(coordinator=coordinator_factory(), paths=paths)
    with pytest.raises(SpoolFenced, match="held by n1"):
        second.acquire(0.5)
    first.release()
    assert second.acquire(5) > token
    with pytest.raises(SpoolFenced):
        spool.put(ENV, b"y")
    again = Spool(directory=paths.spool, node="n1", fence=second, group_commit=False).open()
    assert len(again) == 1
    second.release()


def test_session_loss_fences_at_once_and_tells_the_application(
    coordinator_factory: Factory, tcp_proxy_factory: Callable[[str], TcpProxy],
    zookeeper: ZooKeeperServer, tmp_path: Path,
) -> None:  # fmt: skip
    """Cut off from ZooKeeper, the lock turns FENCED when the lease ends; puts are refused."""
    proxy = tcp_proxy_factory(zookeeper.address)
    c = coordinator_factory(hosts=proxy.address, session_timeout=1.0, server_tick=0.1)
    paths = NodePaths(tmp_path, "c1", "n1").create()
    lock = SpoolLock(coordinator=c, paths=paths)
    states: list[LockState] = []
    lock.add_listener(states.append)
    lock.acquire(5)
    spool = Spool(directory=paths.spool, node="n1", fence=lock, group_commit=False).open()
    spool.put(ENV, b"x")
    proxy.cut()
    wait(lambda: LockState.FENCED in states, 5)
    with pytest.raises(SpoolFenced) as caught:
        spool.put(ENV, b"y")
    assert caught.value.smtp_reply.startswith("421")
    assert len(list((paths.spool / "msg").iterdir())) == 1
    start = time.monotonic()
    lock.release()  # ZooKeeper unreachable: bounded
    spool.close()
    assert time.monotonic() - start < 5
    proxy.restore()


def test_takeover_stop_is_bounded_without_zookeeper(
    coordinator_factory: Factory, tcp_proxy_factory: Callable[[str], TcpProxy],
    zookeeper: ZooKeeperServer, tmp_path: Path,
) -> None:  # fmt: skip
    """Every stop (takeover, lock, membership) returns within 5 s with ZooKeeper unreachable."""
    proxy = tcp_proxy_factory(zookeeper.address)
    c = coordinator_factory(hosts=proxy.address, request_timeout=30.0)
    m = Membership(coordinator=c, info=NodeInfo(name="n1")).start()
    paths = NodePaths(tmp_path, "c1", "n1").create()
    lock = SpoolLock(coordinator=c, paths=paths)
    lock.acquire(5)
    spool = Spool(directory=paths.spool, node="n1", fence=lock).open()
    takeover = Takeover(
        coordinator=c, membership=m, paths=paths, spool=spool, lock=lock, refresh=0.1
    ).start()
    proxy.cut()
    start = time.monotonic()
    takeover.stop()
    spool.close()
    lock.release()
    m.stop()
    c.stop()
    assert time.monotonic() - start < 5
    proxy.restore()


def run(*argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """Run the CLI in-process with --json; return the status and the parsed output."""
    capsys.readouterr()
    status = main(list(argv))
    out = capsys.readouterr().out
    return status, json.loads(out) if out.strip() else None


def test_drain_moves_a_live_nodes_spool_and_clear_lets_it_take_mail(
    stacks: Callable[..., Stack], zookeeper: ZooKeeperServer, zk_cluster: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``spool drain`` releases the node's lock and another imports it; ``--clear`` ends it."""
    n1 = stacks("n1")
    n2 = stacks("n2")
    ids = [n1.spool.put(ENV, b"m%d" % i) for i in range(5)]
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster]
    status, out = run("spool", "drain", "n1", "--to", "n2", "--wait", "10", "--json", *zk,
                      capsys=capsys)  # fmt: skip
    assert status == 0
    assert out["takeover"] == {"by": "n2", "moved": 5, "token": out["takeover"]["token"]}
    assert n1.lock.state is LockState.RELEASED
    assert any(e.kind is EventKind.DRAINED for e in n1.events)
    assert sorted(n2.spool.ids()) == sorted(ids)
    with pytest.raises(SpoolFenced, match="drained"):
        n1.lock.acquire(1)
    root = str(tmp_path / "san")
    status, out = run("spool", "status", "--root", root, "--json", *zk, capsys=capsys)
    by_node = {s["node"]: s for s in out["spools"]}
    assert by_node["n1"]["order"]["action"] == "drain"
    assert by_node["n1"]["messages"] == 0
    assert by_node["n2"]["messages"] == 5
    assert by_node["n2"]["holder"] == "n2"
    status, out = run("spool", "drain", "n1", "--clear", "--json", *zk, capsys=capsys)
    assert out["cleared"] is True
    assert n1.lock.acquire(5) > 0


def test_import_orders_a_dead_nodes_spool_in_without_grace(
    stacks: Callable[..., Stack], zookeeper: ZooKeeperServer, zk_cluster: str,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """``spool import`` has a survivor take a dead node's spool now; list/show read it first."""
    n1 = stacks("n1", grace=600.0)
    n2 = stacks("n2", grace=600.0)
    dead = stacks("n3", grace=600.0)
    mid = dead.spool.put(ENV, b"queued")
    dead.stop()
    dead.coordinator.stop()
    wait(lambda: "n3" not in n1.membership.view.names)
    root = str(tmp_path / "san")
    status, out = run("spool", "list", "n3", "--root", root, "--cluster", zk_cluster, "--json",
                      capsys=capsys)  # fmt: skip
    assert [m["id"] for m in out["messages"]] == [mid]
    status, out = run("spool", "show", "n3", mid, "--root", root, "--cluster", zk_cluster,
                      "--json", capsys=capsys)  # fmt: skip
    assert out["recipients"] == [{"address": "b@example.net", "state": "pending", "reason": ""}]
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster]
    status, out = run("spool", "import", "n1", "--json", *zk, capsys=capsys)
    assert status == 2  # n1 is alive: refused (drain it instead)
    status, out = run("spool", "import", "n3", "--to", "n1", "--wait", "10", "--json", *zk,
                      capsys=capsys)  # fmt: skip
    assert status == 0
    assert out["takeover"]["by"] == "n1"
    assert n1.spool.ids() == [mid]
    assert n2.spool.ids() == []
    assert n1.spool.read(mid) == b"queued"


def test_a_takeover_failing_after_announcing_a_batch_is_resumed_once(
    stacks: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A move failing after its combined journal write is resumed: each message once, none lost."""
    survivor = stacks("n1", grace=0.0, refresh=0.2)
    survivor.takeover.batch = 5
    dead = stacks("n2", grace=600.0)
    mids = {dead.spool.put(ENV, f"m{i}".encode()) for i in range(12)}
    dead.takeover.stop()
    dead.spool.close()  # every message filed: three batches of moves
    real_adopt = Spool.adopt
    calls: list[int] = []

    def adopt(self: Spool, source: Path, fence: Any, ids: Any) -> list[str]:
        calls.append(1)
        if len(calls) == 2:  # batch 2 is announced ("moved 1" with it), nothing moved
            raise SpoolWriteFailed("injected: the importer died here")
        return real_adopt(self, source, fence, ids)

    monkeypatch.setattr(Spool, "adopt", adopt)  # only the survivor imports
    dead.membership.stop()
    dead.coordinator.stop()
    wait(lambda: any(e.kind is EventKind.COMPLETE for e in survivor.events), timeout=30.0)
    kinds = [e.kind for e in survivor.events]
    assert EventKind.FAILED in kinds and kinds[-1] is EventKind.COMPLETE
    assert sorted(survivor.spool.ids()) == sorted(mids)
    assert not [n for n in os.listdir(dead.lock.paths.spool / "msg") if not n.endswith(".state")]
    entries = read_journal(dead.lock.paths.spool).entries
    ops = [(e["op"], e.get("n")) for e in entries]
    assert ops[:5] == [("begin", None), ("log", None), ("batch", 1), ("moved", 1), ("batch", 2)]
    assert ("resolved", 2) in ops and ops[-1] == ("complete", None)
    # One write per step: a step's record and the next one's announcement together.
    assert entries[1]["t"] == entries[2]["t"] and entries[3]["t"] == entries[4]["t"]
