"""Regressions from issue 12, items 4, 7, 9, 10 and 11: bytes, bounds, quorum, checks."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mhafail.cli import main
from mhafail.config import ApplyState, ConfigRepository
from mhafail.config._repo import GitStore
from mhafail.coordination import ConnectionState, Coordinator
from mhafail.errors import CoordinationUnavailable, NotReplicated, ValidationFailed
from mhafail.testing import ZooKeeperServer

from .conftest import AUTHOR, REPO, AgentProcess, all_applied, live_sha, wait_reports

pytestmark = pytest.mark.zookeeper


def _repo(agent: AgentProcess, coordinator: Coordinator, **kwargs: object) -> ConfigRepository:
    return ConfigRepository(
        name=REPO, base=agent.base, node=agent.node, coordinator=coordinator, **kwargs
    )


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root``: its bytes and permission bits."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_gitattributes_never_make_nodes_disagree_on_bytes(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """With eol/ident attributes, full and incremental checkouts of one sha hold the same bytes."""
    c = coordinator_factory()
    n1, n2 = agent_factory("n1"), agent_factory("n2")
    repo = _repo(n1, c)
    first = repo.commit({"global/seed.conf": b"seed\n"}, message="seed", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], first.sha))
    changes: dict[str, bytes | None] = {
        ".gitattributes": b"*.conf text eol=crlf\n*.txt ident\n",
        "global/a.conf": b"line one\nline two\n",
        "global/b.txt": b"$Id$\n",
    }
    done = repo.commit(changes, message="attributes", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], done.sha))  # incremental applies
    agent_factory("n3")  # a fresh node: a full checkout
    wait_reports(c, all_applied(["n1", "n2", "n3"], done.sha))
    trees = [_tree(base / REPO / "versions" / done.sha) for base in (n1.base, n2.base)]
    trees.append(_tree(n1.base.parent / "n3" / REPO / "versions" / done.sha))
    assert trees[0] == trees[1] == trees[2]
    assert trees[2]["global/a.conf"][0] == b"line one\nline two\n"
    assert trees[2]["global/b.txt"][0] == b"$Id$\n"
    work = n1.base.parent / "n3" / REPO / "work"
    assert (work / "global" / "a.conf").read_bytes() == b"line one\nline two\n"
    assert live_sha(n1.base.parent / "n3") == done.sha


def _bounded(call: Callable[[], object], bound: float) -> float:
    """Run ``call``, which must raise CoordinationUnavailable, and return how long it took."""
    start = time.monotonic()
    with pytest.raises(CoordinationUnavailable):
        call()
    took = time.monotonic() - start
    assert took < bound, f"took {took:.1f} s"
    return took


def test_api_calls_are_bounded_and_unambiguous_with_zookeeper_stopped(tmp_path: Path) -> None:
    """With ZooKeeper stopped, head/status/commit fail within a bound; nothing is published late."""
    with ZooKeeperServer(tick_time=500, workdir=tmp_path / "zk") as zk:
        zk.start()
        c = Coordinator(hosts=zk.address, cluster="bounded", session_timeout=8.0, open_acl=True)
        c.start()
        try:
            stopped = threading.Event()

            def stop_zookeeper(tree: Path, changed: frozenset[str]) -> list[str]:
                # Between the head read and the compare-and-set.
                if "global/late.conf" in changed:
                    zk.stop()
                    end = time.monotonic() + 10
                    while c.state is ConnectionState.CONNECTED and time.monotonic() < end:
                        time.sleep(0.01)
                    stopped.set()
                return []

            repo = ConfigRepository(
                name=REPO,
                base=tmp_path / "n1",
                node="n1",
                coordinator=c,
                validators=(stop_zookeeper,),
                zk_timeout=1.0,
                replicas=0,
            ).init()
            first = repo.commit({"global/a.conf": b"1\n"}, message="one", author=AUTHOR)
            # The compare-and-set is never sent on a dead connection.
            _bounded(
                lambda: repo.commit({"global/late.conf": b"x\n"}, message="late", author=AUTHOR),
                4.0,
            )
            assert stopped.is_set()
            _bounded(repo.head, 2.5)
            _bounded(repo.status, 2.5)
            _bounded(
                lambda: repo.commit({"global/b.conf": b"2\n"}, message="two", author=AUTHOR), 4.0
            )
            zk.start()
            assert c.wait_for_lease(15)
            time.sleep(1.0)  # a queued request would have been sent by now
            head = repo.head()
            assert head is not None and head.sha == first.sha
            assert repo.status().head == head
        finally:
            c.stop()


def test_a_commit_is_published_only_once_other_nodes_hold_it(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """By default a majority of live nodes (n1 and one other) hold a commit before it goes live."""
    c = coordinator_factory()
    n1, n2, n3 = (agent_factory(n) for n in ("n1", "n2", "n3"))
    repo = _repo(n1, c)
    for i in range(3):
        done = repo.commit({"global/a.conf": f"{i}\n".encode()}, message=f"c{i}", author=AUTHOR)
        assert done.holders and set(done.holders) <= {"n2", "n3"}
        for node in (n2, n3):
            if node.node in done.holders:
                export = GitStore(node.base / REPO / "export")
                assert export.has_commit(done.sha)
    wait_reports(c, all_applied(["n1", "n2", "n3"], done.sha))
    # A node alone cannot publish by default: nobody else would have its commit.
    n2.stop()
    n3.stop()
    with pytest.raises(NotReplicated, match="replicas=0"):
        repo.commit({"global/a.conf": b"alone\n"}, message="alone", author=AUTHOR)
    head = repo.head()
    assert head is not None and head.sha == done.sha


def test_a_commit_nobody_can_fetch_is_refused_and_never_blocks_the_cluster(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A workspace no daemon serves never becomes the only holder: held, refused, or passed over."""
    c = coordinator_factory()
    n1, n2 = agent_factory("n1"), agent_factory("n2")
    first = _repo(n1, c).commit({"global/a.conf": b"1\n"}, message="one", author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], first.sha))
    zk = ["--zk", n1.zk, "--cluster", n1.cluster, "--repo", REPO]
    ws = ["--dir", str(tmp_path / "ws"), "--node", "ws", *zk]
    assert main(["config", "init", *ws]) == 0
    work = tmp_path / "ws" / REPO / "work"
    # A small commit travels with its proposal: both nodes hold it, so it
    # is published and applied although nobody can fetch from ws.
    (work / "global" / "a.conf").write_bytes(b"from ws\n")
    commit = ["config", "commit", "-m", "ws", "--replicate-timeout", "1", *ws]
    assert main([*commit, "--json"]) == 0
    held = _repo(n1, c).head()
    assert held is not None and held.sha != first.sha
    wait_reports(c, all_applied(["n1", "n2"], held.sha))
    # Too large to travel with the proposal, and ws serves nothing: refused.
    (work / "global" / "big.conf").write_bytes(os.urandom(700 * 1024))
    capsys.readouterr()
    assert main(commit) == 2
    err = capsys.readouterr().err
    assert "was not published" in err and "--replicas 0" in err
    head = _repo(n1, c).head()
    assert head is not None and head.sha == held.sha
    # The operator forces it through: nobody can fetch it...
    assert main([*commit, "--replicas", "0"]) == 0
    lost = _repo(n1, c).head()
    assert lost is not None and lost.sha != first.sha
    wait_reports(c, lambda r: all(r[n].target == lost.sha and r[n].error for n in ("n1", "n2")))
    # ...and yet rollback, commit (rebase) and pull all get past it.
    rolled = _repo(n2, c).rollback(first.sha, author=AUTHOR)
    wait_reports(c, all_applied(["n1", "n2"], rolled.sha))
    (work / "global" / "c.conf").write_bytes(b"c\n")
    assert main([*commit, "--replicas", "0", "--rebase"]) == 0
    lost = _repo(n1, c).head()
    assert lost is not None
    fixed = _repo(n1, c).commit(
        {"global/b.conf": b"b\n"}, message="over a lost head", author=AUTHOR, rebase=True
    )
    assert fixed.parent == lost.sha and fixed.rebased
    wait_reports(c, all_applied(["n1", "n2"], fixed.sha))
    assert _repo(n2, c).pull() == fixed.sha
    assert (n2.base / REPO / "current" / "global" / "a.conf").read_bytes() == b"1\n"


