"""The lease rests on the leader: a follower cut off from its peers cannot extend it (root).

Three ZooKeeper servers, each in a network namespace of its own, and the
clients in a fourth. The owner's session is connected to a follower only;
the watcher's to the leader. The follower is then silently cut off from
its peers (blackhole routes: its packets to them vanish, as in a switch
failure), while the owner still reaches it. A follower answers reads
until it notices (``syncLimit x tickTime``, here as long as the session
timeout), but the leader expires the session after the timeout: the
owner's lease must have ended before the watcher sees the owner's
ephemeral znode disappear.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mhafail.coordination import Coordinator, LeaseState
from mhafail.testing import NetnsLab, ZooKeeperEnsemble, run_in_netns

pytestmark = [pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

TIMEOUT = 2.0  # the servers' maximum (tickTime 100 ms), and their syncLimit (20 ticks)


@pytest.fixture
def lab_ensemble(netns_lab_factory) -> Iterator[tuple[NetnsLab, ZooKeeperEnsemble]]:  # type: ignore[no-untyped-def]
    lab = netns_lab_factory(hosts=3, client=True, ipv6=False)
    placement = tuple((lab[f"h{i}"].netns, lab[f"h{i}"].ipv4) for i in (1, 2, 3))
    ensemble = ZooKeeperEnsemble(size=3, tick_time=100, placement=placement)
    try:
        ensemble.start()
        yield lab, ensemble
    finally:
        ensemble.cleanup()


def test_a_follower_cut_off_from_the_leader_cannot_extend_the_lease(
    lab_ensemble: tuple[NetnsLab, ZooKeeperEnsemble],
) -> None:
    """The owner's lease ends before the leader expires its session and deletes its znode."""
    lab, ensemble = lab_ensemble
    leader = ensemble.wait_leader()
    follower = next(s for s in ensemble.servers if s is not leader)
    client = lab["c1"].netns
    expired_at: list[float] = []
    deleted_at: list[float] = []

    def start_owner() -> Coordinator:
        c = Coordinator(
            hosts=follower.address, cluster="proof", session_timeout=TIMEOUT, open_acl=True
        )
        c.start()
        c.add_lease_listener(
            lambda s: expired_at.append(time.monotonic()) if s is LeaseState.EXPIRED else None
        )
        c.znodes.create("probe", b"owner", ephemeral=True)
        return c

    def start_watcher() -> Coordinator:
        return Coordinator(
            hosts=leader.address, cluster="proof", session_timeout=TIMEOUT, open_acl=True
        ).start()

    owner = run_in_netns(client, start_owner)
    watcher = run_in_netns(client, start_watcher)
    try:
        time.sleep(1.0)  # a few heartbeats through the follower
        assert owner.lease_valid()
        cut_host = next(h for h in lab.members.values() if h.ipv4 == follower.host)
        for other in ensemble.servers:
            if other is not follower:
                cut_host.run(["ip", "route", "add", "blackhole", f"{other.host}/32"])
        cut_at = time.monotonic()
        end = cut_at + 4 * TIMEOUT
        while time.monotonic() < end and not deleted_at:
            if watcher.znodes.get("probe") is None:
                deleted_at.append(time.monotonic())
            time.sleep(0.005)
        assert deleted_at, "the leader never expired the owner's session"
        assert expired_at, "the owner's lease never ended"
        print(
            f"lease ended {expired_at[0] - cut_at:.3f} s after the cut, "
            f"znode gone {deleted_at[0] - cut_at:.3f} s after"
        )
        assert expired_at[0] < deleted_at[0]
    finally:
        owner.stop()
        watcher.stop()
