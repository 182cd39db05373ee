"""What the ACL attack tests share: throwaway identities and a raw kazoo attacker.

The attacker talks to ZooKeeper with kazoo directly, never through
mhafail, so a refusal it meets comes from the server's ACLs and not from
mhafail's own checks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError

from mhafail.coordination import Credentials
from mhafail.coordination._auth import digest_id

OP_ID = digest_id("ops", "op-secret")
NODE_ID = digest_id("mta", "node-secret")
OPERATOR = Credentials(user="ops", password="op-secret", operators=(OP_ID,), nodes=(NODE_ID,))
NODE = Credentials(user="mta", password="node-secret", operators=(OP_ID,), nodes=(NODE_ID,))


class RawClients:
    """Raw kazoo clients for one server, all closed by :meth:`close`."""

    def __init__(self, hosts: str) -> None:
        self.hosts = hosts
        self._made: list[Any] = []

    def __call__(self, auth: Credentials | None = None, **options: Any) -> Any:
        """A started client, logged in with digest ``auth`` when given; ``options`` go to kazoo."""
        if auth is not None:
            options["auth_data"] = [("digest", f"{auth.user}:{auth.password}")]
        client = KazooClient(hosts=self.hosts, **options)
        client.start(timeout=10)
        self._made.append(client)
        return client

    def close(self) -> None:
        for client in self._made:
            client.stop()
            client.close()
        self._made.clear()


def refused(call: Callable[[], object]) -> bool:
    """True when ZooKeeper's ACLs refuse the call."""
    try:
        call()
    except NoAuthError:
        return True
    return False
