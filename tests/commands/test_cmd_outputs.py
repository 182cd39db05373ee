"""The reply channel for large outputs: real ZooKeeper, real authenticated channel sockets."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mhafail.channel import Channel, ChannelSecurity, Listener, connect
from mhafail.commands import (
    Arg,
    ArgKind,
    Blob,
    CommandAgent,
    CommandClient,
    CommandContext,
    ReplyStatus,
    register_builtins,
)
from mhafail.commands._model import MAX_CHANNEL_OUTPUT, MAX_OUTPUT, Reply, reply_path
from mhafail.commands._outputs import SERVICE, fetch
from mhafail.coordination import Coordinator
from mhafail.errors import (
    ChannelAuthFailed,
    ChannelProtocolError,
    CommandError,
    CommandInvalidArgument,
    MalformedData,
    UnknownRequest,
)

pytestmark = pytest.mark.zookeeper

AgentFactory = Callable[..., CommandAgent]
SECRET = b"reply-channel-secret-0123"
SECURITY = ChannelSecurity(secret=SECRET)


def start_big(agent_factory: AgentFactory, node: str = "n1", **kwargs: Any) -> CommandAgent:
    """A started agent with ``app.big``: a list of 8-character strings of about ``size`` bytes."""
    agent = agent_factory(node, **kwargs)
    register_builtins(agent)

    @agent.command("app.big", [Arg("size", ArgKind.INT, maximum=64 * 1024 * 1024)])
    def big(ctx: CommandContext, args: dict[str, Any]) -> Any:
        return [f"{i:08d}" for i in range(args["size"] // 11)]  # '"00000001",' is 11 bytes

    return agent.start()


@pytest.fixture
def manager(coordinator_factory: Callable[..., Coordinator]) -> CommandClient:
    """A manager that can use the reply channel."""
    return CommandClient(coordinator=coordinator_factory(), channel=SECURITY)


def test_large_output_is_fetched_by_any_manager_until_collected_or_expired(
    agent_factory: AgentFactory,
    manager: CommandClient,
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A 3 MB output goes by the channel; two managers fetch it by id; collected, no manager
    finds it; past keep_until the node deletes it and a direct fetch says it is unknown."""
    agent = start_big(agent_factory, channel=SECURITY, prune_period=0.1, period=0.2)
    size = 3 * 1024 * 1024
    expected = [f"{i:08d}" for i in range(size // 11)]
    rid = manager.unicast("n1", "app.big", {"size": size}, max_output=4 * 1024 * 1024, keep=2)
    reply = manager.wait(rid, 20).replies["n1"]
    assert reply.status is ReplyStatus.OK and reply.output is None and reply.blob is not None
    assert reply.blob.endpoint == agent.channel_endpoint
    assert manager.fetch_output(rid, "n1") == expected
    second = CommandClient(coordinator=coordinator_factory(), channel=SECURITY)
    assert second.fetch_output(rid, "n1") == expected
    manager.collect(rid)
    with pytest.raises(UnknownRequest):
        second.fetch_output(rid, "n1")
    short = manager.unicast("n1", "app.big", {"size": 100_000}, max_output=200_000, ttl=0.5, keep=0)
    blob = manager.wait(short, 10).replies["n1"].blob
    assert blob is not None
    assert fetch(blob, short, SECURITY)
    stored = Path(agent.state_dir) / "outputs" / short
    deadline = time.monotonic() + 10
    while stored.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not stored.exists()
    with pytest.raises(UnknownRequest, match="no stored output"):
        fetch(blob, short, SECURITY)


def test_small_output_stays_in_zookeeper_and_fetch_returns_it(
    agent_factory: AgentFactory, manager: CommandClient
) -> None:
    """An output under 64 KiB is carried in the reply znode even with a channel."""
    start_big(agent_factory, channel=SECURITY)
    rid = manager.unicast("n1", "app.big", {"size": 1100})
    reply = manager.wait(rid, 10).replies["n1"]
    assert reply.blob is None and len(reply.output) == 100
    assert manager.fetch_output(rid, "n1") == reply.output


def test_oversized_and_refused_large_outputs(
    agent_factory: AgentFactory,
    manager: CommandClient,
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """Output over max_output is cut (and says so); a fetch over the caller's limit, without
    a channel, or with a wrong secret is refused; a node without a channel cuts at 64 KiB;
    max_output above 64 MiB is refused at send."""
    start_big(agent_factory, "n1", channel=SECURITY)
    start_big(agent_factory, "n2")  # no reply channel
    rid = manager.broadcast("app.big", {"size": 1024 * 1024}, max_output=200_000)
    result = manager.wait(rid, 20)
    cut = result.replies["n1"]
    assert cut.truncated and cut.blob is not None and cut.blob.size <= 200_000
    text = manager.fetch_output(rid, "n1")
    assert isinstance(text, str) and text.startswith('["00000000","00000001"')
    inline = result.replies["n2"]
    assert inline.truncated and inline.blob is None
    assert len(json.dumps(inline.output).encode()) <= MAX_OUTPUT
    with pytest.raises(CommandInvalidArgument, match="over the 1000-byte limit"):
        manager.fetch_output(rid, "n1", max_size=1000)
    with pytest.raises(CommandError, match="give the CommandClient a channel"):
        CommandClient(coordinator=coordinator_factory()).fetch_output(rid, "n1")
    wrong = ChannelSecurity(secret=b"another-secret-0123456789")
    with pytest.raises(ChannelAuthFailed):
        CommandClient(coordinator=coordinator_factory(), channel=wrong).fetch_output(rid, "n1")
    with pytest.raises(CommandInvalidArgument, match="max_output"):
        manager.unicast("n1", "app.big", {"size": 1}, max_output=MAX_CHANNEL_OUTPUT + 1)
    with pytest.raises(CommandInvalidArgument):
        manager.fetch_output("../../etc", "n1")


def test_forged_blobs_are_refused(agent_factory: AgentFactory, manager: CommandClient) -> None:
    """Attack: a reply znode rewritten to a blob with another hash, or a size over the cap,
    fails its checks; the node never serves a path outside its output directory."""
    agent = start_big(agent_factory, channel=SECURITY)
    rid = manager.unicast("n1", "app.big", {"size": 200_000}, max_output=300_000)
    reply = manager.wait(rid, 10).replies["n1"]
    assert reply.blob is not None
    z = manager.coordinator.znodes
    forged = Reply(
        id=rid,
        node="n1",
        status=ReplyStatus.OK,
        blob=Blob(endpoint=reply.blob.endpoint, size=reply.blob.size, sha256="0" * 64),
    )
    assert z.set(reply_path(rid, "n1"), forged.to_json()) is not None  # an open cluster
    with pytest.raises(MalformedData, match="SHA-256"):
        manager.fetch_output(rid, "n1")
    doc = json.loads(forged.to_json())
    doc["blob"]["size"] = MAX_CHANNEL_OUTPUT + 1
    z.set(reply_path(rid, "n1"), json.dumps(doc).encode())
    with pytest.raises(MalformedData, match="blob size"):
        manager.fetch_output(rid, "n1")
    assert manager.get(rid).malformed == ("n1",)
    endpoint = agent.channel_endpoint
    assert endpoint is not None
    for asked in ({"op": "output", "id": "../markers"}, {"op": "read", "id": rid}, [1]):
        channel = connect(endpoint, SERVICE, SECURITY)
        try:
            channel.send(json.dumps(asked).encode(), 5)
            answer = json.loads(channel.recv_one(5))
        finally:
            channel.close()
        assert answer["ok"] is False and answer["error"]


def test_a_node_sending_more_than_announced_is_cut_off() -> None:
    """Attack: a server that offers or sends more bytes than the blob announced is refused."""

    def greedy(channel: Channel) -> None:
        channel.recv_one(5)
        channel.send(json.dumps({"ok": True, "size": MAX_OUTPUT + 10}).encode(), 5)
        channel.send(b"x" * (MAX_OUTPUT + 110), 5)

    listener = Listener(service=SERVICE, security=SECURITY, handler=greedy).start()
    try:
        blob = Blob(endpoint=listener.endpoint, size=MAX_OUTPUT + 5, sha256="a" * 64)
        with pytest.raises(MalformedData, match="offers"):
            fetch(blob, "1700000000000-0123456789ab", SECURITY)
        blob = Blob(endpoint=listener.endpoint, size=MAX_OUTPUT + 10, sha256="a" * 64)
        with pytest.raises(ChannelProtocolError, match="more than"):
            fetch(blob, "1700000000000-0123456789ab", SECURITY)
    finally:
        listener.stop()
