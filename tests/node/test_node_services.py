"""NodeServices and NodeSettings: a whole node from one settings object (real ZooKeeper)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mhafail.audit import AuditSeries
from mhafail.config import ConfigRepository, ConfigView
from mhafail.coordination import Coordinator
from mhafail.errors import (
    ChannelInvalidArgument,
    InvalidArgument,
    InvalidVipSpec,
    SpoolInvalidArgument,
    SpoolPathConflict,
)
from mhafail.jlog import JlogHandler
from mhafail.node import NodeServices, NodeSettings
from mhafail.spool import Envelope, LockState
from mhafail.testing import FakeNetwork, TcpProxy, ZooKeeperServer
from mhafail.vip import Vip

pytestmark = pytest.mark.zookeeper

VIP = "127.0.0.220"
ENV = Envelope(sender="a@example.org", recipients=("b@example.net",))


def wait(predicate: Callable[[], Any], timeout: float = 20.0) -> None:
    """Poll until ``predicate()`` is true."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


@pytest.fixture
def make_settings(
    tmp_path: Path, zookeeper: ZooKeeperServer, zk_cluster: str
) -> Callable[..., NodeSettings]:
    """``make(node="n1", **overrides)``: settings of a loopback node on the session ZooKeeper."""
    (tmp_path / "san").mkdir()
    secret = tmp_path / "cluster.secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("a-test-secret-of-at-least-32-characters\n")

    def make(node: str = "n1", **overrides: Any) -> NodeSettings:
        fields: dict[str, Any] = {
            "zk": zookeeper.address, "cluster": zk_cluster, "node": node,
            "address": "127.0.0.1", "root": tmp_path / "san", "open_acl": True,
            "config_dir": tmp_path / node / "config", "secret_file": secret,
            "vips": [f"{VIP}/24@lo"], "plumber": f"fake:{tmp_path / 'addresses'}",
            "session_timeout": 1.5, "grace": 0.5, "rebalance": "never",
        }  # fmt: skip
        return NodeSettings(**(fields | overrides))

    return make


@pytest.fixture
def nodes() -> Iterator[list[NodeServices]]:
    """Node services to stop after the test (stop is idempotent)."""
    made: list[NodeServices] = []
    yield made
    for node in made:
        node.stop()


def test_bad_settings_are_refused_before_anything_starts(
    make_settings: Callable[..., NodeSettings], tmp_path: Path
) -> None:
    """Each malformed setting raises an error naming it; a bad secret stops start() first."""
    bad: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"address": "mta1.example.org"}, InvalidArgument, "address"),
        ({"vips": ["127.0.0.300/24@lo"]}, InvalidVipSpec, "127.0.0.300"),
        ({"vips": "127.0.0.2/24@lo"}, InvalidArgument, "list of VIP specs"),
        ({"plumber": "fake:"}, InvalidArgument, "plumber"),
        ({"plumber": "ioctl"}, InvalidArgument, "plumber"),
        ({"rebalance": "sometimes"}, InvalidVipSpec, "rebalance"),
        ({"open_acl": False}, InvalidArgument, "credentials"),
        ({"zk_auth": tmp_path / "a.auth"}, InvalidArgument, "exactly one"),
        ({"session_timeout": 0}, InvalidArgument, "session_timeout"),
        ({"grace": float("nan")}, InvalidArgument, "grace"),
        ({"node": "../n1"}, SpoolInvalidArgument, "node name"),
        ({"zk": " "}, InvalidArgument, "zk"),
    ]
    for overrides, error, match in bad:
        with pytest.raises(error, match=match):
            make_settings(**overrides)
    with pytest.raises(InvalidArgument, match="config_dir"):
        NodeServices(settings=make_settings(config_dir=None), config_repo="mta")
    with pytest.raises(InvalidArgument, match="log_format"):
        NodeServices(settings=make_settings(), log_format="xml")  # type: ignore[arg-type]
    open_secret = tmp_path / "open.secret"
    open_secret.write_text("a-test-secret-of-at-least-32-characters\n")
    open_secret.chmod(0o644)
    # An unreachable ZooKeeper too: the secret is refused before any connection is tried.
    node = NodeServices(settings=make_settings(secret_file=open_secret, zk="127.0.0.1:9"))
    began = time.monotonic()
    with pytest.raises(ChannelInvalidArgument, match=r"open\.secret"):
        node.start()
    assert time.monotonic() - began < 2
    assert not (tmp_path / "san" / "nodes").exists()  # not even the node-name binding
    with pytest.raises(InvalidArgument, match="not started"):
        _ = node.coordinator


def test_the_command_line_gives_the_same_settings() -> None:
    """add_arguments + from_args build the settings the flags describe, defaults changeable."""
    parser = argparse.ArgumentParser()
    NodeSettings.add_arguments(parser)
    parser.set_defaults(session_timeout=3.0)
    args = parser.parse_args(
        ["--zk", "127.0.0.1:2181", "--cluster", "c1", "--node", "n1", "--address", "127.0.0.11",
         "--root", "/tmp/san", "--zk-open", "--vip", "127.0.0.200/24@lo,follow=out",
         "--vip", "127.0.0.210/24@lo,binding=out", "--manager", "m1", "--plumber", "fake:/tmp/x"]
    )  # fmt: skip
    settings = NodeSettings.from_args(args)
    assert settings.session_timeout == 3.0 and settings.open_acl and settings.zk_auth is None
    assert [v.key for v in settings.vips] == ["127.0.0.200", "127.0.0.210"]
    assert all(isinstance(v, Vip) for v in settings.vips)
    assert settings.managers == ("m1",) and settings.paths.node == "n1"


