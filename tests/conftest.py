"""Suite-wide setup: the test servers are throwaway, so commands run open by default.

Every ``mhafail`` command (in-process or a child process) refuses to run
without ZooKeeper credentials unless told ``--zk-open``; the suite says so
once here through the environment. Tests of credentials and ACLs unset it
(``monkeypatch.delenv("MHAFAIL_ZK_OPEN")``) or pass ``--zk-auth``.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from zk_attack import RawClients

from mhafail.testing import ZooKeeperServer

os.environ.setdefault("MHAFAIL_ZK_OPEN", "1")
# A stray SIGTERM once ended a whole run in silence: if one comes, every
# thread's stack is printed first (the running test among them).
faulthandler.register(signal.SIGTERM, all_threads=True, chain=True)


@pytest.fixture
def raw(zookeeper: ZooKeeperServer) -> Iterator[Callable[..., Any]]:
    """Raw kazoo clients for the test's server (the attacker); closed after the test."""
    clients = RawClients(zookeeper.address)
    yield clients
    clients.close()
