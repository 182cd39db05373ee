"""Reservations: the planned successor owns a VIP on its owner's release, with no claim write."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from fakecluster import A, Node, elected, holder, wait_for

from mhafail.coordination import Coordinator, Create
from mhafail.testing import FakeNetwork
from mhafail.vip import RebalancePolicy, show
from mhafail.vip._beat import beat_budget, beat_path, beat_reserved
from mhafail.vip._paths import Claim, next_path, owner_path
from mhafail.vip._reserve import claim_ops

pytestmark = pytest.mark.zookeeper

SESSION = 2.0
BUDGET = 0.6


def reserver_of(nodes: dict[str, Node], address: str) -> str | None:
    """The node whose beat lists a reservation of ``address`` (None: nobody's)."""
    for name, node in nodes.items():
        beat = node.manager.beat
        if beat is not None and address in beat.reserved():
            return name
    return None


def test_the_reserver_plumbs_before_it_writes_a_claim_and_keeps_one_owner(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """On a graceful handover the planned successor plumbs the VIP on the deletion notice (its
    reservation), then turns the reservation into a claim; one owner throughout."""
    nodes, old = elected(cluster, network, session_timeout=SESSION, beat_budget=BUDGET)
    wait_for(lambda: reserver_of(nodes, A) is not None, 5)
    heir = reserver_of(nodes, A)
    assert heir is not None and heir != old
    z = nodes[heir].coordinator.znodes
    reservation = z.get(next_path(A))
    assert reservation is not None
    assert reservation.ephemeral_owner == nodes[heir].coordinator.session_id
    # Its beat lists it, so a fence would delete it; `vip show` names it.
    beat = z.get(beat_path(heir))
    assert beat is not None and beat_reserved(beat.data) == {A}
    (status,) = show(nodes[old].coordinator)
    assert status.owner == old and status.next_in_line == heir
    steps: list[tuple[str, float]] = []
    nodes[heir].manager.on_step(lambda step, at, _n: steps.append((step, at)))
    nodes[old].stop(release=True)
    wait_for(lambda: holder(network, A) == heir, 5)
    wait_for(lambda: any(s == "claimed" for s, _ in steps), 5)
    at = dict(steps)
    assert at["plumbed"] < at["claimed"], steps  # no claim write before the address
    owner = z.get(owner_path(A))
    assert owner is not None and owner.ephemeral_owner == nodes[heir].coordinator.session_id
    assert network.max_holders(A) == 1
    # The third node now stands next in line: it reserves behind the new owner.
    third = next(n for n in nodes if n not in (old, heir))
    wait_for(lambda: reserver_of({n: nodes[n] for n in (heir, third)}, A) == third, 5)


def test_no_claim_can_be_made_while_a_reservation_exists(
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """The claim transaction every node uses is refused while somebody holds the VIP's
    reservation, and succeeds once it is gone; a refused claim leaves nothing behind."""
    reserver = coordinator_factory().znodes
    claimer = coordinator_factory()
    z = claimer.znodes
    z.ensure(f"vips/{A}")
    assert reserver.transact([Create(next_path(A), b"{}", ephemeral=True)])
    claim = Claim(node="n2", session=claimer.session_id or 0, since=time.time())
    assert not z.transact(claim_ops(A, claim))
    assert z.get(owner_path(A)) is None
    assert reserver.delete(next_path(A))
    assert z.transact(claim_ops(A, claim))
    assert z.get(owner_path(A)) is not None and z.get(next_path(A)) is None


def test_a_silent_reserver_is_fenced_with_its_reservation(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """A reserver cut from ZooKeeper is fenced with its reservation, so when the owner then
    lets go the third node takes the VIP long before the reserver's session ends."""
    nodes, old = elected(cluster, network, session_timeout=SESSION, beat_budget=BUDGET)
    wait_for(lambda: reserver_of(nodes, A) is not None, 5)
    heir = reserver_of(nodes, A)
    assert heir is not None
    third = next(n for n in nodes if n not in (old, heir))
    z = nodes[third].coordinator.znodes
    nodes[heir].proxy.cut()
    # Fenced within its budget: the marker is on its beat and the reservation is gone.
    wait_for(lambda: z.get(next_path(A)) is None or _reserved_by(z, third), 3)
    began = time.monotonic()
    nodes[old].stop(release=True)
    wait_for(lambda: holder(network, A) == third, SESSION)
    assert time.monotonic() - began < SESSION  # not waiting for the reserver's session
    assert network.max_holders(A) == 1


def _reserved_by(z: object, name: str) -> bool:
    from mhafail.coordination import Znodes

    assert isinstance(z, Znodes)
    found = z.get(next_path(A))
    return found is not None and json.loads(found.data).get("node") == name


def test_a_beat_with_a_malformed_reservation_list_reads_as_malformed() -> None:
    """A beat listing anything but canonical addresses has no budget (never fenced: its
    reservations could not be deleted) and no reservations."""
    good = json.dumps({"node": "n1", "budget": 1.0, "reserved": ["198.18.0.9"]}).encode()
    assert beat_budget(good, "n1") == 1.0 and beat_reserved(good) == {"198.18.0.9"}
    for listed in (["not an address"], "198.18.0.9", [1], ["2001:DB8::1"], ["198.18.0.9/24"]):
        bad = json.dumps({"node": "n1", "budget": 1.0, "reserved": listed}).encode()
        assert beat_budget(bad, "n1") is None, listed
        assert beat_reserved(bad) is None, listed
    marker = json.dumps({"fenced_by": "n2", "time": 1.0}).encode()
    assert beat_reserved(marker) == frozenset()


def test_a_reserver_whose_reservation_was_deleted_by_hand_is_still_fenced(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """A reservation deleted behind its holder's back (its beat still lists it) does not
    make the holder unfenceable: the survivors fence it with what exists."""
    from mhafail.vip._beat import is_fence_marker

    # Two nodes: nobody else could reserve the VIP again and make the listed path exist.
    nodes, old = elected(
        cluster, network, ("n1", "n2"), session_timeout=SESSION, beat_budget=BUDGET
    )
    wait_for(lambda: reserver_of(nodes, A) is not None, 5)
    heir = reserver_of(nodes, A)
    assert heir is not None
    z = nodes[old].coordinator.znodes
    nodes[heir].proxy.cut()  # silent from now on: it cannot notice the deletion
    assert z.delete(next_path(A))

    def fenced() -> bool:
        beat = z.get(beat_path(heir))
        return beat is not None and is_fence_marker(beat.data)

    wait_for(fenced, 3)


def test_reservations_of_an_ended_session_are_never_counted(
    cluster: Callable[..., Node], network: FakeNetwork, zookeeper: object
) -> None:
    """After its session ends, a node counts none of that session's reservations as its own:
    every reservation its beat reports is a znode of its current session."""
    from mhafail.coordination import expire_session

    nodes, old = elected(cluster, network, session_timeout=SESSION, beat_budget=BUDGET)
    wait_for(lambda: reserver_of(nodes, A) is not None, 5)
    heir = reserver_of(nodes, A)
    assert heir is not None
    node = nodes[heir]
    beat = node.manager.beat
    assert beat is not None
    before = node.coordinator.session_id
    expire_session(node.coordinator, hosts=getattr(zookeeper, "address", None))
    end = time.monotonic() + 3
    saw_new = False
    while time.monotonic() < end:
        session = node.coordinator.session_id
        for address in beat.reserved():
            found = nodes[old].coordinator.znodes.get(next_path(address))
            if session == before or node.coordinator.session_id != session:
                # Before the node learned its session ended, the listed znode
                # may already be gone and another node's; or the session
                # changed while we looked: look again.
                break
            # A reservation listed now is this session's (or gone a moment ago).
            assert found is None or found.ephemeral_owner == session, (address, session)
            saw_new = saw_new or (session != before and found is not None)
        time.sleep(0.01)
    assert saw_new  # it reserved again in its new session
    assert network.max_holders(A) == 1


def test_after_a_fence_each_reserver_keeps_what_it_took(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """When survivors fence a silent owner of several VIPs, each VIP goes to one survivor and
    stays there: no survivor drops a reservation it is taking and removes the address again."""
    vips = [A, "198.18.0.202", "198.18.0.203", "198.18.0.204", "198.18.0.205", "198.18.0.206"]
    nodes = {
        # No rebalancing: a VIP that moves again after the takeover is then a defect.
        n: cluster(
            n,
            vips=vips,
            session_timeout=SESSION,
            beat_budget=BUDGET,
            rebalance=RebalancePolicy.never(),
        )
        for n in ("n1", "n2", "n3")
    }

    def settled() -> bool:  # every VIP held, and reserved by another node
        return all(reserver_of(nodes, v) not in (None, holder(network, v)) for v in vips)

    wait_for(settled, 10)
    counts = {n: sum(holder(network, v) == n for v in vips) for n in nodes}
    victim = max(counts, key=lambda n: counts[n])
    theirs = [v for v in vips if holder(network, v) == victim]
    cut_at = time.monotonic()
    nodes[victim].proxy.cut()
    wait_for(lambda: all(holder(network, v) not in (None, victim) for v in theirs), SESSION)
    time.sleep(0.5)  # long enough for a pass to drop a reservation and remove the address
    for address in theirs:
        taken = [(s, e, h) for s, e, h in network.spans(address) if h != victim and s >= cut_at]
        assert len(taken) == 1, (address, taken)  # taken once, never removed again
        assert taken[0][1] > time.monotonic(), (address, taken)
        assert network.max_holders(address) == 1
