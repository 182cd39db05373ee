"""Fixtures for config tests: real node processes (``mhafail config agent``) and waits."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mhafail.config import ApplyState, NodeReport
from mhafail.config._model import applied_path
from mhafail.coordination import Coordinator
from mhafail.testing import ZooKeeperServer
from mhafail.testing._children import reap, spawn

REPO = "mta"


class AgentProcess:
    """One ``mhafail config agent`` node process; its stdout goes to a file."""

    def __init__(self, *, zk: str, cluster: str, node: str, base: Path, extra: list[str]) -> None:
        self.zk, self.cluster, self.node, self.base, self.extra = zk, cluster, node, base, extra
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base.parent / f"{node}.out"

    def start(self, timeout: float = 30.0) -> AgentProcess:
        """Start the process and wait until it prints ``ready``."""
        argv = [
            sys.executable, "-m", "mhafail", "config", "agent",
            "--zk", self.zk, "--cluster", self.cluster, "--node", self.node,
            "--dir", str(self.base), "--repo", REPO, "--session-timeout", "1.0", *self.extra,
        ]  # fmt: skip
        with open(self.log, "wb") as out:
            self.proc = spawn(argv, stdout=out, stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.log.read_bytes().splitlines():
                if line.startswith(b"{") and json.loads(line).get("event") == "ready":
                    return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"{self.node} did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the node, as a crash would."""
        if self.proc is not None:
            reap(self.proc, signal.SIGKILL)
            self.proc = None

    def stop(self) -> None:
        """SIGTERM the node and wait for it."""
        if self.proc is not None:
            reap(self.proc)
            self.proc = None


@pytest.fixture
def agent_factory(
    zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """Start node processes (``make("n1", "--check-cmd", ...)``); all stopped after the test."""
    made: list[AgentProcess] = []

    def make(node: str, *extra: str) -> AgentProcess:
        agent = AgentProcess(
            zk=zookeeper.address,
            cluster=zk_cluster,
            node=node,
            base=tmp_path / node,
            extra=list(extra),
        )
        made.append(agent)
        return agent.start()

    yield make
    for agent in made:
        agent.stop()


def reports(coordinator: Coordinator, repo: str = REPO) -> dict[str, NodeReport]:
    """Every node's report."""
    out = {}
    for node in coordinator.znodes.children(applied_path(repo)) or []:
        znode = coordinator.znodes.get(applied_path(repo, node))
        if znode is not None:
            out[node] = NodeReport.from_json(node, znode.data)
    return out


def wait_reports(
    coordinator: Coordinator,
    predicate: Callable[[dict[str, NodeReport]], bool],
    timeout: float = 20.0,
) -> dict[str, NodeReport]:
    """Poll the reports until ``predicate`` holds; fail with the last reports."""
    end = time.monotonic() + timeout
    while True:
        current = reports(coordinator)
        if predicate(current):
            return current
        if time.monotonic() > end:
            raise AssertionError(f"reports never matched: {current}")
        time.sleep(0.05)


def all_applied(nodes: list[str], sha: str) -> Callable[[dict[str, NodeReport]], bool]:
    """Predicate: every node in ``nodes`` reports ``sha`` applied."""

    def check(current: dict[str, NodeReport]) -> bool:
        return all(
            n in current and current[n].sha == sha and current[n].state is ApplyState.APPLIED
            for n in nodes
        )

    return check


def live_sha(base: Path, repo: str = REPO) -> str | None:
    """The sha a node's ``current`` link points at."""
    try:
        return Path((base / repo / "current").readlink()).name
    except FileNotFoundError:
        return None


AUTHOR = "Test <test@example.org>"