def _check_file() -> bytes:
    """A cluster check that refuses any tree holding ``global/bad.conf``."""
    script = (
        "import os, sys; "
        "sys.exit('bad.conf is refused' if os.path.exists('global/bad.conf') else 0)"
    )
    return f"command = [{json.dumps(sys.executable)}, '-c', {json.dumps(script)}]\n".encode()


def test_commit_runs_the_check_the_repository_declares(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The committer and every node run .mhafail/check.toml; a tree it rejects is never live."""
    c = coordinator_factory()
    n1, _n2 = agent_factory("n1"), agent_factory("n2")
    repo = _repo(n1, c)
    first = repo.commit(
        {".mhafail/check.toml": _check_file(), "global/a.conf": b"a\n"},
        message="declare the check",
        author=AUTHOR,
    )
    wait_reports(c, all_applied(["n1", "n2"], first.sha))
    with pytest.raises(ValidationFailed, match=r"bad\.conf is refused"):
        repo.commit({"global/bad.conf": b"x\n"}, message="bad", author=AUTHOR)
    (n1.base / REPO / "work" / "global" / "bad.conf").write_bytes(b"x\n")
    zk = ["--zk", n1.zk, "--cluster", n1.cluster, "--repo", REPO]
    capsys.readouterr()
    assert main(["config", "commit", "-m", "bad", "--dir", str(n1.base), "--node", "n1", *zk]) == 2
    assert "bad.conf is refused" in capsys.readouterr().err
    head = repo.head()
    assert head is not None and head.sha == first.sha
    with pytest.raises(ValidationFailed, match=r"check\.toml: command must be"):
        repo.commit({".mhafail/check.toml": b"command = 'sh'\n"}, message="m", author=AUTHOR)
    # A committer that skips it (an older tool): every node still refuses the tree.
    skipping = _repo(n1, c, cluster_check=False)
    bad = skipping.commit({"global/bad.conf": b"x\n"}, message="bad", author=AUTHOR)
    rejected = wait_reports(
        c, lambda r: all(r[n].state is ApplyState.REJECTED for n in ("n1", "n2"))
    )
    assert "bad.conf is refused" in rejected["n2"].error and rejected["n2"].target == bad.sha
    assert live_sha(n1.base) == first.sha


def test_smaller_cli_findings(
    agent_factory: Callable[..., AgentProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Oversized files are never hashed, linked paths and unknown nodes are refused clearly."""
    n1 = agent_factory("n1")
    zk = ["--zk", n1.zk, "--cluster", n1.cluster, "--repo", REPO]
    ws = ["--dir", str(tmp_path / "ws"), "--node", "ws", *zk]
    assert main(["config", "init", *ws]) == 0
    work = tmp_path / "ws" / REPO / "work"
    big = b"x" * (2 << 20)
    (work / "global").mkdir()
    (work / "global" / "big.conf").write_bytes(big)
    blob = GitStore(work).git("hash-object", "--stdin", input=big).decode().strip()
    capsys.readouterr()
    assert main(["config", "commit", "-m", "big", "--replicas", "0", *ws]) == 2
    assert "exceeds the limit" in capsys.readouterr().err
    assert not (work / ".git" / "objects" / blob[:2] / blob[2:]).exists()
    (work / "global" / "big.conf").unlink()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.conf").write_bytes(b"x\n")
    (work / "global" / "linked").symlink_to(tmp_path / "elsewhere")
    assert (
        main(["config", "commit", "-m", "l", "--replicas", "0", *ws, "global/linked/x.conf"]) == 2
    )
    assert "global/linked: is a symbolic link" in capsys.readouterr().err
    ghost = ["config", "freeze", "--node", "ghost", "--dir", str(n1.base), *zk]
    assert main(ghost) == 2
    assert "unknown node 'ghost'" in capsys.readouterr().err
    assert main([*ghost, "--force"]) == 0
    assert main(["config", "thaw", "--node", "ghost", "--dir", str(n1.base), *zk]) == 0
    assert main(["config", "freeze", "--node", "n1", "--dir", str(n1.base), *zk]) == 0


def test_cli_connection_errors_are_one_line_and_bounded(tmp_path: Path) -> None:
    """A refused or silent ZooKeeper gives one stderr line, soon after --connect-timeout."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, not listening: refused
    try:
        for server in (silent, closed):
            address = f"127.0.0.1:{server.getsockname()[1]}"
            argv = [
                sys.executable, "-m", "mhafail", "config", "status", "--zk-open",
                "--dir", str(tmp_path), "--zk", address, "--cluster", "x",
                "--connect-timeout", "1",
            ]  # fmt: skip
            start = time.monotonic()
            proc = subprocess.run(argv, capture_output=True, timeout=60, check=False)
            took = time.monotonic() - start
            lines = proc.stderr.decode().strip().splitlines()
            assert proc.returncode == 2 and len(lines) == 1, lines
            assert "cannot reach ZooKeeper" in lines[0]
            assert took < 4.0, f"took {took:.1f} s"  # the timeout plus 3 s, as with 2 s and 5 s
    finally:
        silent.close()
        closed.close()
