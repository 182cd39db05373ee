"""Regressions from issue 12: directory/file swaps, apply errors, names, temp files, --dir."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mhafail.cli import main
from mhafail.config import ApplyState, ConfigAgent, ConfigRepository
from mhafail.coordination import Coordinator
from mhafail.errors import InvalidChange
from mhafail.testing import ZooKeeperServer

from .conftest import AUTHOR, REPO, AgentProcess, all_applied, live_sha, wait_reports

pytestmark = pytest.mark.zookeeper


def _repo(agent: AgentProcess, coordinator: Coordinator) -> ConfigRepository:
    return ConfigRepository(name=REPO, base=agent.base, node=agent.node, coordinator=coordinator)


def test_directory_replaced_by_a_file_applies_everywhere(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """global/d/x then a file global/d, committed from the CLI of a fresh node, applies on all."""
    c = coordinator_factory()
    n1, n2 = agent_factory("n1"), agent_factory("n2")
    first = _repo(n1, c).commit({"global/d/x.conf": b"1\n"}, message="dir", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], first.sha))
    work = n2.base / REPO / "work"
    (work / "global" / "d" / "x.conf").unlink()
    (work / "global" / "d").rmdir()
    (work / "global" / "d").write_bytes(b"now a file\n")
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster, "--repo", REPO]
    argv = ["config", "commit", "-m", "file", "--dir", str(n2.base), "--node", "n2", *zk]
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    head = _repo(n1, c).head()
    assert head is not None and head.parent == first.sha
    wait_reports(c, all_applied(["n1", "n2"], head.sha))
    for node in (n1, n2):
        assert (node.base / REPO / "current" / "global" / "d").read_bytes() == b"now a file\n"
        assert (node.base / REPO / "work" / "global" / "d").read_bytes() == b"now a file\n"


def test_a_node_that_cannot_apply_reports_the_error(
    coordinator_factory: Callable[..., Coordinator], tmp_path: Path
) -> None:
    """A git failure during apply is reported as pending with the error, not raised each pass."""
    c = coordinator_factory()
    committer = ConfigRepository(name=REPO, base=tmp_path / "n1", node="n1", coordinator=c).init()
    done = committer.commit({"global/a.conf": b"payload\n"}, message="a", author=AUTHOR)
    blob = committer.store.git("rev-parse", f"{done.sha}:global/a.conf").decode().strip()
    (committer.worktree / ".git" / "objects" / blob[:2] / blob[2:]).unlink()  # disk damage
    node = ConfigRepository(name=REPO, base=tmp_path / "n1", node="n1", coordinator=c)
    agent = ConfigAgent(repository=node, debounce=0)
    outcome = agent.converge()
    assert outcome.state is ApplyState.PENDING
    assert outcome.error.startswith(f"cannot apply {done.sha[:12]}")
    report = node.reports()["n1"]
    assert report.state is ApplyState.PENDING and "cannot apply" in report.error
    assert live_sha(tmp_path / "n1") is None


def test_file_names_that_are_not_utf8_are_refused_cleanly(
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A non-UTF-8 name gives InvalidChange from the API and exit 2 from the CLI, no traceback."""
    c = coordinator_factory()
    repo = ConfigRepository(name=REPO, base=tmp_path / "a", node="a", coordinator=c).init()
    with pytest.raises(InvalidChange, match="UTF-8"):
        repo.commit({"global/\udcff.conf": b"x"}, message="m", author=AUTHOR)
    work = repo.worktree
    (work / "global").mkdir()
    with open(os.path.join(os.fsencode(work / "global"), b"\xff.conf"), "wb") as out:
        out.write(b"x\n")
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster, "--repo", REPO]
    status = main(["config", "commit", "-m", "m", "--dir", str(tmp_path / "a"), "--node", "a", *zk])
    err = capsys.readouterr().err
    assert status == 2 and "UTF-8" in err and "Traceback" not in err
    assert c.znodes.get(f"config/{REPO}/head") is None


def test_large_commits_beside_a_running_agent_never_fail_after_publication(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """Large change sets committed on a node whose agent runs all return and are the head."""
    c = coordinator_factory()
    n1 = agent_factory("n1")
    repo = _repo(n1, c)
    for round_ in range(3):
        changes: dict[str, bytes | None] = {
            f"global/f{i:03d}.conf": f"{round_}:{i}\n".encode() for i in range(200)
        }
        done = repo.commit(changes, message=f"round {round_}", author=AUTHOR, rebase=True)
        head = repo.head()
        assert head is not None and head.sha == done.sha
    wait_reports(c, all_applied(["n1"], done.sha))
    work = n1.base / REPO / "work"
    assert not list(work.rglob("*.mhafail-tmp"))
    assert (work / "global" / "f199.conf").read_bytes() == b"2:199\n"


def test_relative_dir_works_for_commit_and_apply(
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A relative --dir / base commits from the CLI and applies complete version directories."""
    monkeypatch.chdir(tmp_path)
    c = coordinator_factory()
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster, "--repo", REPO]
    rel = ["--dir", "rel", "--node", "n1", *zk]
    assert main(["config", "init", *rel]) == 0
    (tmp_path / "rel" / REPO / "work" / "global").mkdir()
    (tmp_path / "rel" / REPO / "work" / "global" / "a.conf").write_bytes(b"a\n")
    assert main(["config", "commit", "-m", "relative", *rel]) == 0
    repo = ConfigRepository(name=REPO, base="rel", node="n1", coordinator=c)
    assert repo.base == tmp_path / "rel"
    outcome = ConfigAgent(repository=repo, debounce=0).converge()
    assert outcome.state is ApplyState.APPLIED and outcome.sha is not None
    version = tmp_path / "rel" / REPO / "versions" / outcome.sha
    assert (version / "global" / "a.conf").read_bytes() == b"a\n"
    assert not (tmp_path / "rel" / REPO / "work" / "rel").exists()


def test_a_node_upgraded_with_an_empty_export_serves_its_live_version(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A node whose export repository is missing (made by an older version) re-serves the head."""
    c = coordinator_factory()
    n1 = agent_factory("n1")
    done = _repo(n1, c).commit({"global/a.conf": b"1\n"}, message="one", author=AUTHOR)
    wait_reports(c, all_applied(["n1"], done.sha))
    n1.stop()
    shutil.rmtree(n1.base / REPO / "export")
    n1.start()
    agent_factory("n2")
    wait_reports(c, all_applied(["n1", "n2"], done.sha))
