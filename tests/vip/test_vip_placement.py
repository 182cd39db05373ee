"""Placement and decisions: balance, minimal movement, preference, follow, drain."""

import math
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.vip import Action, PlacementInput, Vip, VipKind, decide, rank


def vips_for(n: int) -> dict[str, Vip]:
    addresses = [f"198.18.{1 + i // 250}.{1 + i % 250}" for i in range(n)]
    return {a: Vip(address=a, interface="eth0") for a in addresses}


def inp(vips: dict[str, Vip], nodes: list[str], **kw: object) -> PlacementInput:
    return PlacementInput(
        vips=vips,
        declared_by={a: frozenset(nodes) for a in vips},
        live=frozenset(kw.pop("live", nodes)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def owners(rankings: dict[str, tuple[str, ...]]) -> dict[str, str]:
    return {a: r[0] for a, r in rankings.items() if r}


@given(st.integers(1, 60), st.integers(1, 6))
def test_every_vip_gets_one_live_owner_and_load_is_bounded(n_vips: int, n_nodes: int) -> None:
    """Each VIP's first choice is a live candidate, and no node exceeds ceil(V/N)."""
    nodes = [f"n{i}" for i in range(n_nodes)]
    result = owners(rank(inp(vips_for(n_vips), nodes)))
    assert set(result) == set(vips_for(n_vips))
    load = Counter(result.values())
    assert max(load.values()) <= math.ceil(n_vips / n_nodes)


@settings(max_examples=50)
@given(st.integers(6, 60), st.integers(2, 6), st.data())
def test_a_node_leaving_moves_only_its_share(
    n_vips: int, n_nodes: int, data: st.DataObject
) -> None:
    """When a node leaves, most VIPs of the survivors stay where they were."""
    nodes = [f"n{i}" for i in range(n_nodes)]
    gone = data.draw(st.sampled_from(nodes))
    before = owners(rank(inp(vips_for(n_vips), nodes)))
    survivors = [n for n in nodes if n != gone]
    after = owners(rank(inp(vips_for(n_vips), nodes, live=survivors, owners=before)))
    moved = [a for a in before if before[a] != gone and after[a] != before[a]]
    assert moved == []  # only the failed node's VIPs move
    assert gone not in after.values()
    assert max(Counter(after.values()).values()) <= math.ceil(n_vips / len(survivors))


def test_a_returning_node_gets_back_about_its_share() -> None:
    """A node that joins takes roughly 1/N of the VIPs, not a reshuffle."""
    nodes = ["n0", "n1", "n2"]
    v = vips_for(300)
    before = owners(rank(inp(v, nodes)))
    two = owners(rank(inp(v, nodes, live=nodes[:2], owners=before)))
    back = owners(rank(inp(v, nodes, owners=two)))
    moved = [a for a in v if two[a] != back[a]]
    assert all(back[a] == "n2" for a in moved)  # only moves towards the newcomer
    assert len(moved) == 100  # exactly its share of 300 over 3 nodes
    assert Counter(back.values()) == {"n0": 100, "n1": 100, "n2": 100}


def test_preference_wins_when_live_and_uncontested() -> None:
    """The preferred node ranks first while live; contested preference is ignored."""
    v = {"198.18.0.200": Vip(address="198.18.0.200", interface="eth0", preference="n2")}
    assert rank(inp(v, ["n0", "n1", "n2"]))["198.18.0.200"][0] == "n2"
    assert "n2" not in rank(inp(v, ["n0", "n1", "n2"], live=["n0", "n1"]))["198.18.0.200"]
    contested = inp(v, ["n0", "n1", "n2"], contested=frozenset({"198.18.0.200"}))
    expected = rank(
        inp({"198.18.0.200": Vip(address="198.18.0.200", interface="eth0")}, ["n0", "n1", "n2"])
    )
    assert rank(contested) == expected


def test_follower_goes_where_its_binding_is_owned() -> None:
    """A listener following a binding ranks only the binding's current owner."""
    v = {
        "198.18.0.201": Vip(
            address="198.18.0.201", interface="eth0", kind=VipKind.BINDING, binding="out"
        ),
        "198.18.0.202": Vip(address="198.18.0.202", interface="eth0", follow="out"),
    }
    nodes = ["n0", "n1", "n2"]
    free = rank(inp(v, nodes))
    assert free["198.18.0.202"][0] == free["198.18.0.201"][0]
    owned = rank(inp(v, nodes, owners={"198.18.0.201": "n1"}))
    assert owned["198.18.0.202"] == ("n1",)
    decisions = decide(
        "n0",
        inp(v, nodes, owners={"198.18.0.201": "n1", "198.18.0.202": "n0"}),
        owned,
        rebalance_allowed=False,
        claim_step=0.1,
    )
    assert decisions["198.18.0.202"].action is Action.RELEASE


def test_drained_node_releases_and_takes_nothing() -> None:
    """A drained owner releases; a drained node never claims."""
    v = vips_for(4)
    state = inp(v, ["n0", "n1"], drained=frozenset({"n0"}), owners={a: "n0" for a in v})
    rankings = rank(state)
    assert all("n0" not in r for r in rankings.values())
    mine = decide("n0", state, rankings, rebalance_allowed=False, claim_step=0.1)
    assert {d.action for d in mine.values()} == {Action.RELEASE}


def test_unowned_vip_is_claimed_by_the_first_ranked_and_others_wait_in_order() -> None:
    """The first-ranked claims at once; the k-th waits k claim steps."""
    v = vips_for(1)
    state = inp(v, ["n0", "n1", "n2"])
    rankings = rank(state)
    order = rankings["198.18.1.1"]
    for position, node in enumerate(order):
        d = decide(node, state, rankings, rebalance_allowed=True, claim_step=0.5)["198.18.1.1"]
        if position == 0:
            assert d.action is Action.CLAIM
        else:
            assert d.action is Action.WAIT and d.delay == position * 0.5


def test_rebalance_policy_and_explicit_moves() -> None:
    """An overloaded owner keeps its excess until rebalancing is allowed; a move always goes."""
    v = vips_for(2)
    nodes = ["n0", "n1"]
    state = inp(v, nodes, owners=dict.fromkeys(v, "n0"))
    rankings = rank(state)
    shed = [a for a, r in rankings.items() if r[0] == "n1"]
    assert len(shed) == 1  # n0 holds 2 with a share of 1: one is to go to n1
    held = decide("n0", state, rankings, rebalance_allowed=False, claim_step=0)
    assert {d.action for d in held.values()} == {Action.HOLD}
    moving = decide("n0", state, rankings, rebalance_allowed=True, claim_step=0)
    assert moving[shed[0]].action is Action.RELEASE
    a = shed[0]
    moved = inp(v, nodes, owners={a: "n1"}, targets={a: "n0"})
    d = decide("n1", moved, rank(moved), rebalance_allowed=False, claim_step=0)[a]
    assert d.action is Action.RELEASE and "moved to n0" in d.reason


def test_preferred_node_returning_gets_its_vip_back_by_policy() -> None:
    """When the preferred node is live again, the holder releases once rebalancing is allowed."""
    a = "198.18.0.200"
    v = {a: Vip(address=a, interface="eth0", preference="n1")}
    state = inp(v, ["n0", "n1"], owners={a: "n0"})
    rankings = rank(state)
    assert rankings[a][0] == "n1"
    assert (
        decide("n0", state, rankings, rebalance_allowed=False, claim_step=0)[a].action
        is Action.HOLD
    )
    assert (
        decide("n0", state, rankings, rebalance_allowed=True, claim_step=0)[a].action
        is Action.RELEASE
    )


@settings(max_examples=50, deadline=None)
@given(st.integers(3, 60), st.integers(2, 5), st.data())
def test_successions_name_one_successor_that_placement_agrees_with(
    n_vips: int, n_nodes: int, data: st.DataObject
) -> None:
    """Each held VIP has one planned successor: the node placement picks once the owner goes."""
    from mhafail.vip._placement import successions

    nodes = [f"n{i}" for i in range(n_nodes)]
    v = vips_for(n_vips)
    held = owners(rank(inp(v, nodes)))
    snapshot = inp(v, nodes, owners=held)
    rankings = rank(snapshot)
    plans = {n: successions(n, snapshot, rankings) for n in nodes}
    for address, owner in held.items():
        successors = [n for n in nodes if address in plans[n]]
        assert len(successors) == 1 and successors[0] != owner
    gone = data.draw(st.sampled_from(nodes))
    survivors = [n for n in nodes if n != gone]
    rest = {a: n for a, n in held.items() if n != gone}
    after = owners(rank(inp(v, nodes, live=survivors, owners=rest)))
    for address, owner in held.items():
        if owner == gone:
            assert address in plans[after[address]]  # the planned successor is placement's pick


def test_successor_of_a_planned_move_is_its_target() -> None:
    """While an owner moves a VIP away, the move's target is its only planned successor."""
    from mhafail.vip._placement import successions

    v = vips_for(1)
    (address,) = v
    snapshot = inp(v, ["n0", "n1", "n2"], owners={address: "n0"}, targets={address: "n2"})
    rankings = rank(snapshot)
    assert rankings[address][0] == "n2"
    assert successions("n2", snapshot, rankings) == {address}
    assert successions("n1", snapshot, rankings) == frozenset()
    assert successions("n0", snapshot, rankings) == frozenset()
