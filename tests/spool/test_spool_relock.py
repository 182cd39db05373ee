"""SpoolLock(reacquire=True): a fenced lock takes the spool back by itself, real ZooKeeper."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mhafail.coordination import Coordinator
from mhafail.errors import SpoolFenced, SpoolInvalidArgument
from mhafail.spool import Envelope, LockState, NodePaths, Spool, SpoolLock
from mhafail.testing import TcpProxy, ZooKeeperServer

pytestmark = pytest.mark.zookeeper

ENV = Envelope(sender="a@example.org", recipients=("b@example.net",))
Factory = Callable[..., Coordinator]


def wait(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Poll until ``predicate()`` holds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


@pytest.fixture
def cut_off(
    coordinator_factory: Factory, tcp_proxy_factory: Callable[[str], TcpProxy],
    zookeeper: ZooKeeperServer, tmp_path: Path,
) -> tuple[TcpProxy, SpoolLock, NodePaths]:  # fmt: skip
    """A re-acquiring lock held through a proxy (T = 1 s); the test cuts the proxy."""
    proxy = tcp_proxy_factory(zookeeper.address)
    c = coordinator_factory(hosts=proxy.address, session_timeout=1.0, server_tick=0.1)
    paths = NodePaths(tmp_path, "c1", "n1").create()
    lock = SpoolLock(coordinator=c, paths=paths, reacquire=True, reacquire_interval=0.2)
    return proxy, lock, paths


def test_a_bad_retry_interval_is_refused(coordinator_factory: Factory, tmp_path: Path) -> None:
    """A non-positive, non-numeric or huge reacquire_interval raises SpoolInvalidArgument."""
    paths = NodePaths(tmp_path, "c1", "n1")
    c = coordinator_factory()
    for bad in (0, -1.0, "1", 1e9):
        with pytest.raises(SpoolInvalidArgument, match="reacquire_interval"):
            SpoolLock(coordinator=c, paths=paths, reacquire=True, reacquire_interval=bad)  # type: ignore[arg-type]
    assert not (tmp_path / "nodes").exists()  # nothing created


def test_after_a_session_loss_the_lock_is_taken_back_and_the_spool_works(
    cut_off: tuple[TcpProxy, SpoolLock, NodePaths],
) -> None:
    """Cut off past the session, the lock is FENCED; reconnected, it is HELD again on its own."""
    proxy, lock, paths = cut_off
    states: list[LockState] = []
    lock.add_listener(states.append)
    first = lock.acquire(5)
    spool = Spool(directory=paths.spool, node="n1", fence=lock, group_commit=False).open()
    spool.put(ENV, b"before")
    proxy.cut()
    wait(lambda: LockState.FENCED in states)
    with pytest.raises(SpoolFenced):
        spool.put(ENV, b"refused")
    time.sleep(1.5)  # past the session timeout: the server expires the session
    proxy.restore()
    wait(lambda: lock.state is LockState.HELD)
    assert states[-2:] == [LockState.FENCED, LockState.HELD]
    assert lock.token > first  # a new session's lock znode: a larger token
    spool.put(ENV, b"after")
    assert len(spool) == 2
    spool.close()
    lock.release()


def test_the_retry_waits_for_the_spools_current_holder(
    cut_off: tuple[TcpProxy, SpoolLock, NodePaths], coordinator_factory: Factory
) -> None:
    """While another holder (a survivor importing) has the spool, retries wait; then they win."""
    proxy, lock, paths = cut_off
    lock.acquire(5)
    proxy.cut()
    wait(lambda: lock.state is LockState.FENCED)
    survivor = SpoolLock(coordinator=coordinator_factory(), paths=paths)
    survivor.acquire(10)  # waits until the cut-off session expired
    proxy.restore()
    time.sleep(1.0)
    assert lock.state is LockState.FENCED  # still waiting behind the survivor
    survivor.release()
    wait(lambda: lock.state is LockState.HELD)
    assert lock.token > survivor.token
    lock.release()


def test_release_ends_the_retries_and_holds_nothing(
    cut_off: tuple[TcpProxy, SpoolLock, NodePaths],
) -> None:
    """A fenced lock released by the application stays released once ZooKeeper is back."""
    proxy, lock, _ = cut_off
    lock.acquire(5)
    proxy.cut()
    wait(lambda: lock.state is LockState.FENCED)
    began = time.monotonic()
    lock.release()
    assert time.monotonic() - began < 5
    time.sleep(1.5)  # the cut-off session expires on the server, and its znode with it
    proxy.restore()
    time.sleep(2.0)
    assert lock.state is LockState.RELEASED
    wait(lambda: lock.holder() is None)  # the old session's znode went with it, no new one
