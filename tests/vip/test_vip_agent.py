"""`mhafail agent` processes with the fake plumber, and the vip CLI's bad input."""

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mhafail.cli import main
from mhafail.cli._vip import _session_timeout
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.testing import (
    EventProcess,
    FakeNetwork,
    FakePlumber,
    ZooKeeperEnsemble,
    ZooKeeperServer,
)
from mhafail.vip import RebalancePolicy, VipManager, parse_vip

A = "198.18.0.200"


def agent_process(zk: str, cluster: str, node: str, record: Path) -> EventProcess:
    argv = [
        sys.executable, "-m", "mhafail", "agent", "--zk", zk, "--cluster", cluster,
        "--node", node, "--vip", f"{A}/24@eth0", "--session-timeout", "1",
        "--plumber", f"fake:{record}", "--claim-step", "0.05", "--events",
    ]  # fmt: skip
    return EventProcess(argv, name=node)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


@pytest.fixture
def agents(
    zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path
) -> Iterator[Callable[[str], EventProcess]]:
    made: list[EventProcess] = []

    def make(node: str) -> EventProcess:
        agent = agent_process(zookeeper.address, zk_cluster, node, tmp_path / "record")
        made.append(agent)
        return agent.start(timeout=20)

    yield make
    for agent in made:
        agent.kill()


def holders(path: Path) -> frozenset[str]:
    return FakeNetwork.load(str(path)).holders(A)


@pytest.mark.zookeeper
def test_sigkilled_owner_is_replaced_and_returns_per_policy(
    agents: Callable[[str], EventProcess], tmp_path: Path
) -> None:
    """A SIGKILLed agent's VIP goes to a survivor once its session expires; SIGTERM hands over."""
    procs = {n: agents(n) for n in ("n1", "n2", "n3")}
    record = tmp_path / "record"
    wait_for(lambda: len(holders(record)) == 1)
    old = next(iter(holders(record)))
    procs[old].kill()
    # Nothing is removed by hand: the fake models the fence (the address's
    # lifetime ends with the dead agent's lease), so the record shows the
    # dead node letting go before the survivor takes over.
    wait_for(lambda: len(holders(record) - {old}) == 1)
    assert old not in holders(record)
    assert FakeNetwork.load(str(record)).max_holders(A) == 1
    new = next(iter(holders(record)))
    assert procs[new].terminate() == 0
    assert any(e["event"] == "release" for e in procs[new].events)
    wait_for(lambda: len(holders(record)) == 1 and new not in holders(record))
    assert FakeNetwork.load(str(record)).max_holders(A) == 1


