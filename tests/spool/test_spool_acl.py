"""Spool znodes under ZooKeeper ACLs: the attacks on spool locks and orders fail."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from zk_attack import NODE, OPERATOR, refused

from mhafail.coordination import Coordinator
from mhafail.errors import AccessDenied
from mhafail.spool import NodePaths, SpoolLock, order_drain

pytestmark = pytest.mark.zookeeper


@pytest.fixture
def attacker(raw: Callable[..., Any]) -> Any:
    """A raw kazoo client without credentials."""
    return raw()


def test_credential_less_client_cannot_take_or_delete_a_spool_lock(
    coordinator_factory: Callable[..., Coordinator], zk_cluster: str, tmp_path: Path,
    attacker: Any,
) -> None:  # fmt: skip
    """Without credentials one can neither delete a node's spool lock nor create one."""
    coordinator_factory(credentials=OPERATOR)
    node = coordinator_factory(credentials=NODE)
    lock = SpoolLock(coordinator=node, paths=NodePaths(tmp_path, "c1", "n1").create())
    lock.acquire(5)
    base = f"/mhafail/{zk_cluster}/spool"
    assert refused(lambda: attacker.delete(f"{base}/n1/lock"))
    assert refused(lambda: attacker.create(f"{base}/n2", b""))
    assert refused(lambda: attacker.create(f"{base}/n1/lock2", b"", ephemeral=True))
    assert refused(lambda: attacker.set(f"{base}/n1/lock", b"{}"))
    assert node.znodes.get("spool/n1/lock") is not None
    lock.release()


def test_nodes_take_locks_but_only_operators_order_drains(
    coordinator_factory: Callable[..., Coordinator], tmp_path: Path
) -> None:
    """A node's credentials can take its spool lock but cannot drain another node."""
    operator = coordinator_factory(credentials=OPERATOR)
    node = coordinator_factory(credentials=NODE)
    lock = SpoolLock(coordinator=node, paths=NodePaths(tmp_path, "c1", "n1").create())
    assert lock.acquire(5) > 0
    with pytest.raises(AccessDenied):
        order_drain(node, "n2")
    assert order_drain(operator, "n2")
    lock.release()
