"""The pytest plugin (entry point ``pytest11: mhafail``): fixtures and markers.

Fixtures:
    zookeeper: a session-wide standalone ZooKeeper server (tickTime 100 ms,
        so session timeouts from 0.2 s to 2 s are allowed).
    zk_cluster: a fresh cluster name per test, i.e. a fresh cluster root
        ``/mhafail/<name>``.
    coordinator_factory: ``make(**kwargs)`` returns a started Coordinator on
        that server and cluster (``open_acl=True`` unless ``credentials`` are
        given); all are stopped after the test.
    zk_ensemble: a 3-server ensemble for one test.
    tcp_proxy_factory: ``make(target_address)`` returns a TcpProxy.
    netns_lab_factory: ``make(hosts=3, client=False)`` returns a started
        NetnsLab (root only); closed after the test.
    simulated_cluster: ``make(command, nodes=3, **kwargs)`` returns a
        started :class:`~mhafail.testing.SimulatedCluster` (its own ZooKeeper,
        credentials, namespaces as root, loopback otherwise); closed after
        the test.
    fake_network: a :class:`~mhafail.testing.FakeNetwork` shared by fake VIP hosts.
    fake_plumber_factory: ``make(host, interfaces=None)`` returns a
        :class:`~mhafail.testing.FakePlumber` on ``fake_network``.

Timeouts: with pytest-timeout installed and no timeout configured
(``--timeout``, ``PYTEST_TIMEOUT``, ``timeout =`` in the config), every
test that uses these fixtures or markers gets ``DEFAULT_TIMEOUT`` seconds
(a hung ZooKeeper test would otherwise print nothing, forever), and a
test that runs out says where the limit came from.

Markers ``zookeeper`` and ``root`` skip a test whose needs are not met,
with the reason. When ``CI=true`` a skip for these reasons is a failure
instead: CI must run everything.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from mhafail.coordination import Coordinator
from mhafail.testing._fakes import FakeNetwork, FakePlumber
from mhafail.testing._netns import NetnsLab
from mhafail.testing._ports import in_ci, unique_suffix
from mhafail.testing._proxy import TcpProxy
from mhafail.testing._simcluster import SimulatedCluster
from mhafail.testing._zookeeper import (
    INSTALL_HINT,
    ZooKeeperEnsemble,
    ZooKeeperServer,
    zookeeper_available,
)

_servers: list[ZooKeeperServer] = []
DEFAULT_TIMEOUT = 300.0
_KIT_FIXTURES = frozenset(
    {
        "zookeeper", "zk_cluster", "coordinator_factory", "zk_ensemble", "tcp_proxy_factory",
        "netns_lab_factory", "simulated_cluster", "fake_network", "fake_plumber_factory",
    }
)  # fmt: skip


def skip_or_fail(reason: str) -> None:
    """Skip the current test, or fail it under CI."""
    if in_ci():
        pytest.fail(f"CI must run this test, but: {reason}")
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    """Register the markers (also for projects that use the plugin)."""
    config.addinivalue_line("markers", "zookeeper: needs a real ZooKeeper server")
    config.addinivalue_line("markers", "root: needs root (network namespaces, raw sockets)")


def _timeout_configured(config: pytest.Config) -> bool:
    try:
        if config.getoption("timeout", None) is not None or config.getini("timeout"):
            return True
    except ValueError:  # pytest-timeout is not installed: no "timeout" ini key
        return True
    return bool(os.environ.get("PYTEST_TIMEOUT"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give kit tests a default timeout when pytest-timeout is there and none is configured."""
    if not config.pluginmanager.hasplugin("timeout") or _timeout_configured(config):
        return
    for item in items:
        uses_kit = _KIT_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        marked = item.get_closest_marker("zookeeper") or item.get_closest_marker("root")
        if (uses_kit or marked) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(DEFAULT_TIMEOUT))
            item.user_properties.append(("mhafail_default_timeout", DEFAULT_TIMEOUT))


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip (or, under CI, fail) tests whose environment is missing."""
    if item.get_closest_marker("root") and os.geteuid() != 0:
        skip_or_fail("needs root for network namespaces; run as root")
    if item.get_closest_marker("zookeeper") and not zookeeper_available():
        skip_or_fail(INSTALL_HINT)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the tail of every running ZooKeeper server's log to a failed test."""
    report = yield
    if report.failed:
        for server in _servers:
            report.sections.append((f"zookeeper {server.address} log", server.log_tail(30)))
        default = dict(item.user_properties).get("mhafail_default_timeout")
        if default is not None and "Timeout" in str(report.longrepr):
            report.sections.append(
                (
                    "mhafail timeout",
                    f"this test ran into the mhafail plugin's default timeout of {default:g} s; "
                    "set your own with @pytest.mark.timeout(N), --timeout N or "
                    "`timeout = N` in the pytest configuration",
                )
            )
    return report


def _start(server: ZooKeeperServer) -> ZooKeeperServer:
    if not zookeeper_available():
        skip_or_fail(INSTALL_HINT)
    _servers.append(server)
    return server.start()


