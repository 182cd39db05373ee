"""Membership with real ZooKeeper and real member processes."""

import os
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from mhafail.coordination import ClusterView, Coordinator, Membership, NodeInfo
from mhafail.errors import InvalidArgument, NodeNameTaken
from mhafail.testing import NodeProcess, ZooKeeperServer, expire_session

pytestmark = pytest.mark.zookeeper

Factory = Callable[..., Coordinator]


@pytest.fixture
def nodes(zookeeper: ZooKeeperServer, zk_cluster: str) -> Iterator[Callable[[str], NodeProcess]]:
    made: list[NodeProcess] = []

    def make(name: str) -> NodeProcess:
        node = NodeProcess(zk=zookeeper.address, cluster=zk_cluster, node=name, session_timeout=1.0)
        made.append(node)
        return node.start()

    yield make
    for node in made:
        node.kill()


def my_info(name: str) -> NodeInfo:
    return NodeInfo(name=name, host=socket.gethostname(), pid=os.getpid(), started_at=time.time())


def test_three_processes_see_each_other(nodes: Callable[[str], NodeProcess]) -> None:
    """Every member process's view lists all three members."""
    procs = [nodes(n) for n in ("n1", "n2", "n3")]
    for p in procs:
        p.wait_view(["n1", "n2", "n3"], 15)


def test_killed_member_leaves_every_view_after_its_session_times_out(
    nodes: Callable[[str], NodeProcess],
) -> None:
    """A SIGKILLed member disappears from the others' views once its session expires."""
    procs = [nodes(n) for n in ("n1", "n2", "n3")]
    for p in procs:
        p.wait_view(["n1", "n2", "n3"], 15)
    killed_at = time.monotonic()
    procs[2].kill()
    for p in procs[:2]:
        event = p.wait_view(["n1", "n2"], 15)
        assert event["t"] > killed_at


def test_restarted_member_rejoins_after_its_predecessor_expires(
    nodes: Callable[[str], NodeProcess],
) -> None:
    """A member restarted right after a crash waits out its dead predecessor, then joins."""
    n1, n2 = nodes("n1"), nodes("n2")
    n1.wait_view(["n1", "n2"], 15)
    n2.kill()
    n2.start(timeout=20)  # same name, same host: the stale znode is waited out
    n1.wait_view(["n1", "n2"], 15)
    n2.wait_view(["n1", "n2"], 15)


def test_duplicate_live_node_name_is_refused(
    nodes: Callable[[str], NodeProcess], coordinator_factory: Factory
) -> None:
    """Registering a name that a live process holds raises NodeNameTaken."""
    live = nodes("dup")
    live.wait_view(["dup"], 15)
    membership = Membership(coordinator=coordinator_factory(), info=my_info("dup"))
    with pytest.raises(NodeNameTaken, match=f"pid {live.pid}"):
        membership.start()


def test_session_expiry_leads_to_reregistration(coordinator_factory: Factory) -> None:
    """After its session expires, a member registers again in the new session."""
    coordinator = coordinator_factory(session_timeout=1.0)
    observer = Membership(coordinator=coordinator_factory(), info=my_info("observer")).start()
    member = Membership(coordinator=coordinator, info=my_info("m1")).start()
    try:
        observer.wait_for(lambda v: "m1" in v, 10)
        old = expire_session(coordinator)
        observer.wait_for(lambda v: "m1" not in v, 10)
        observer.wait_for(lambda v: "m1" in v, 10)
        node = coordinator.znodes.get("members/m1")
        assert node is not None
        assert node.ephemeral_owner == coordinator.session_id != old
    finally:
        member.stop()
        observer.stop()


def test_view_listeners_receive_frozen_views(coordinator_factory: Factory) -> None:
    """Listeners get immutable ClusterView values with increasing generations."""
    a = Membership(coordinator=coordinator_factory(), info=my_info("a"))
    views: list[ClusterView] = []
    a.add_listener(views.append)
    a.start()
    b = Membership(coordinator=coordinator_factory(), info=my_info("b")).start()
    try:
        a.wait_for(lambda v: v.names == ("a", "b"), 10)
        b.stop()
        a.wait_for(lambda v: v.names == ("a",), 10)
        generations = [v.generation for v in views]
        assert generations == sorted(generations)
        assert views[-1].get("b") is None
        with pytest.raises(AttributeError):
            views[-1].generation = 0  # type: ignore[misc]
    finally:
        a.stop()


def test_malformed_member_info_is_refused() -> None:
    """Member data that is not a NodeInfo document raises InvalidArgument."""
    with pytest.raises(InvalidArgument, match="malformed member info"):
        NodeInfo.from_json(b"not json")
    with pytest.raises(InvalidArgument):
        NodeInfo(name="bad name")
