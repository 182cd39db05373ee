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
    server, as after a long partition.

    One difference matters: the server drops the session *at once*, not
    after the session timeout, so the owner's fencing lease (which assumes
    expiry by timeout) may still be valid when others see its ephemeral
    znodes vanish. Use it to test re-registration and session handling; to
    test ownership hand-offs, cut the client off (``TcpProxy.cut()``) for
    longer than the session timeout instead.

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
