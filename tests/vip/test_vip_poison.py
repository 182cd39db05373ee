"""Poison pills (issue 11, finding 4): malformed shared znodes are skipped, never fatal.

Real ZooKeeper, real VipManagers with the fake plumber, in-process nodes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import attrs
import pytest
from fakecluster import wait_for

from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.testing import FakeNetwork, FakePlumber
from mhafail.vip import RebalancePolicy, VipManager, parse_vip

pytestmark = pytest.mark.zookeeper

A = "198.18.0.200"
POISONS = (b"[" * 5000, b"{" * 100_000, b"[]", b"\xff\xfe", b'{"address": 1e400}', b"null")


@attrs.define
class Node:
    name: str
    coordinator: Coordinator
    membership: Membership
    manager: VipManager

    def crash(self) -> None:
        """Stop without handing over: the session ends, its claim vanishes."""
        self.manager.stop(release=False)
        self.membership.stop()
        self.coordinator.stop()


@pytest.fixture
def make_node(
    coordinator_factory: Callable[..., Coordinator],
) -> Iterator[Callable[[str, FakeNetwork], Node]]:
    made: list[Node] = []

    def make(name: str, network: FakeNetwork) -> Node:
        c = coordinator_factory(session_timeout=1.0)
        m = Membership(coordinator=c, info=NodeInfo(name=name, pid=os.getpid(), host="t")).start()
        plumber = FakePlumber(network, name, {"eth0": [f"198.18.0.{11 + len(made)}/24"]})
        manager = VipManager(
            coordinator=c,
            membership=m,
            plumber=plumber,
            vips=[parse_vip(f"{A}/24@eth0")],
            rebalance=RebalancePolicy.immediate(),
            claim_step=0.1,
            reconcile_interval=0.5,
            announce_schedule=(0.0,),
        ).start()
        node = Node(name, c, m, manager)
        made.append(node)
        return node

    yield make
    for node in made:
        node.crash()


def holder(network: FakeNetwork) -> str | None:
    holders = network.holders(A)
    assert len(holders) <= 1, f"two owners of {A}: {holders}"
    return next(iter(holders), None)


def test_poisoned_declarations_members_and_targets_do_not_stop_failover(
    coordinator_factory: Callable[..., Coordinator],
    make_node: Callable[[str, FakeNetwork], Node],
) -> None:
    """With poison in declarations, members, the target and drains, a survivor still takes over."""
    attacker = coordinator_factory().znodes
    for i, poison in enumerate(POISONS):
        attacker.create(f"vips/{A}/declared/evil{i}", poison, makepath=True)
        attacker.create(f"members/evil{i}", poison, makepath=True)
    attacker.create(f"targets/{A}", b"[" * 5000, makepath=True)
    attacker.create("drained/ghost", b"[" * 5000, makepath=True)
    network = FakeNetwork()
    nodes = {n: make_node(n, network) for n in ("n1", "n2")}
    wait_for(lambda: holder(network) is not None)
    old = holder(network)
    assert old is not None
    survivor = next(n for n in nodes if n != old)
    # The views kept working: only the two real members are in them.
    view = nodes[survivor].membership.wait_for(lambda v: len(v) == 2, timeout=10)
    assert view.names == ("n1", "n2")
    nodes[old].crash()
    wait_for(lambda: holder(network) == survivor)
    assert network.max_holders(A) == 1
    # A member joining after the poison is still seen: the view did not freeze.
    make_node("n3", network)
    nodes[survivor].membership.wait_for(lambda v: "n3" in v, timeout=10)


def test_poisoned_claim_reads_as_held_by_nobody_known(
    coordinator_factory: Callable[..., Coordinator],
    make_node: Callable[[str, FakeNetwork], Node],
) -> None:
    """A squatted claim with poison content blocks nobody for longer than it lives."""
    squatter = coordinator_factory(session_timeout=1.0)
    squatter.znodes.create(f"vips/{A}/owner", b"[" * 5000, ephemeral=True, makepath=True)
    network = FakeNetwork()
    node = make_node("n1", network)
    time.sleep(0.5)
    assert holder(network) is None  # the claim exists: nobody may plumb
    assert node.manager.owner_of(A) is None
    squatter.stop()
    wait_for(lambda: holder(network) == "n1")
