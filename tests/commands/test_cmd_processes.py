"""Real node and manager processes: crashes, partitions and stops never run a command twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from mhafail.channel import ChannelSecurity
from mhafail.commands import CommandClient, ReplyStatus
from mhafail.commands._model import reply_path
from mhafail.coordination import Coordinator
from mhafail.errors import ChannelAuthFailed
from mhafail.testing import EventProcess, TcpProxy, ZooKeeperServer, free_port

pytestmark = pytest.mark.zookeeper

NODE_SCRIPT = Path(__file__).with_name("cmd_node.py")


@pytest.fixture
def node_factory(
    zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path
) -> Iterator[Callable[..., EventProcess]]:
    """``make(name, zk=None, extra=())``: a started node process (through ``zk`` if
    given, with ``extra`` arguments); ended after."""
    made: list[EventProcess] = []

    def make(name: str, zk: str | None = None, extra: Sequence[str] = ()) -> EventProcess:
        argv = [
            sys.executable, str(NODE_SCRIPT), "--zk", zk or zookeeper.address,
            "--cluster", zk_cluster, "--node", name, "--state-dir", str(tmp_path / name),
            "--count-file", str(tmp_path / f"{name}.count"), *extra,
        ]  # fmt: skip
        proc = EventProcess(argv, name=name, log_dir=tmp_path)
        made.append(proc)
        return proc.start(timeout=20)

    yield make
    for proc in made:
        proc.kill()


def runs(tmp_path: Path, node: str) -> list[str]:
    """Request ids the node's ``test.slow`` started, across all its incarnations."""
    path = tmp_path / f"{node}.count"
    return path.read_text().split() if path.exists() else []


def event(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """A predicate for an event with these fields."""
    return lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items())


def test_node_killed_mid_command_does_not_run_it_again(
    node_factory: Callable[..., EventProcess], client: CommandClient, tmp_path: Path
) -> None:
    """A node SIGKILLed while running a command answers ABANDONED when it returns; ran once."""
    node = node_factory("n1")
    rid = client.unicast("n1", "test.slow", {"seconds": 30})
    node.wait_event(event("started", id=rid), 10)
    node.kill()
    node.start(timeout=20)
    reply = client.wait(rid, 15).replies["n1"]
    assert reply.status is ReplyStatus.ABANDONED
    assert runs(tmp_path, "n1") == [rid]


def test_manager_killed_mid_broadcast_replies_are_still_cached(
    node_factory: Callable[..., EventProcess],
    client: CommandClient,
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
) -> None:
    """A manager process killed while waiting: the nodes still answer; another manager reads it."""
    for name in ("n1", "n2"):
        node_factory(name)
    manager = subprocess.Popen(
        [sys.executable, "-m", "mhafail", "cmd", "send", "--zk", zookeeper.address,
         "--cluster", zk_cluster, "--all", "test.slow", "seconds=0.5", "--wait", "30"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env={**os.environ, "MHAFAIL_ZK_OPEN": "1"},
    )  # fmt: skip
    assert manager.stderr is not None
    line = ""
    while not line.startswith("request "):  # skip the open-cluster warning
        line = manager.stderr.readline().decode()
        assert line, "the manager printed no request id"
    rid = line.split()[1]
    manager.kill()
    manager.wait()
    manager.stderr.close()
    result = client.wait(rid, 15)
    assert result.complete
    assert {r.status for r in result.replies.values()} == {ReplyStatus.OK}


def test_partitioned_node_runs_once_late_or_reports_expired(
    node_factory: Callable[..., EventProcess],
    client: CommandClient,
    zookeeper: ZooKeeperServer,
    tcp_proxy_factory: Callable[[str], TcpProxy],
    tmp_path: Path,
) -> None:
    """Cut off from ZooKeeper a node runs nothing; healed, it runs a live request once, late,
    and answers an expired one EXPIRED."""
    proxy = tcp_proxy_factory(zookeeper.address)
    node = node_factory("n1", zk=proxy.address)
    proxy.cut()
    node.wait_event(event("lease", state="expired"), 10)
    late = client.send("test.slow", {"seconds": 0}, nodes=["n1"], ttl=30)
    gone = client.send("test.slow", {"seconds": 0}, nodes=["n1"], ttl=0.5)
    time.sleep(1.0)
    assert runs(tmp_path, "n1") == []
    proxy.restore()
    assert client.wait(late, 20).replies["n1"].status is ReplyStatus.OK
    assert client.wait(gone, 20).replies["n1"].status is ReplyStatus.EXPIRED
    time.sleep(1.0)  # a second run would show up here
    assert runs(tmp_path, "n1") == [late]


def test_sigterm_ends_a_node_within_5s_with_zookeeper_unreachable(
    node_factory: Callable[..., EventProcess],
    client: CommandClient,
    zookeeper: ZooKeeperServer,
    tcp_proxy_factory: Callable[[str], TcpProxy],
) -> None:
    """With a command running and ZooKeeper cut off, SIGTERM ends the node in under 5 s."""
    proxy = tcp_proxy_factory(zookeeper.address)
    # 2 s sessions, as before the other tests went to 1 s: a longer session is the
    # harder case for a bounded stop.
    node = node_factory("n1", zk=proxy.address, extra=["--session-timeout", "2"])
    rid = client.unicast("n1", "test.slow", {"seconds": 60})
    node.wait_event(event("started", id=rid), 10)
    proxy.cut()
    began = time.monotonic()
    node.terminate()
    assert time.monotonic() - began < 5
    stopped = [e for e in node.events if e["event"] == "stopped"]
    assert stopped and stopped[0]["took"] < 5, json.dumps(node.events[-3:])


def test_several_megabytes_of_output_reach_any_manager_by_the_reply_channel(
    node_factory: Callable[..., EventProcess],
    client: CommandClient,
    coordinator_factory: Callable[..., Coordinator],
    tmp_path: Path,
) -> None:
    """A 6 MB output stays out of ZooKeeper; any manager with the secret fetches it whole by
    request id, also after the node process restarted; a wrong secret is refused."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"commands-secret-0123456789")
    secret.chmod(0o600)
    port = free_port()
    extra = ["--secret-file", str(secret), "--channel-listen", f"127.0.0.1:{port}"]
    node = node_factory("n1", extra=extra)
    size = 6 * 1024 * 1024
    rid = client.unicast("n1", "test.big", {"size": size}, max_output=8 * 1024 * 1024)
    reply = client.wait(rid, 20).replies["n1"]
    assert reply.status is ReplyStatus.OK and reply.output is None and not reply.truncated
    assert reply.blob is not None and reply.blob.size == size + 2  # a JSON string's quotes
    znode = client.coordinator.znodes.get(reply_path(rid, "n1"))
    assert znode is not None and len(znode.data) < 2048
    security = ChannelSecurity(secret=secret.read_bytes())
    other = CommandClient(coordinator=coordinator_factory(), channel=security)
    assert other.fetch_output(rid, "n1") == "x" * size
    node.kill()
    node.start(timeout=20)
    assert other.fetch_output(rid, "n1") == "x" * size
    intruder = CommandClient(
        coordinator=coordinator_factory(), channel=ChannelSecurity(secret=b"w" * 26)
    )
    with pytest.raises(ChannelAuthFailed):
        intruder.fetch_output(rid, "n1")