@pytest.mark.zookeeper
@pytest.mark.slow
def test_vip_survives_the_loss_of_the_zookeeper_leader(
    zk_ensemble: ZooKeeperEnsemble, tmp_path: Path
) -> None:
    """Killing the ensemble leader never gives a VIP two owners, and it stays owned."""
    network = FakeNetwork()
    nodes = []
    for name in ("n1", "n2"):
        c = Coordinator(
            hosts=zk_ensemble.hosts, cluster="ens", session_timeout=4.0, open_acl=True
        ).start()
        m = Membership(coordinator=c, info=NodeInfo(name=name, pid=os.getpid())).start()
        plumber = FakePlumber(network, name, {"eth0": ["198.18.0.1/24"]})
        manager = VipManager(
            coordinator=c,
            membership=m,
            plumber=plumber,
            vips=[parse_vip(f"{A}/24@eth0")],
            rebalance=RebalancePolicy.never(),
            reconcile_interval=1.0,
        ).start()
        nodes.append((c, m, manager))
    try:
        wait_for(lambda: len(network.holders(A)) == 1)
        zk_ensemble.wait_leader().kill()
        zk_ensemble.wait_leader(30)
        time.sleep(5)
        wait_for(lambda: len(network.holders(A)) == 1, 30)
        assert network.max_holders(A) == 1
    finally:
        for c, m, manager in nodes:
            manager.stop(release=False)
            m.stop()
            c.stop()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["agent", "--zk", "127.0.0.1:1", "--cluster", "c", "--node", "n"], "at least one --vip"),
        (["agent", "--zk", "127.0.0.1:1", "--cluster", "c", "--vip", A + "@eth0"], "needs --node"),
        (
            ["agent", "--zk", "127.0.0.1:1", "--cluster", "c", "--node", "n", "--vip", "300.1.1.1"],
            "invalid VIP address",
        ),
        (
            [
                *("agent", "--zk", "127.0.0.1:1", "--cluster", "c", "--node", "n"),
                *("--vip", A + "@eth0", "--plumber", "fake:/dev/null", "--zk-tick", "0"),
            ],
            "invalid server_tick",
        ),
        (
            [
                *("agent", "--zk", "127.0.0.1:1", "--cluster", "c", "--node", "n"),
                *("--vip", A + "@eth0", "--plumber", "fake:/dev/null", "--beat", "0.01"),
            ],
            "beat budget must be",
        ),
        (
            [
                "agent",
                "--zk",
                "h:1",
                "--cluster",
                "c",
                "--node",
                "n",
                "--vip",
                A,
                "--topology",
                "x",
            ],
            "expected CIDR=IFACE",
        ),
        (
            [
                "agent",
                "--zk",
                "h:1",
                "--cluster",
                "c",
                "--node",
                "n",
                "--vip",
                A + "@eth0",
                "--rebalance",
                "sometimes",
            ],
            "invalid rebalance policy",
        ),
    ],
)
def test_agent_refuses_bad_flags(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad agent flags exit 2 with a message naming the problem, before anything starts."""
    assert main(argv) == 2
    assert fragment in capsys.readouterr().err


@pytest.mark.parametrize(
    ("settings", "timeout"),
    [
        ({}, 3.0),
        ({"session_timeout": 1.5}, 1.5),
        ({"beat": 0.35}, 3.0),
        ({"beat": 3.0, "zk_tick": 0.2}, 4.2),
        ({"beat": 3.0}, 6.5),
        ({"beat": 3.0, "session_timeout": 3.0}, 3.0),
    ],
)
def test_with_beats_the_agent_picks_a_session_that_outlasts_them(
    settings: dict[str, float], timeout: float
) -> None:
    """Without --session-timeout the agent's session is 3 s, or with --beat the shortest that
    outlasts the budget when that is longer (session_for); a given timeout is kept."""
    assert _session_timeout(settings) == timeout


def test_agent_refuses_a_bad_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unknown keys and broken TOML in --config are refused with the file named."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text('zk = "h:1"\ncolour = "red"\n')
    assert main(["agent", "--config", str(cfg)]) == 2
    assert "unknown keys ['colour']" in capsys.readouterr().err
    cfg.write_text("zk = \n")
    assert main(["agent", "--config", str(cfg)]) == 2
    assert str(cfg) in capsys.readouterr().err


@pytest.mark.zookeeper
def test_vip_cli_show_move_drain(
    agents: Callable[[str], EventProcess],
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """vip show lists the VIP; move names a bad node with exit 2; drain moves it away."""
    agents("n1")
    agents("n2")
    record = tmp_path / "record"
    wait_for(lambda: len(holders(record)) == 1)
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster]
    assert main(["vip", "show", *zk, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["vips"]
    assert rows[0]["address"] == A and rows[0]["state"] == "owned"
    owner = rows[0]["owner"]
    assert main(["vip", "move", *zk, A, "nobody"]) == 2
    assert "not a live member" in capsys.readouterr().err
    assert main(["vip", "drain", *zk, owner]) == 0
    wait_for(lambda: holders(record) and owner not in holders(record))
    assert main(["vip", "undrain", *zk, owner]) == 0
    assert FakeNetwork.load(str(record)).max_holders(A) == 1


@pytest.mark.zookeeper
@pytest.mark.parametrize("fault", ["killed", "stopped"])
def test_agent_exits_within_5_s_of_sigterm_without_zookeeper(tmp_path: Path, fault: str) -> None:
    """SIGTERM ends the agent within 5 s with ZooKeeper killed or SIGSTOPped; its VIP is gone."""
    record = tmp_path / "record"
    with ZooKeeperServer(tick_time=100, workdir=tmp_path / "zk") as zk:
        proc = agent_process(zk.address, "sigterm", "n1", record)
        proc.log_dir = tmp_path
        proc.start(timeout=20)
        try:
            wait_for(lambda: holders(record) == {"n1"})
            if fault == "killed":
                zk.kill()
            else:
                assert zk.pid is not None
                os.kill(zk.pid, signal.SIGSTOP)
            try:
                start = time.monotonic()
                status = proc.terminate()  # SIGTERM, SIGKILL after 10 s
                took = time.monotonic() - start
            finally:
                if zk.pid is not None:
                    os.kill(zk.pid, signal.SIGCONT)
            assert status == 0 and took < 5.0, f"status {status} after {took:.2f} s"
            assert holders(record) == frozenset()
        finally:
            proc.kill()


@pytest.mark.zookeeper
def test_a_second_sigterm_ends_the_agent_at_once(tmp_path: Path) -> None:
    """A second SIGTERM while the agent is stopping ends it at once (status 128 + 15)."""
    record = tmp_path / "record"
    with ZooKeeperServer(tick_time=100, workdir=tmp_path / "zk") as zk:
        proc = agent_process(zk.address, "twice", "n1", record).start(timeout=20)
        try:
            wait_for(lambda: holders(record) == {"n1"})
            assert zk.pid is not None
            os.kill(zk.pid, signal.SIGSTOP)  # the clean stop would wait for ZooKeeper
            try:
                start = time.monotonic()
                os.kill(proc.pid, signal.SIGTERM)
                time.sleep(0.1)
                os.kill(proc.pid, signal.SIGTERM)
                wait_for(lambda: not proc.running, 3)
                took = time.monotonic() - start
            finally:
                os.kill(zk.pid, signal.SIGCONT)
            assert took < 1.5, f"took {took:.2f} s"
            assert proc.terminate() == 128 + signal.SIGTERM
        finally:
            proc.kill()
