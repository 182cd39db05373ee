"""Beats: survivors fence a silent owner after its budget, long before its session expires."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from fakecluster import A, Node, elected, holder, wait_for
from zk_attack import NODE, OPERATOR, refused

from mhafail.coordination import (
    Check,
    Coordinator,
    Create,
    Delete,
    LeaseState,
    Op,
    Znode,
    default_margin,
    oldest_proof,
)
from mhafail.errors import InvalidVipSpec
from mhafail.testing import FakeNetwork, ZooKeeperServer
from mhafail.vip import Beat
from mhafail.vip._beat import (
    BeatWatch,
    beat_path,
    earliest,
    fence,
    fence_marker,
    overdue_after,
    session_for,
)
from mhafail.vip._paths import next_path, owner_path

pytestmark = pytest.mark.zookeeper

SESSION = 2.0  # the test server's largest (20 ticks of 100 ms)
BUDGET = 0.6


def test_a_cut_off_owner_is_fenced_after_its_budget_not_its_session(
    cluster: Callable[..., Node], network: FakeNetwork
) -> None:
    """Cut from ZooKeeper, the owner drops the VIP at its beat deadline; a survivor fences it
    and takes the VIP while the old owner's session still lives (it keeps it after)."""
    nodes, old = elected(cluster, network, session_timeout=SESSION, beat_budget=BUDGET)
    session = nodes[old].coordinator.session_id
    fenced: list[str] = []

    def note(name: str) -> Callable[[str, float, int], None]:
        return lambda step, _at, _n: fenced.append(name) if step == "silenced" else None

    for name, node in nodes.items():
        node.manager.on_step(note(name))
    nodes[old].proxy.cut()
    wait_for(lambda: holder(network, A) not in (None, old), SESSION)
    wait_for(lambda: bool(fenced), 5)  # steps reach callbacks on the event thread
    assert len(fenced) == 1 and fenced[0] != old, fenced
    spans = sorted(network.spans(A))
    old_end = max(end for start, end, h in spans if h == old)
    new_start = min(start for start, end, h in spans if h != old and end >= old_end)
    assert old_end <= new_start  # the old owner let go first
    # Back before its session expired: it learns it was fenced, and one owner remains.
    nodes[old].proxy.restore()
    beat = nodes[old].manager.beat
    assert beat is not None
    wait_for(beat.valid, SESSION)
    assert nodes[old].coordinator.session_id == session
    time.sleep(2 * BUDGET)
    assert network.max_holders(A) == 1
    assert len(network.holders(A)) == 1


def test_a_survivor_whose_cache_is_stale_cannot_delete_a_newer_claim(
    zookeeper: ZooKeeperServer, zk_cluster: str
) -> None:
    """Attack by timing: n let go of a claim (with a beat) and c claimed it; a fence prepared
    against n's older beat fails and deletes nothing."""
    with (
        Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True) as cn,
        Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True) as cc,
    ):
        beat = Beat(cn, "n", 5.0).start()
        try:
            wait_for(beat.valid, 5)
            seen = cn.znodes.get(beat_path("n"))
            assert seen is not None
            cn.znodes.create(owner_path(A), b"{}", ephemeral=True, makepath=True)
            assert beat.write_with(cn.znodes, [Delete(owner_path(A), 0)])  # n lets go
            cc.znodes.create(owner_path(A), b"{}", ephemeral=True)  # c claims
            assert not fence(cc.znodes, "c", "n", seen.version, [owner_path(A)])
            claim = cc.znodes.get(owner_path(A))
            assert claim is not None and claim.ephemeral_owner == cc.session_id
        finally:
            beat.stop()


