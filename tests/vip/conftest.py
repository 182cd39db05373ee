"""Fixtures for the VIP namespace tests; the lab itself is in ``helpers/netlab.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fakecluster import cluster, network  # noqa: F401 - fixtures shared by the in-process tests
from netlab import TIMEOUT, Lab

from mhafail.testing import NetnsLab, ZooKeeperServer


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Make a started lab: ``make(timeout=1.0, tick_time=100, extra=agent_args)``.

    Torn down after the test.
    """
    made: list[tuple[NetnsLab, ZooKeeperServer, Lab | None]] = []

    def make(timeout: float = TIMEOUT, tick_time: int = 100, extra: tuple[str, ...] = ()) -> Lab:
        netns = NetnsLab(hosts=3, client=True, bridge_address="198.18.0.1/24").start()
        zk = ZooKeeperServer(
            tick_time=tick_time, host="198.18.0.1", netns=netns.lan, workdir=tmp_path / "zk"
        )
        made.append((netns, zk, None))
        zk.start()
        lab = Lab(netns, zk, timeout, extra)
        made[-1] = (netns, zk, lab)
        return lab

    yield make
    for netns, zk, lab in reversed(made):
        try:
            if lab is not None:
                lab.close()
                for proc in lab.agents.values():
                    proc.kill()
        finally:
            zk.cleanup()
            netns.close()


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    """The standard lab: 1 s sessions."""
    return lab_factory()
