"""VipManager against a real ZooKeeper, with the fake plumber (in-process nodes)."""

import threading
import time
from collections.abc import Callable

import pytest
from fakecluster import A, B, Node, elected, holder, wait_for

from mhafail.coordination import LeaseState
from mhafail.errors import InvalidVipSpec
from mhafail.testing import FakeNetwork
from mhafail.vip import RebalancePolicy, drain, move, parse_vip, show, undrain

pytestmark = pytest.mark.zookeeper


def test_one_owner_is_elected_and_plumbs(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """Three nodes declaring a VIP elect exactly one owner, which plumbs and announces it."""
    nodes = [cluster(n) for n in ("n1", "n2", "n3")]
    wait_for(lambda: holder(network, A) is not None)
    owner = holder(network, A)
    time.sleep(0.5)
    assert holder(network, A) == owner
    assert all(n.manager.owner_of(A) == owner for n in nodes)
    assert any(h == owner and a == A for _, h, a in network.announcements)
    assert network.max_holders(A) == 1


def test_cut_off_owner_drops_the_vip_before_a_survivor_takes_it(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """An owner cut off from ZooKeeper removes its VIP before anyone else adds it."""
    nodes, old = elected(cluster, network)
    nodes[old].proxy.cut()
    wait_for(lambda: holder(network, A) not in (None, old))
    assert network.max_holders(A) == 1
    # The manager itself drops the address (the lifetime is only the backstop) ...
    wait_for(lambda: not nodes[old].manager.owned())
    # ... and the old owner's hold ended before the new owner's began.
    spans = sorted(network.spans(A))
    old_end = max(end for start, end, h in spans if h == old)
    new_start = min(start for start, end, h in spans if h != old)
    assert old_end <= new_start


def test_session_expiry_moves_the_vip_and_the_old_owner_rejoins(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """After its session expires the owner drops the VIP; then exactly one node holds it.

    The old owner rejoins with a new session at once, so it may win the new
    election itself: what matters is that it let go first.
    """
    nodes = {n: cluster(n) for n in ("n1", "n2")}
    wait_for(lambda: holder(network, A) is not None)
    old = holder(network, A)
    assert old is not None
    old_session = nodes[old].coordinator.session_id
    expired_at = time.monotonic()
    # A real expiry: the server hears nothing for the session timeout. (The
    # kit's expire_session closes a session at once, which no lease can
    # anticipate; it is for membership tests, not for ownership.)
    nodes[old].proxy.cut()
    other = next(n for n in nodes if n != old)
    wait_for(lambda: holder(network, A) == other)
    nodes[old].proxy.restore()
    wait_for(lambda: nodes[old].coordinator.session_id not in (None, old_session))
    wait_for(lambda: any(end > expired_at for _, end, h in network.spans(A) if h == old))
    wait_for(lambda: holder(network, A) is not None)
    new = holder(network, A)
    wait_for(lambda: all(n.manager.owner_of(A) == new for n in nodes.values()))
    assert network.max_holders(A) == 1


def test_graceful_stop_hands_over_with_hooks(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """Stopping the owner runs pre_release, releases, and a survivor takes over at once."""
    nodes = {n: cluster(n) for n in ("n1", "n2")}
    wait_for(lambda: holder(network, A) is not None)
    old = holder(network, A)
    assert old is not None
    events: list[tuple[str, str]] = []
    done = threading.Event()
    nodes[old].manager.pre_release(lambda v: events.append(("pre_release", v.key)))
    nodes[old].manager.on_release(lambda v: (events.append(("release", v.key)), done.set()))
    other = next(n for n in nodes if n != old)
    acquired = threading.Event()
    nodes[other].manager.on_acquire(lambda v: acquired.set())
    nodes[old].stop(release=True)
    assert done.wait(5)
    assert events == [("pre_release", A), ("release", A)]
    assert acquired.wait(5)
    assert holder(network, A) == other
    assert network.max_holders(A) == 1


def test_rebalance_immediate_and_never(cluster: Callable[..., Node], network: FakeNetwork) -> None:
    """With 'immediate' a returning node gets its share back; with 'never' it does not."""
    n1 = cluster("n1", [A, B])
    wait_for(lambda: holder(network, A) == "n1" and holder(network, B) == "n1")
    cluster("n2", [A, B])
    wait_for(lambda: {holder(network, A), holder(network, B)} == {"n1", "n2"})
    assert network.max_holders(A) == network.max_holders(B) == 1
    n1.stop(release=True)
    wait_for(lambda: holder(network, A) == holder(network, B) == "n2")
    n1 = cluster("n1", [A, B], rebalance=RebalancePolicy.never())
    time.sleep(1.5)
    # n2 (policy immediate) would hand over, but n2 only moves VIPs it owns and
    # placement wants one of them on n1: so n2's policy decides, and it moves.
    wait_for(lambda: {holder(network, A), holder(network, B)} == {"n1", "n2"})


def test_rebalance_never_keeps_vips_on_the_survivor(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """With 'never' on the holder, a returning node waits for a failure or a move."""
    cluster("n2", [A, B], rebalance=RebalancePolicy.never())
    wait_for(lambda: holder(network, A) == holder(network, B) == "n2")
    n1 = cluster("n1", [A, B])
    n1.manager.reconcile_now()
    time.sleep(1.0)
    assert holder(network, A) == holder(network, B) == "n2"


def test_rebalance_after_a_stable_period(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """With 'after N s' the holder hands over once membership was stable that long."""
    cluster("n2", [A, B], rebalance=RebalancePolicy.after(1.0))
    wait_for(lambda: holder(network, A) == holder(network, B) == "n2")
    joined = time.monotonic()
    cluster("n1", [A, B])
    wait_for(lambda: {holder(network, A), holder(network, B)} == {"n1", "n2"})
    moved_at = max(t for t, h, op, _ in network.history if h == "n1" and op == "add")
    assert moved_at - joined >= 1.0


def test_no_rebalancing_right_after_a_claims_deletion_notice(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """A claim's deletion notice holds rebalancing off for claim_step (a takeover may be on)."""
    n2 = cluster("n2", [A, B], claim_step=1.0)
    wait_for(lambda: holder(network, A) == holder(network, B) == "n2")
    time.sleep(0.3)
    noticed = time.monotonic()
    n2.manager._claim_gone(A)  # what kazoo's event thread calls on a deletion notice
    cluster("n1", [A, B])
    wait_for(lambda: {holder(network, A), holder(network, B)} == {"n1", "n2"})
    moved_at = max(t for t, h, op, _ in network.history if h == "n1" and op == "add")
    assert moved_at - noticed >= 1.0  # without the hold-off: a few round trips after the join
    assert network.max_holders(A) == network.max_holders(B) == 1


def test_move_and_drain(cluster: Callable[..., Node], network: FakeNetwork) -> None:
    """An explicit move and a drain hand the VIP over safely; undrain lets the node back."""
    nodes = {n: cluster(n) for n in ("n1", "n2", "n3")}
    wait_for(lambda: holder(network, A) is not None)
    old = holder(network, A)
    target = next(n for n in nodes if n != old)
    ops = nodes[target].coordinator
    move(ops, A, target)
    wait_for(lambda: holder(network, A) == target)
    drain(ops, target)
    wait_for(lambda: holder(network, A) not in (None, target))
    statuses = {s.address: s for s in show(ops)}
    assert statuses[A].owner == holder(network, A)
    assert undrain(ops, target)
    wait_for(lambda: holder(network, A) == target)  # the move target still stands
    assert network.max_holders(A) == 1


def test_move_to_a_bad_node_changes_nothing(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """Moving to a node that is not live, or to an unknown VIP, is refused."""
    node = cluster("n1")
    wait_for(lambda: holder(network, A) == "n1")
    with pytest.raises(InvalidVipSpec, match="not a live member"):
        move(node.coordinator, A, "ghost")
    with pytest.raises(InvalidVipSpec, match="unknown VIP"):
        move(node.coordinator, "198.18.0.99", "n1")
    with pytest.raises(InvalidVipSpec, match="invalid"):
        move(node.coordinator, "not-an-address", "n1")
    assert holder(network, A) == "n1"


def test_kernel_drift_is_repaired(cluster: Callable[..., Node], network: FakeNetwork) -> None:
    """A stray VIP on a non-owner is removed and a missing owned VIP is re-added."""
    nodes = {n: cluster(n) for n in ("n1", "n2")}
    wait_for(lambda: holder(network, A) is not None)
    owner = holder(network, A)
    assert owner is not None
    other = next(n for n in nodes if n != owner)
    nodes[other].plumber.inject("eth0", A)
    result = nodes[other].manager.reconcile_now()
    assert A in result.removed
    assert network.holders(A) == {owner}
    nodes[owner].plumber.ensure_absent(parse_vip(f"{A}@eth0"))
    nodes[owner].manager.reconcile_now()
    assert network.holders(A) == {owner}


def test_invalid_vip_is_refused_and_changes_nothing(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """A VIP equal to the host's own address is refused before anything is declared."""
    with pytest.raises(InvalidVipSpec, match="host's own address"):
        cluster("n1", ["198.18.0.11"])
    assert network.history == []


def test_binding_address_is_given_only_to_its_owner(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """binding_address() returns the address only on the node that owns the binding."""
    spec = [f"{B}@eth0,binding=out", f"{A}@eth0,follow=out"]
    nodes = {n: cluster(n, spec) for n in ("n1", "n2")}
    wait_for(lambda: holder(network, B) is not None and holder(network, A) is not None)
    owner = holder(network, B)
    assert holder(network, A) == owner  # the follower sits with its binding
    for name, node in nodes.items():
        assert node.manager.binding_address("out") == (B if name == owner else None)


def test_contested_preference_is_reported_and_ignored(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """Two nodes naming different preferred nodes: show says conflict, one owner is elected."""
    n1 = cluster("n1", [f"{A}/24@eth0,prefer=n1"])
    cluster("n2", [f"{A}/24@eth0,prefer=n2"])
    wait_for(lambda: holder(network, A) is not None)
    wait_for(lambda: n1.manager.reconcile_now().conflicts == (A,))
    rows = {s.address: s for s in show(n1.coordinator)}
    assert rows[A].state == "conflict" and rows[A].preferred is None
    assert network.max_holders(A) == 1


def test_stopping_the_coordinator_first_leaves_nothing_plumbed(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """The README's order (coordinator stopped, manager still running) removes the VIP at once."""
    node = cluster("n1")
    wait_for(lambda: holder(network, A) == "n1")
    node.coordinator.stop()
    assert holder(network, A) is None
    time.sleep(1.5)  # a converge pass or a reconcile must not bring it back
    assert holder(network, A) is None
    node.manager.stop()


def test_stop_is_bounded_while_zookeeper_is_unreachable(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """With ZooKeeper cut off, stop() drops the address and returns within its stop_timeout."""
    node = cluster("n1", stop_timeout=1.0)
    wait_for(lambda: holder(network, A) == "n1")
    node.proxy.cut()
    start = time.monotonic()
    node.manager.stop(release=True)
    took = time.monotonic() - start
    assert holder(network, A) is None
    assert took < 3.0, f"stop took {took:.2f} s"


def test_a_survivor_takes_a_failed_nodes_vips_over_in_batches(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """The VIPs of a node cut off from ZooKeeper are plumbed on the survivor in few batches."""
    addresses = [f"198.18.0.{100 + i}" for i in range(20)]
    nodes = {n: cluster(n, addresses) for n in ("n1", "n2")}
    wait_for(lambda: all(holder(network, a) is not None for a in addresses))
    wait_for(lambda: {holder(network, a) for a in addresses} == {"n1", "n2"})
    steps: list[tuple[str, int]] = []
    nodes["n2"].manager.on_step(lambda step, _at, count: steps.append((step, count)))
    lost = [a for a in addresses if holder(network, a) == "n1"]
    nodes["n1"].proxy.cut()
    wait_for(lambda: all(holder(network, a) == "n2" for a in addresses))
    wait_for(lambda: sum(c for s, c in steps if s == "plumbed") == len(lost))
    plumbed = [c for s, c in steps if s == "plumbed"]
    assert len(plumbed) <= max(1, len(lost) // 2), steps  # not one netlink call per VIP
    assert ("departed", 1) in steps  # seen on the member list, before the view
    wait_for(lambda: ("member-left", 1) in steps)
    assert all(network.max_holders(a) == 1 for a in addresses)


def test_planned_successor_claims_on_the_release_notice(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """A graceful stop is taken over by the planned successor straight from the deletion notice."""
    nodes, old = elected(cluster, network)
    steps: dict[str, list[tuple[float, str]]] = {n: [] for n in nodes}
    for name, node in nodes.items():
        node.manager.on_step(lambda step, at, _n, name=name: steps[name].append((at, step)))
    time.sleep(0.3)  # a converge pass after the last move has planned the successor
    nodes[old].stop(release=True)
    wait_for(lambda: holder(network, A) not in (None, old))
    new = holder(network, A)
    assert new is not None
    wait_for(lambda: any(step == "claimed" for _, step in steps[new]))
    order = [step for _, step in sorted(steps[new])]
    assert order[:2] == ["gone", "claimed"], order  # no converge pass in between
    assert network.max_holders(A) == 1


def lapse_in_living_session(node: Node) -> None:
    """What the coordinator tells a starved owner: its lease ran out, then came back.

    The session lives on throughout (a stall just under the session timeout);
    the real thing, a CPU-starved agent in namespaces, is in test_vip_safety.
    """
    node.manager._on_lease(LeaseState.EXPIRED)
    node.manager._on_lease(LeaseState.VALID)


def lone_owner(cluster: Callable[..., Node], network: FakeNetwork) -> Node:
    """One node, holding A, that would stand aside for a minute."""
    node = cluster("n1", lapse_holddown=60.0)
    wait_for(lambda: holder(network, A) == "n1")
    return node


def declarers(node: Node, address: str) -> set[str]:
    return set(node.coordinator.znodes.children(f"vips/{address}/declared") or [])


def test_owner_whose_lease_lapsed_in_a_living_session_stands_aside(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """A lapse the session outlived: the owner gives its VIPs up at once, declares again later."""
    nodes = {n: cluster(n, lapse_holddown=2.0) for n in ("n1", "n2", "n3")}
    wait_for(lambda: holder(network, A) is not None)
    old = holder(network, A)
    assert old is not None
    session = nodes[old].coordinator.session_id
    lapse_in_living_session(nodes[old])
    wait_for(lambda: holder(network, A) not in (None, old), 5)
    assert old not in declarers(nodes[old], A)  # no survivor waits for it to claim again
    assert not nodes[old].manager.owned()
    wait_for(lambda: old in declarers(nodes[old], A), 10)  # back after the hold-down
    assert nodes[old].coordinator.session_id == session
    assert network.max_holders(A) == 1


def test_a_node_standing_aside_comes_back_when_nobody_takes_its_vips(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """Alone (or with every node aside), a node stands aside for its VIPs, not against them."""
    node = lone_owner(cluster, network)
    lapse_in_living_session(node)
    wait_for(lambda: "n1" not in declarers(node, A), 5)
    wait_for(lambda: holder(network, A) == "n1", 10)  # long before the 60 s hold-down
    assert network.max_holders(A) == 1


def test_a_lapse_that_ended_the_session_does_not_stand_aside(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """A lease that comes back in a new session has no old claims to give up: no hold-down."""
    node = lone_owner(cluster, network)
    node.manager._on_lease(LeaseState.EXPIRED)
    node.manager._state.aside.lease_back(12345, time.monotonic())  # another session's
    assert not node.manager._state.aside.active(time.monotonic())
    wait_for(lambda: holder(network, A) == "n1", 5)


def test_a_negative_holddown_is_refused(cluster: Callable[..., Node], network: FakeNetwork) -> None:
    """A negative lapse_holddown is refused at start, before anything is declared."""
    with pytest.raises(InvalidVipSpec, match="lapse_holddown"):
        cluster("n1", lapse_holddown=-1.0)
    assert network.holders(A) == frozenset()
