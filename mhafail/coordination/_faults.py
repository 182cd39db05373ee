"""Fault injection that needs ZooKeeper's own protocol (used by mhafail.testing)."""

from __future__ import annotations

import logging

from kazoo.client import KazooClient
from kazoo.handlers.threading import KazooTimeoutError

from mhafail.coordination._coordinator import Coordinator
from mhafail.coordination._names import format_hosts, parse_hosts
from mhafail.errors import CoordinationError, CoordinationUnavailable


def expire_session(coordinator: Coordinator, *, hosts: str | None = None) -> int:
    """Make ZooKeeper expire ``coordinator``'s current session, as a real expiry would.

    A second client attaches to the same session (id and password) and
    closes it; the server then drops the session and every ephemeral znode
    in it, and the original client sees LOST when it next talks to the
    server, exactly as after a long partition.

    Args:
        coordinator: a started coordinator.
        hosts: where to reach ZooKeeper, when the coordinator's own hosts
            string goes through a proxy that is cut.

    Returns:
        The id of the session that was expired.
    """
    client_id = coordinator.client_id()
    if client_id is None:
        raise CoordinationError("coordinator has no session to expire")
    target = format_hosts(parse_hosts(hosts or coordinator.hosts))
    other = KazooClient(
        hosts=target,
        client_id=client_id,
        timeout=coordinator.session_timeout,
        logger=logging.getLogger("mhafail.coordination.kazoo"),
    )
    try:
        other.start(timeout=10)
    except KazooTimeoutError as exc:
        raise CoordinationUnavailable(f"cannot reach ZooKeeper at {target}") from exc
    other.stop()
    other.close()
    return client_id[0]
