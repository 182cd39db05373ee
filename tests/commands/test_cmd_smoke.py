"""Smoke: a broadcast ping reaches every node and each answers once."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mhafail.commands import CommandAgent, CommandClient, ReplyStatus, register_builtins

pytestmark = pytest.mark.zookeeper


def test_broadcast_ping_gets_one_ok_reply_per_node(
    agent_factory: Callable[..., CommandAgent], client: CommandClient
) -> None:
    """A broadcast ping is answered OK by each of three nodes."""
    for name in ("n1", "n2", "n3"):
        agent = agent_factory(name)
        register_builtins(agent)
        agent.start()
    rid = client.broadcast("ping")
    result = client.wait(rid, 10)
    assert result.complete, result
    assert sorted(result.replies) == ["n1", "n2", "n3"]
    assert all(r.status is ReplyStatus.OK for r in result.replies.values())
    assert result.replies["n2"].output["pong"] == "n2"
