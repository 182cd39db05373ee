"""In-process VIP nodes on the fake plumber and a real ZooKeeper (on pytest's pythonpath).

The fixtures ``network`` and ``cluster`` are in ``tests/vip/conftest.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import attrs
import pytest

from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.testing import FakeNetwork, FakePlumber, TcpProxy, ZooKeeperServer
from mhafail.vip import Beat, RebalancePolicy, VipManager, parse_vip

A = "198.18.0.200"
B = "198.18.0.201"


@attrs.define
class Node:
    name: str
    coordinator: Coordinator
    membership: Membership
    plumber: FakePlumber
    manager: VipManager
    proxy: TcpProxy

    def stop(self, release: bool = True) -> None:
        self.manager.stop(release=release)
        self.membership.stop()
        self.coordinator.stop()


@pytest.fixture
def network() -> FakeNetwork:
    """The fake L2 segment every node plumbs into."""
    return FakeNetwork()


@pytest.fixture
def cluster(
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    network: FakeNetwork,
    tcp_proxy_factory: Callable[[str], TcpProxy],
) -> Iterator[Callable[..., Node]]:
    made: list[Node] = []

    def make(name: str, vips: list[str] = [A], **kw: object) -> Node:  # noqa: B006
        proxy = tcp_proxy_factory(zookeeper.address)
        timeout = float(kw.pop("session_timeout", 1.0))  # type: ignore[arg-type]
        c = Coordinator(
            hosts=proxy.address, cluster=zk_cluster, session_timeout=timeout, open_acl=True
        ).start()
        if "beat_budget" in kw:
            kw["beat"] = Beat(c, name, float(kw.pop("beat_budget")))  # type: ignore[arg-type]
        m = Membership(coordinator=c, info=NodeInfo(name=name, pid=os.getpid(), host="t")).start()
        plumber = FakePlumber(network, name, {"eth0": [f"198.18.0.{10 + len(made) + 1}/24"]})
        kw.setdefault("rebalance", RebalancePolicy.immediate())
        kw.setdefault("claim_step", 0.1)
        kw.setdefault("reconcile_interval", 1.0)
        kw.setdefault("announce_schedule", (0.0, 0.2))
        try:
            manager = VipManager(
                coordinator=c,
                membership=m,
                plumber=plumber,
                vips=[parse_vip(f"{v}/24@eth0") if "@" not in v else parse_vip(v) for v in vips],
                **kw,  # type: ignore[arg-type]
            ).start()
        except Exception:
            # A refused spec: nobody else would stop these, and a membership
            # left running logs "converge pass postponed" for the rest of the run.
            m.stop()
            c.stop()
            raise
        node = Node(name, c, m, plumber, manager, proxy)
        made.append(node)
        return node

    yield make
    for node in made:
        try:
            node.proxy.restore()
            node.stop(release=False)
        except Exception:  # noqa: S110 - best-effort teardown of nodes a test already broke
            pass


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def holder(network: FakeNetwork, address: str) -> str | None:
    holders = network.holders(address)
    assert len(holders) <= 1, f"two owners of {address}: {holders}"
    return next(iter(holders), None)


def elected(
    cluster: Callable[..., Node],
    network: FakeNetwork,
    names: tuple[str, ...] = ("n1", "n2", "n3"),
    **kw: object,
) -> tuple[dict[str, Node], str]:
    """Start ``names`` (with ``kw``) declaring A; return them and the node elected its owner."""
    nodes = {n: cluster(n, **kw) for n in names}
    wait_for(lambda: holder(network, A) is not None)
    old = holder(network, A)
    assert old is not None
    return nodes, old
