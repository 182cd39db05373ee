"""Replication across real node processes: real ZooKeeper, real git daemons, SIGKILL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mhafail.config import ApplyState, ConfigRepository, UpdateMode
from mhafail.coordination import Coordinator
from mhafail.errors import ValidationFailed

from .conftest import AUTHOR, REPO, AgentProcess, all_applied, live_sha, reports, wait_reports

pytestmark = pytest.mark.zookeeper


def _repo(agent: AgentProcess, coordinator: Coordinator) -> ConfigRepository:
    """A repository object over a node's directory, as that node's operator uses it."""
    return ConfigRepository(name=REPO, base=agent.base, node=agent.node, coordinator=coordinator)


def test_commit_on_any_node_is_applied_on_all(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A commit made on any of 3 nodes goes live on all of them, files resolved per node."""
    c = coordinator_factory()
    nodes = [agent_factory(n) for n in ("n1", "n2", "n3")]
    names = [a.node for a in nodes]
    first = _repo(nodes[0], c).commit(
        {"global/mta.toml": b"port = 25\n", "n2/mta.toml": b"port = 2525\n"},
        message="first",
        author=AUTHOR,
    )
    wait_reports(c, all_applied(names, first.sha))
    second = _repo(nodes[2], c).commit(
        {"default/limits.json": b'{"max": 10}'}, message="from n3", author=AUTHOR, rebase=True
    )
    wait_reports(c, all_applied(names, second.sha))
    for agent in nodes:
        assert live_sha(agent.base) == second.sha
        view = _repo(agent, c).view()
        assert view is not None
        expected = b"port = 2525\n" if agent.node == "n2" else b"port = 25\n"
        assert view.read("mta.toml") == expected
        assert view.read("limits.json") == b'{"max": 10}'
        # The working copy followed too (mode always, no local edits).
        assert (agent.base / REPO / "work" / "default" / "limits.json").exists()


def test_invalid_commit_is_rejected_and_no_node_changes(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """Malformed TOML is refused before publication: the head and every node stay as they were."""
    c = coordinator_factory()
    nodes = [agent_factory(n) for n in ("n1", "n2", "n3")]
    repo = _repo(nodes[0], c)
    good = repo.commit({"global/a.toml": b"x = 1\n"}, message="good", author=AUTHOR)
    wait_reports(c, all_applied([a.node for a in nodes], good.sha))
    head_before = c.znodes.get(f"config/{REPO}/head")
    with pytest.raises(ValidationFailed, match=r"global/a\.toml"):
        repo.commit({"global/a.toml": b"x = = 1\n"}, message="bad", author=AUTHOR)
    head_after = c.znodes.get(f"config/{REPO}/head")
    assert head_before is not None and head_after is not None
    assert head_after.version == head_before.version
    assert all(live_sha(a.base) == good.sha for a in nodes)
    assert repo.store.main() == good.sha


def test_node_local_validation_failure_keeps_old_version(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A node whose own check refuses a version reports rejected and keeps the old one live."""
    c = coordinator_factory()
    check = "sh -c '! grep -rq forbidden {tree}'"
    n1, n2 = agent_factory("n1"), agent_factory("n2")
    n3 = agent_factory("n3", "--check-cmd", check)
    good = _repo(n1, c).commit({"global/a.conf": b"fine\n"}, message="ok", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2", "n3"], good.sha))
    bad = _repo(n1, c).commit({"global/a.conf": b"forbidden\n"}, message="x", author=AUTHOR)

    def settled(r: dict[str, object]) -> bool:
        cur = reports(c)
        return (
            all_applied(["n1", "n2"], bad.sha)(cur)
            and cur["n3"].state is ApplyState.REJECTED
            and cur["n3"].target == bad.sha
        )

    final = wait_reports(c, settled)
    assert final["n3"].sha == good.sha
    assert "check command sh exited" in final["n3"].error
    assert live_sha(n3.base) == good.sha
    assert (n3.base / REPO / "current" / "global" / "a.conf").read_bytes() == b"fine\n"
    assert live_sha(n2.base) == bad.sha
    assert _repo(n1, c).status().drift == ("n3",)


def test_node_down_during_three_commits_applies_latest_on_return(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A SIGKILLed node misses 3 commits and applies the latest one when it comes back."""
    c = coordinator_factory()
    n1, _n2, n3 = (agent_factory(n) for n in ("n1", "n2", "n3"))
    repo = _repo(n1, c)
    first = repo.commit({"global/v": b"0\n"}, message="v0", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2", "n3"], first.sha))
    n3.kill()
    last = first
    for i in range(1, 4):
        last = repo.commit({"global/v": f"{i}\n".encode()}, message=f"v{i}", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], last.sha))
    assert live_sha(n3.base) == first.sha
    n3.start()
    wait_reports(c, all_applied(["n1", "n2", "n3"], last.sha))
    assert (n3.base / REPO / "current" / "global" / "v").read_bytes() == b"3\n"


def test_publisher_dies_and_a_peer_that_fetched_serves_the_rest(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """After the publisher dies, a node thawed later fetches the commit from a peer that has it."""
    c = coordinator_factory()
    n1, _n2, n3 = (agent_factory(n) for n in ("n1", "n2", "n3"))
    repo = _repo(n1, c)
    repo.set_mode("n3", UpdateMode.FROZEN)
    wait_reports(c, lambda r: "n3" in r and r["n3"].state is ApplyState.HELD)
    commit = repo.commit({"global/a": b"1\n"}, message="one", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], commit.sha))
    n1.kill()
    repo.set_mode("n3", None)
    wait_reports(c, all_applied(["n2", "n3"], commit.sha))
    assert live_sha(n3.base) == commit.sha


