"""Fixtures for the console tests (the lab itself is in helpers/console_lab.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from console_lab import Lab, make_lab

from mhafail.testing import ZooKeeperServer


@pytest.fixture(scope="module")
def lab(zookeeper: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A cluster and console shared by the tests of one module (tests must not break it)."""
    with make_lab(zookeeper.address, tmp_path_factory.mktemp("lab")) as made:
        yield made


@pytest.fixture
def fresh_lab(zookeeper: ZooKeeperServer, tmp_path: Path) -> Iterator[Lab]:
    """A cluster and console of one test's own (for tests that kill or change things)."""
    with make_lab(zookeeper.address, tmp_path) as made:
        yield made
