"""Fixtures for the command tests: an agent and a client on one real ZooKeeper cluster."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mhafail.commands import CommandAgent, CommandClient
from mhafail.coordination import Coordinator, Membership, NodeInfo

Factory = Callable[..., Coordinator]


@pytest.fixture
def agent_factory(
    coordinator_factory: Factory, tmp_path: Path
) -> Iterator[Callable[..., CommandAgent]]:
    """``make(node, **kwargs)``: a registered member with an agent (not started); stopped after."""
    made: list[tuple[CommandAgent, Membership]] = []

    def make(node: str, *, roles: tuple[str, ...] = (), **kwargs: Any) -> CommandAgent:
        coordinator = kwargs.pop("coordinator", None) or coordinator_factory()
        membership = Membership(coordinator=coordinator, info=NodeInfo(name=node, roles=roles))
        membership.start()
        kwargs.setdefault("state_dir", tmp_path / node)
        agent = CommandAgent(coordinator=coordinator, node=node, **kwargs)
        made.append((agent, membership))
        return agent

    yield make
    for agent, membership in reversed(made):
        agent.stop()
        membership.stop()


@pytest.fixture
def client(coordinator_factory: Factory) -> CommandClient:
    """A command client on its own (open-cluster) coordinator."""
    return CommandClient(coordinator=coordinator_factory())