def test_a_node_that_learns_of_its_fence_late_cannot_delete_the_new_owners_claim(
    zookeeper: ZooKeeperServer, zk_cluster: str
) -> None:
    """Attack by timing (found by the namespace lab: two owners): n is fenced, beats again
    on the fenced version, and c claims n's VIP and reserves the one n had reserved; n,
    acting on its older belief that both are its own, deletes neither, and a claim of its
    own that the fence did not list still goes."""
    with (
        Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True) as cn,
        Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True) as cc,
    ):
        beat = Beat(cn, "n", 0.4)
        fenced: list[bool] = []
        beat.on_fenced(lambda: fenced.append(True))
        beat.start()
        try:
            wait_for(beat.valid, 5)
            mine, theirs = owner_path("198.18.0.201"), owner_path("198.18.0.202")
            for path in (mine, theirs, owner_path(A)):
                cc.znodes.ensure(path.rsplit("/", 1)[0])
                if path != owner_path(A):
                    cn.znodes.create(path, b"{}", ephemeral=True)
            cc.znodes.create(owner_path(A), b"{}", ephemeral=True)
            reserve = [Create(next_path(A), b"{}", ephemeral=True), Check(owner_path(A))]
            assert beat.write_with(cn.znodes, reserve, reserve=[A])
            assert beat.reserved() == {A}
            while True:  # fence n (claim and reservation), racing its beats
                seen = cc.znodes.get(beat_path("n"))
                assert seen is not None
                if fence(cc.znodes, "c", "n", seen.version, [theirs], reservations=[next_path(A)]):
                    break
            wait_for(lambda: bool(fenced) and beat.valid(), 5)  # n beats again, fenced
            cc.znodes.create(theirs, b"{}", ephemeral=True)  # c claims it anew
            cc.znodes.create(next_path(A), b"{}", ephemeral=True)  # and reserves A

            def stale(listed: frozenset[str]) -> list[Op]:  # n's release, planned before
                return [Delete(theirs, 0)] + [Delete(next_path(a), 0) for a in {A} & listed]

            assert not beat.write_with(cn.znodes, stale, unreserve=[A], own=[theirs])
            for path in (theirs, next_path(A)):
                found = cc.znodes.get(path)
                assert found is not None and found.ephemeral_owner == cc.session_id
            # Without the read, the same delete goes through: the version check passes.
            assert beat.write_with(cn.znodes, [Delete(mine, 0)], own=[mine])
            assert cn.znodes.get(mine) is None
        finally:
            beat.stop()


def test_a_fenced_beat_loses_its_lease_and_says_so(
    zookeeper: ZooKeeperServer, zk_cluster: str
) -> None:
    """A fence bumps the beat: the owner's next beat fails, it hears 'fenced' before its lease
    is valid again, and it beats again on the fenced version."""
    with (
        Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True) as cn,
        Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True) as cs,
    ):
        beat = Beat(cn, "n", 0.4)
        events: list[str] = []
        beat.on_fenced(lambda: events.append("fenced"))
        beat.add_listener(lambda state: events.append(state.value))
        beat.start()
        try:
            wait_for(beat.valid, 5)
            seen = cs.znodes.get(beat_path("n"))
            assert seen is not None
            if fence(cs.znodes, "s", "n", seen.version, []):
                wait_for(lambda: "fenced" in events, 5)
                wait_for(beat.valid, 5)
                fenced_at = events.index("fenced")
                assert LeaseState.VALID.value in events[fenced_at:]
            else:  # it beat in between: the fence was refused, which is the other half
                assert cs.znodes.get(beat_path("n")).version != seen.version  # type: ignore[union-attr]
        finally:
            beat.stop()


@pytest.mark.parametrize(
    ("budget", "per_budget", "match"),
    [
        (0.01, 2, "budget"),
        (float("nan"), 2, "budget"),
        (1.0, 1, "per budget"),
        (1.0, 11, "per budget"),
    ],
)
def test_bad_beat_settings_are_refused(
    zookeeper: ZooKeeperServer, zk_cluster: str, budget: float, per_budget: int, match: str
) -> None:
    """A budget out of range or too few or many beats per budget is refused at start."""
    with Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True) as c:
        with pytest.raises(InvalidVipSpec, match=match):
            Beat(c, "n", budget, per_budget=per_budget).start()
        assert c.znodes.get(beat_path("n")) is None