def _forget(server: ZooKeeperServer) -> None:
    server.cleanup()
    if server in _servers:
        _servers.remove(server)


@pytest.fixture(scope="session")
def zookeeper() -> Iterator[ZooKeeperServer]:
    """A standalone ZooKeeper server shared by the whole test session."""
    server = _start(ZooKeeperServer(tick_time=100))
    yield server
    _forget(server)


@pytest.fixture
def zk_cluster() -> str:
    """A cluster name no other test uses (a fresh cluster root ``/mhafail/<name>``)."""
    return f"t{unique_suffix()}"


@pytest.fixture
def coordinator_factory(
    zookeeper: ZooKeeperServer, zk_cluster: str
) -> Iterator[Callable[..., Coordinator]]:
    """Make started coordinators on the session server; stopped after the test."""
    made: list[Coordinator] = []

    def make(**kwargs: Any) -> Coordinator:
        kwargs.setdefault("hosts", zookeeper.address)
        kwargs.setdefault("cluster", zk_cluster)
        kwargs.setdefault("session_timeout", 2.0)
        if kwargs.get("credentials") is None:
            # A throwaway server: tests choose an open cluster unless they test ACLs.
            kwargs.setdefault("open_acl", True)
        coordinator = Coordinator(**kwargs)
        made.append(coordinator)
        return coordinator.start()

    yield make
    for coordinator in reversed(made):
        coordinator.stop()


@pytest.fixture
def zk_ensemble() -> Iterator[ZooKeeperEnsemble]:
    """A started 3-server ZooKeeper ensemble for one test."""
    if not zookeeper_available():
        skip_or_fail(INSTALL_HINT)
    ensemble = ZooKeeperEnsemble(size=3, tick_time=100)
    _servers.extend(ensemble.servers)
    try:
        yield ensemble.start()
    finally:
        for server in ensemble.servers:
            _forget(server)
        ensemble.cleanup()


@pytest.fixture
def tcp_proxy_factory() -> Iterator[Callable[[str], TcpProxy]]:
    """Make loopback TCP proxies (``make("127.0.0.1:2181")``); closed after the test."""
    made: list[TcpProxy] = []

    def make(target: str) -> TcpProxy:
        host, port = target.rsplit(":", 1)
        proxy = TcpProxy((host, int(port)))
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def netns_lab_factory() -> Iterator[Callable[..., NetnsLab]]:
    """Make started network-namespace labs (root only); always removed after the test."""
    if os.geteuid() != 0:
        skip_or_fail("needs root for network namespaces; run as root")
    made: list[NetnsLab] = []

    def make(**kwargs: Any) -> NetnsLab:
        lab = NetnsLab(**kwargs)
        made.append(lab)
        return lab.start()

    try:
        yield make
    finally:
        for lab in made:
            lab.close()


@pytest.fixture
def simulated_cluster(tmp_path: Any) -> Iterator[Callable[..., SimulatedCluster]]:
    """Make started simulated clusters (``make(command, nodes=3, ...)``); closed after the test.

    As root the nodes run in network namespaces, otherwise on loopback
    (pass ``namespaces=False`` to force loopback). Each cluster has its own
    ZooKeeper, credentials and shared secret, under the test's ``tmp_path``.
    """
    if not zookeeper_available():
        skip_or_fail(INSTALL_HINT)
    made: list[SimulatedCluster] = []

    def make(command: list[str], **kwargs: Any) -> SimulatedCluster:
        kwargs.setdefault("workdir", tmp_path / f"cluster{len(made) + 1}")
        cluster = SimulatedCluster(command=command, **kwargs)
        made.append(cluster)
        cluster.start()
        if cluster.zookeeper is not None:
            _servers.append(cluster.zookeeper)
        return cluster

    try:
        yield make
    finally:
        for cluster in made:
            cluster.close()
            if cluster.zookeeper in _servers:
                _servers.remove(cluster.zookeeper)


@pytest.fixture
def fake_network(tmp_path: Any) -> FakeNetwork:
    """A fake LAN record shared by fake VIP hosts (also written to ``tmp_path/addresses``).

    ``max_holders(address)`` tells whether two hosts ever held one VIP at once.
    """
    return FakeNetwork(path=str(tmp_path / "addresses"))


@pytest.fixture
def fake_plumber_factory(fake_network: FakeNetwork) -> Callable[..., FakePlumber]:
    """``make(host, interfaces=None)`` -> a FakePlumber on ``fake_network``.

    ``interfaces`` maps an interface to the host's own ``addr/prefix``
    addresses (default ``{"eth0": ["198.18.0.1/24"]}``); pass
    ``validate_host=False`` to a VipManager that uses it unless the VIPs
    fall in those subnets.
    """

    def make(host: str, interfaces: dict[str, list[str]] | None = None) -> FakePlumber:
        return FakePlumber(fake_network, host, interfaces)

    return make