def test_without_any_source_nodes_report_pending_until_one_returns(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    tmp_path: Path,
) -> None:
    """With every holder of a commit down, the others report pending and why, then catch up."""
    c = coordinator_factory()
    n1, _n2, _n3 = (agent_factory(n) for n in ("n1", "n2", "n3"))
    repo = _repo(n1, c)
    base = repo.commit({"global/a": b"0\n"}, message="base", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2", "n3"], base.sha))
    for node in ("n2", "n3"):
        repo.set_mode(node, UpdateMode.FROZEN)
    wait_reports(c, lambda r: all(r[n].state is ApplyState.HELD for n in ("n2", "n3")))
    # The operator override: published with no copy elsewhere (frozen nodes still hold).
    commit = repo.commit({"global/a": b"1\n"}, message="one", author=AUTHOR, replicas=0)
    wait_reports(c, all_applied(["n1"], commit.sha))
    n1.kill()
    for node in ("n2", "n3"):
        repo.set_mode(node, None)
    stuck = wait_reports(
        c,
        lambda r: all(
            r[n].state is ApplyState.PENDING and r[n].target == commit.sha for n in ("n2", "n3")
        ),
    )
    assert "cannot fetch" in stuck["n2"].error
    assert stuck["n2"].sha == base.sha
    n1.start()
    wait_reports(c, all_applied(["n1", "n2", "n3"], commit.sha))


def test_if_unchanged_node_holds_while_local_edits_conflict(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """An if_unchanged node does not apply over uncommitted edits; it applies once they are gone."""
    c = coordinator_factory()
    n1 = agent_factory("n1")
    n2 = agent_factory("n2", "--mode", "if_unchanged")
    repo = _repo(n1, c)
    first = repo.commit({"global/a": b"0\n"}, message="v0", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], first.sha))
    edited = n2.base / REPO / "work" / "global" / "a"
    edited.write_bytes(b"local edit\n")
    second = repo.commit({"global/a": b"1\n"}, message="v1", author=AUTHOR)
    held = wait_reports(c, lambda r: r["n2"].state is ApplyState.HELD)
    assert "global/a" in held["n2"].error
    assert live_sha(n2.base) == first.sha
    edited.write_bytes(b"0\n")  # the operator reverts the edit
    wait_reports(c, all_applied(["n1", "n2"], second.sha))