def test_with_acls_nodes_beat_and_fence_and_strangers_cannot(
    coordinator_factory: Callable[..., Coordinator], zk_cluster: str, raw: Callable[..., Any]
) -> None:
    """Under the cluster's ACLs a node beats in beats/ (made by init) and another node may
    fence it; a client without credentials can neither read nor overwrite a beat."""
    coordinator_factory(credentials=OPERATOR)  # initialises the cluster, beats/ included
    n, s = coordinator_factory(credentials=NODE), coordinator_factory(credentials=NODE)
    beat = Beat(n, "n", 1.0).start()
    try:
        wait_for(beat.valid, 5)
        seen = s.znodes.get(beat_path("n"))
        assert seen is not None
        stranger = raw()
        path = f"/mhafail/{zk_cluster}/{beat_path('n')}"
        assert refused(lambda: stranger.get(path))
        assert refused(lambda: stranger.set(path, b'{"fenced_by": "evil"}'))
        fenced = fence(s.znodes, "s", "n", seen.version, [])
        assert fenced or s.znodes.get(beat_path("n")).version != seen.version  # type: ignore[union-attr]
    finally:
        beat.stop()


def test_overdue_follows_each_nodes_own_budget_and_fence_markers() -> None:
    """A node is overdue after its own budget (plus drift) without a new version; a fence
    marker makes it out at once; an unreadable beat is never fenced (as no beat at all)."""
    watch = BeatWatch("me", lambda _s: None)
    now = time.monotonic()
    for name, budget in (("slow", 3.0), ("fast", 0.5)):
        data = json.dumps({"node": name, "budget": budget}).encode()
        watch._on_beat(name, Znode(beat_path(name), data, 1, 7, 0, 0))
    watch._on_beat("odd", Znode(beat_path("odd"), b"not json", 1, 7, 0, 0))
    assert watch.overdue(now) == {}
    due = watch.next_due(now)  # silence raises no event: the pass wakes itself then
    assert due is not None and overdue_after(0.5) <= due < overdue_after(0.5) + 0.5
    assert watch.overdue(now + 0.6) == {"fast": 1}
    assert watch.overdue(now + 3.1) == {"fast": 1, "slow": 1}
    watch._on_beat("slow", Znode(beat_path("slow"), fence_marker("x"), 2, 7, 0, 0))
    assert watch.overdue(now) == {"slow": None}


def test_earliest_deadline_is_none_when_either_lease_is_gone() -> None:
    """Owning needs both leases: the earlier deadline, or none when either has none."""
    assert earliest(lambda: 5.0, lambda: 3.0)() == 3.0
    assert earliest(lambda: 5.0, lambda: None)() is None


@pytest.mark.parametrize("tick", [None, 0.02, 0.05, 0.2, 2.0])
@pytest.mark.parametrize("budget", [0.1, 0.35, 0.8, 3.0, 10.0, 600.0])
def test_session_for_is_the_shortest_session_whose_lease_outlasts_the_beat_lease(
    budget: float, tick: float | None
) -> None:
    """At the session ``session_for`` gives, the session lease, however old its proof, ends
    no earlier than a fresh beat lease; 0.1 s less does not guarantee that."""

    def session_lease(timeout: float) -> float:  # the least it runs ahead, heartbeats answered
        return timeout - default_margin(timeout) - oldest_proof(timeout, tick)

    timeout = session_for(budget, tick)
    beat_lease = budget - default_margin(budget)
    assert session_lease(timeout) >= beat_lease
    assert timeout <= budget or session_lease(round(timeout - 0.1, 1)) < beat_lease
    assert session_for(budget * 1.5 if budget < 600 else budget, tick) >= timeout


@pytest.mark.parametrize(("budget", "tick"), [(0.0, None), (float("inf"), None), (3.0, 0.0)])
def test_session_for_refuses_a_bad_budget_or_tick(budget: float, tick: float | None) -> None:
    """A budget out of range or a tickTime that is not positive is refused by name."""
    with pytest.raises(InvalidVipSpec, match=r"budget|tickTime"):
        session_for(budget, tick)


def test_a_session_shorter_than_the_budget_needs_is_warned_about(
    zookeeper: ZooKeeperServer, zk_cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Starting beats on a session that cannot outlast them logs a warning naming the
    session a budget needs; one long enough logs none."""
    with Coordinator(
        hosts=zookeeper.address, cluster=zk_cluster, open_acl=True, session_timeout=1.0
    ) as c:
        for budget, warned in ((0.8, True), (0.2, False)):
            caplog.clear()
            beat = Beat(c, "n", budget).start()
            beat.stop()
            said = [r.getMessage() for r in caplog.records if "outlasts" in r.getMessage()]
            if warned:
                assert said and f"{session_for(budget, c.server_tick):.1f} s" in said[0]
            else:
                assert not said
