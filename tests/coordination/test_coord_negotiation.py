"""The lease uses the timeout the server negotiated, never just the one requested."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mhafail.coordination import Coordinator
from mhafail.testing import ZooKeeperServer

pytestmark = [pytest.mark.zookeeper]


def test_lease_uses_the_negotiated_timeout_when_the_server_caps_it(
    coordinator_factory: Callable[..., Coordinator], zookeeper: ZooKeeperServer
) -> None:
    """Asking 10 s of a server that caps sessions at 2 s gives a lease of at most 2 s."""
    assert zookeeper.tick_time == 100  # maxSessionTimeout = 20 ticks = 2 s
    c = coordinator_factory(session_timeout=10.0)
    assert c.effective_timeout == pytest.approx(2.0)
    now = time.monotonic()
    deadline = c.lease_deadline()
    assert deadline is not None
    assert deadline - now <= 2.0


def test_lease_keeps_the_requested_timeout_when_the_server_grants_it(
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A request inside the server's range is granted and the lease uses it."""
    c = coordinator_factory(session_timeout=0.5)  # range is 0.2 to 2 s
    assert c.effective_timeout == pytest.approx(0.5)


def test_stopping_the_coordinator_ends_the_lease_at_once(
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """After stop() begins, lease_valid() is False and there is no deadline."""
    c = coordinator_factory(session_timeout=2.0)
    assert c.lease_valid()
    c.stop()
    assert not c.lease_valid()
    assert c.lease_deadline() is None
    assert c.lease_remaining() == 0.0
