"""How a node takes requests: claim and marker (either one means taken), its watch, retiring."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mhafail.commands import CommandAgent, CommandClient, CommandContext, ReplyStatus
from mhafail.commands._journal import Markers
from mhafail.commands._model import REQUESTS, claim_path

pytestmark = pytest.mark.zookeeper

AgentFactory = Callable[..., CommandAgent]


def counting(agent: CommandAgent, runs: list[str]) -> CommandAgent:
    @agent.command("app.count")
    def count(ctx: CommandContext, args: dict[str, Any]) -> Any:
        runs.append(ctx.request.id)
        return len(runs)

    return agent


def test_a_claim_without_a_marker_is_never_run(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """A request this node claimed before its marker was written (a crash between the two, or
    a lost state directory) is answered ABANDONED and never run."""
    runs: list[str] = []
    agent = counting(agent_factory("n1"), runs)
    rid = client.unicast("n1", "app.count")
    client.coordinator.znodes.create(claim_path(rid, "n1"), b"{}")  # the claim alone
    agent.start()
    reply = client.wait(rid, 10).replies["n1"]
    assert reply.status is ReplyStatus.ABANDONED
    assert runs == []


def test_a_marker_without_a_claim_is_never_run(
    agent_factory: AgentFactory, client: CommandClient, tmp_path: Path
) -> None:
    """A request whose run-once marker is on disk but whose claim never reached ZooKeeper
    (a crash or a lost connection between the two) is answered ABANDONED and never run."""
    runs: list[str] = []
    agent = counting(agent_factory("n1", state_dir=tmp_path / "n1"), runs)
    rid = client.unicast("n1", "app.count")
    markers = Markers(tmp_path / "n1" / "markers")
    assert markers.take(rid)  # the marker alone
    markers.close()
    agent.start()
    reply = client.wait(rid, 10).replies["n1"]
    assert reply.status is ReplyStatus.ABANDONED
    assert runs == []
    assert client.coordinator.znodes.get(claim_path(rid, "n1")) is None


def test_a_lost_request_watch_is_replaced_within_a_period(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """When the node's request watch stops delivering (a re-arm read that failed), the node
    notices within ``period`` seconds and still runs the request, once."""
    runs: list[str] = []
    agent = counting(agent_factory("n1", period=0.3), runs)
    agent.start()
    assert client.wait(client.unicast("n1", "app.count"), 10).complete
    feed = agent._feed
    assert feed is not None and feed._list is not None
    feed._list.cancel()  # as if its last re-arm had failed: nothing more comes
    rid = client.unicast("n1", "app.count")
    reply = client.wait(rid, 10).replies["n1"]
    assert reply.status is ReplyStatus.OK
    assert runs.count(rid) == 1


def test_answered_requests_leave_the_node_folder(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """Requests every node answered are taken out of ``requests/`` soon (batched), while
    their replies stay readable by id."""
    runs: list[str] = []
    counting(agent_factory("n1"), runs).start()
    counting(agent_factory("n2"), runs).start()
    ids = [client.broadcast("app.count") for _ in range(5)]
    for rid in ids:
        assert client.wait(rid, 10).complete
    z = client.coordinator.znodes
    end = time.monotonic() + 5
    while z.children(REQUESTS) and time.monotonic() < end:
        time.sleep(0.05)
    assert z.children(REQUESTS) == []
    assert all(len(client.get(rid).replies) == 2 for rid in ids)
    assert sorted(runs) == sorted(ids * 2)
