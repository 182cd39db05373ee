"""ConfigNode: the wiring of one node's replication, as an application does it.

``mhafail config agent`` runs one of these in the foreground; tests and the
benchmark start that command as real node processes. The wiring order
matters: the git daemon starts first, so the member info can advertise its
endpoint; the membership registers before the agent's first pass, so
peers can fetch from this node as soon as it reports.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from mhafail.config._agent import ConfigAgent
from mhafail.config._model import UpdateMode
from mhafail.config._paths import absolute_path
from mhafail.config._repository import ConfigRepository
from mhafail.config._serve import ENDPOINT, GitDaemon
from mhafail.config._validate import Validator, syntax_check
from mhafail.coordination import Coordinator, Membership, NodeInfo


@attrs.define(kw_only=True, eq=False)
class ConfigNode:
    """A git daemon, a membership and one agent per repository, for one node.

    Args:
        coordinator: a started coordinator.
        node: this node's name.
        base: the node's config directory.
        repos: repository names to replicate.
        host: the address the git daemon binds (the node's own address).
        port: the git daemon's port (0: a free one).
        mode: the update mode of every agent.
        validators: node-local validators (also used for commits made here).
        debounce: see :class:`ConfigAgent`.
    """

    coordinator: Coordinator
    node: str
    base: Path = attrs.field(converter=absolute_path)
    repos: Sequence[str]
    host: str = "127.0.0.1"
    port: int = 0
    mode: UpdateMode = UpdateMode.ALWAYS
    validators: Sequence[Validator] = (syntax_check,)
    debounce: float = 0.02

    daemon: GitDaemon | None = attrs.field(init=False, default=None)
    membership: Membership | None = attrs.field(init=False, default=None)
    agents: dict[str, ConfigAgent] = attrs.field(init=False, factory=dict)

    def start(self) -> ConfigNode:
        """Start the daemon, register the member, start the agents. Returns self."""
        repositories = [
            ConfigRepository(
                name=name,
                base=self.base,
                node=self.node,
                coordinator=self.coordinator,
                validators=self.validators,
            ).init()
            for name in self.repos
        ]
        self.daemon = GitDaemon(base=self.base, host=self.host, port=self.port).start()
        info = NodeInfo(
            name=self.node,
            addresses=[self.host],
            roles=["config"],
            started_at=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
            endpoints={ENDPOINT: self.daemon.endpoint},
        )
        try:
            self.membership = Membership(coordinator=self.coordinator, info=info).start()
            for repository in repositories:
                agent = ConfigAgent(
                    repository=repository,
                    membership=self.membership,
                    mode=self.mode,
                    validators=self.validators,
                    debounce=self.debounce,
                )
                self.agents[repository.name] = agent.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the agents, leave the cluster, stop the daemon; idempotent."""
        for agent in self.agents.values():
            agent.stop()
        if self.membership is not None:
            self.membership.stop()
        if self.daemon is not None:
            self.daemon.stop()