def test_a_node_starts_everything_and_stops_in_order_within_seconds(
    make_settings: Callable[..., NodeSettings], nodes: list[NodeServices], tmp_path: Path
) -> None:
    """Started: binding, jlogs, audit, membership endpoints, spool, VIP; stopped: all, bounded."""
    log = logging.getLogger(f"test.node.{id(tmp_path)}")
    conn = AuditSeries("conn", window_seconds=60, windows=5, export_increments=True)
    acquired: list[str] = []
    states: list[LockState] = []
    node = NodeServices(settings=make_settings(), roles=("mta",), logs={"main": log}, series=[conn])
    node.on_vip_acquire(lambda vip: acquired.append(vip.key))
    node.on_lock(states.append)
    nodes.append(node)
    node.start()
    wait(lambda: acquired == [VIP])
    assert states == [LockState.HELD] and node.lock.state is LockState.HELD
    queue_id = node.spool.put(ENV, b"kept across a restart")
    me = node.membership.view.members["n1"]
    assert me.roles == ("mta",)
    assert set(me.endpoints) == {"jlog", "audit"}
    assert [type(h) for h in log.handlers] == [JlogHandler]
    log.info("written to the jlog")
    with pytest.raises(SpoolPathConflict, match="already bound"):
        NodeServices(settings=make_settings()).start()  # the name is taken: nothing starts
    began = time.monotonic()
    node.stop()
    assert time.monotonic() - began < 5
    assert log.handlers == []
    assert FakeNetwork(path=str(tmp_path / "addresses")).holders(VIP) == frozenset()
    with pytest.raises(InvalidArgument, match="not started"):
        _ = node.spool
    again = NodeServices(settings=make_settings(), logs={"main": log})  # the binding is free
    nodes.append(again)
    again.start()
    assert again.spool.ids() == [queue_id]
    with pytest.raises(InvalidArgument, match="no audit"):
        _ = again.audit  # not configured: no series


def test_config_hooks_hear_the_live_version_and_each_applied_one(
    make_settings: Callable[..., NodeSettings], nodes: list[NodeServices],
    coordinator_factory: Callable[..., Coordinator],
) -> None:  # fmt: skip
    """A version committed anywhere reaches on_config; after a restart the live one comes first."""
    seen: list[bytes | None] = []

    def hook(view: ConfigView) -> None:
        seen.append(view.read("mta.toml"))

    settings = make_settings(vips=[])
    node = NodeServices(settings=settings, config_repo="mta", with_spool=False)
    node.on_config(hook)
    nodes.append(node)
    node.start()
    assert settings.config_dir is not None
    operator = ConfigRepository(
        name="mta",
        base=settings.config_dir,
        node="n1",
        coordinator=coordinator_factory(),
        replicas=0,  # a one-node cluster: nobody else to hold it first
    )
    operator.commit({"global/mta.toml": b'banner = "one"\n'}, message="1", author="T <t@x>")
    wait(lambda: seen == [b'banner = "one"\n'])
    assert set(node.membership.view.members["n1"].endpoints) == {"git"}
    node.stop()
    restarted = NodeServices(settings=settings, config_repo="mta", with_spool=False)
    restarted.on_config(hook)
    nodes.append(restarted)
    restarted.start()
    assert seen[-1] == b'banner = "one"\n' and len(seen) == 2


def test_a_node_cut_off_from_zookeeper_fences_then_recovers_on_its_own(
    make_settings: Callable[..., NodeSettings], nodes: list[NodeServices],
    tcp_proxy_factory: Callable[[str], TcpProxy], zookeeper: ZooKeeperServer, tmp_path: Path,
) -> None:  # fmt: skip
    """Session lost: VIP dropped, spool fenced; ZooKeeper back: VIP and spool lock return."""
    proxy = tcp_proxy_factory(zookeeper.address)
    events: list[str] = []
    node = NodeServices(settings=make_settings(zk=proxy.address))
    node.on_vip_acquire(lambda vip: events.append("acquire"))
    node.on_vip_release(lambda vip: events.append("release"))
    node.on_lock(lambda state: events.append(state.value))
    nodes.append(node)
    node.start()
    wait(lambda: events == ["held", "acquire"])
    proxy.cut()
    wait(lambda: "fenced" in events and "release" in events)
    assert FakeNetwork(path=str(tmp_path / "addresses")).holders(VIP) == frozenset()
    time.sleep(2.0)  # past the session timeout: the server expires the session
    proxy.restore()
    wait(lambda: events[-2:] in (["held", "acquire"], ["acquire", "held"]), 30)
    node.spool.put(ENV, b"accepted again")
    proxy.cut()  # and a stop without ZooKeeper is still bounded
    began = time.monotonic()
    node.stop()
    assert time.monotonic() - began < 8
