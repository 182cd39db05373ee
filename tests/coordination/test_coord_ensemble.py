"""Coordination against a 3-server ZooKeeper ensemble."""

import os
import time

import pytest

from mhafail.coordination import ConnectionState, Coordinator, Membership, NodeInfo
from mhafail.testing import ZooKeeperEnsemble

pytestmark = [pytest.mark.zookeeper, pytest.mark.slow]


def test_clients_keep_or_regain_their_sessions_when_the_leader_dies(
    zk_ensemble: ZooKeeperEnsemble,
) -> None:
    """Killing the leader server leaves every client connected with its membership intact."""
    clients = [
        Coordinator(hosts=zk_ensemble.hosts, cluster="ens", session_timeout=4.0, open_acl=True)
        for _ in range(3)
    ]
    members = []
    try:
        for i, c in enumerate(clients):
            c.start()
            members.append(
                Membership(coordinator=c, info=NodeInfo(name=f"n{i}", pid=os.getpid())).start()
            )
        members[0].wait_for(lambda v: len(v) == 3, 10)
        sessions = [c.session_id for c in clients]
        leader = zk_ensemble.wait_leader()
        leader.kill()
        zk_ensemble.wait_leader(30)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if all(c.state is ConnectionState.CONNECTED and c.lease_valid() for c in clients):
                break
            time.sleep(0.05)
        assert all(c.state is ConnectionState.CONNECTED for c in clients)
        for m in members:
            m.wait_for(lambda v: v.names == ("n0", "n1", "n2"), 20)
        # Sessions survive a leader change when clients reconnect within the timeout;
        # any client that lost its session must have re-registered in a new one.
        for c, old in zip(clients, sessions, strict=True):
            node = c.znodes.get(f"members/{members[clients.index(c)].info.name}")
            assert node is not None and node.ephemeral_owner == c.session_id
            if c.session_id != old:
                print(f"session {old:#x} was replaced by {c.session_id:#x}")
    finally:
        for m in members:
            m.stop()
        for c in clients:
            c.stop()
