"""Attacks on config replication: real ZooKeeper, real git daemons, real node processes.

The attacker has write access to ZooKeeper (a raw kazoo client, no mhafail
code) and runs its own git daemon on 127.0.0.1. Each test performs the
attack and asserts it fails: nothing written or deleted outside the node's
directory, the version reported ``rejected`` and never live.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient  # noqa: TID251 - the attacker is a raw ZooKeeper client

from mhafail.config import ApplyState, ConfigRepository
from mhafail.coordination import Coordinator
from mhafail.testing import ZooKeeperServer
from mhafail.testing._children import reap, spawn

from .conftest import AUTHOR, REPO, AgentProcess, all_applied, live_sha, reports, wait_reports

pytestmark = pytest.mark.zookeeper

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "Mallory",
    "GIT_AUTHOR_EMAIL": "m@example.org",
    "GIT_COMMITTER_NAME": "Mallory",
    "GIT_COMMITTER_EMAIL": "m@example.org",
}


def git(repo: Path, *args: str, data: bytes | None = None, check: bool = True) -> str:
    """Run real git in ``repo`` and return its stdout."""
    argv = ["git", "-C", str(repo), *args]
    proc = subprocess.run(
        argv, input=data, capture_output=True, env=GIT_ENV, timeout=60, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"git {args}: {proc.stderr.decode()}")
    return proc.stdout.decode().strip()


def mktree(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    """``git mktree`` from (mode, sha, name) entries; it accepts '..' names."""
    listing = "".join(
        f"{mode} {'tree' if mode == '040000' else 'blob'} {sha}\t{name}\n"
        for mode, sha, name in entries
    )
    return git(repo, "mktree", data=listing.encode())


def blob(repo: Path, data: bytes) -> str:
    """Write a blob with ``git hash-object -w``."""
    return git(repo, "hash-object", "-w", "--stdin", data=data)


def commit(repo: Path, tree: str) -> str:
    """``git commit-tree`` (a root commit) and point ``main`` at it."""
    sha = git(repo, "commit-tree", tree, "-m", "innocent change")
    git(repo, "update-ref", "refs/heads/main", sha)
    return sha


def dotdot_tree(repo: Path, payload: bytes, depth: int = 5) -> str:
    """A ``global`` tree whose ".." chain reaches ``victim`` and ``planted`` at depths 0-5.

    Five levels up from a node's checkout of ``global/`` is the test's own ``tmp_path``.
    """
    data = blob(repo, payload)
    files = [("100644", data, "victim"), ("100644", data, "planted")]
    tree = mktree(repo, files)
    for _ in range(depth):
        tree = mktree(repo, [*files, ("040000", tree, "..")])
    return mktree(repo, [("040000", tree, "global")])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def attacker(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """The attacker's repository (bare, at ``<base>/mta/export``) and its own git daemon."""
    base = tmp_path / "attacker"
    repo = base / REPO / "export"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "--bare")
    port = _free_port()
    argv = ["git", "daemon", "--export-all", "--reuseaddr", f"--base-path={base}"]
    daemon = spawn([*argv, "--listen=127.0.0.1", f"--port={port}", str(base)])
    end = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > end:
                raise
            time.sleep(0.02)
    try:
        yield repo, f"127.0.0.1:{port}"
    finally:
        reap(daemon)


def publish_evil_head(zookeeper: ZooKeeperServer, cluster: str, sha: str, endpoint: str) -> None:
    """With a raw kazoo client: register a fake member serving git, point the head at ``sha``."""
    client = KazooClient(hosts=zookeeper.address)
    client.start(timeout=10)
    try:
        root = f"/mhafail/{cluster}"
        member = {"name": "evil", "endpoints": {"git": endpoint}, "addresses": ["127.0.0.1"]}
        client.create(f"{root}/members/evil", json.dumps(member).encode(), makepath=True)
        head = {"sha": sha, "origin": "evil", "author": "x", "message": "x", "time": 1.0}
        client.set(f"{root}/config/{REPO}/head", json.dumps(head).encode())
    finally:
        client.stop()
        client.close()


def snapshot(top: Path, skip: Path) -> dict[str, tuple[bytes | None, int]]:
    """Every path under ``top`` but ``skip`` and agents' logs: content (None: dir) and mtime."""
    found: dict[str, tuple[bytes | None, int]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if here / d != skip]
        for name in dirnames:
            found[str((here / name).relative_to(top))] = (None, (here / name).lstat().st_mtime_ns)
        for name in filenames:
            path = here / name
            if path.suffix == ".out":
                continue  # the agents' own stdout logs
            found[str(path.relative_to(top))] = (path.read_bytes(), path.lstat().st_mtime_ns)
    return found


def _refused(node: str, sha: str) -> Callable[[dict[str, object]], bool]:
    def check(current: dict[str, object]) -> bool:
        report = current.get(node)
        return (
            report is not None
            and getattr(report, "target", None) == sha
            and getattr(report, "state", None) is ApplyState.REJECTED
        )

    return check


def _good_node(
    agent_factory: Callable[..., AgentProcess], c: Coordinator, tmp_path: Path
) -> tuple[AgentProcess, str]:
    node = agent_factory("n1")
    repo = ConfigRepository(name=REPO, base=node.base, node="n1", coordinator=c)
    good = repo.commit({"global/mta.toml": b"port = 25\n"}, message="good", author=AUTHOR)
    wait_reports(c, all_applied(["n1"], good.sha))
    (tmp_path / "victim").write_bytes(b"original\n")
    return node, good.sha


def _assert_untouched(
    tmp_path: Path, node: AgentProcess, before: dict[str, tuple[bytes | None, int]], good: str
) -> None:
    assert snapshot(tmp_path, node.base) == before
    assert (tmp_path / "victim").read_bytes() == b"original\n"
    assert not list(tmp_path.rglob("planted"))
    assert live_sha(node.base) == good
    assert node.proc is not None and node.proc.poll() is None, "the agent must survive"


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("dotdot", "fsck"), ("symlink", "symbolic link"), ("dotgit", "fsck")],
)
def test_hostile_head_is_rejected_and_nothing_outside_the_root_changes(
    *,
    kind: str,
    reason: str,
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    attacker: tuple[Path, str],
) -> None:
    """A head pointing at a hostile commit on the attacker's daemon is rejected, writes nothing."""
    c = coordinator_factory()
    node, good = _good_node(agent_factory, c, tmp_path)
    repo, endpoint = attacker
    if kind == "dotdot":
        tree = dotdot_tree(repo, b"pwned\n")
    elif kind == "symlink":
        link = blob(repo, str(tmp_path / "victim").encode())
        tree = mktree(repo, [("040000", mktree(repo, [("120000", link, "victim")]), "global")])
    else:
        hook = mktree(repo, [("100755", blob(repo, b"#!/bin/sh\necho pwned\n"), "post-merge")])
        tree = mktree(repo, [("040000", mktree(repo, [("040000", hook, "hooks")]), ".git")])
    evil = commit(repo, tree)
    before = snapshot(tmp_path, node.base)
    publish_evil_head(zookeeper, zk_cluster, evil, endpoint)
    final = wait_reports(c, _refused("n1", evil))
    assert final["n1"].sha == good
    assert reason in final["n1"].error
    time.sleep(0.5)  # a few more passes: still nothing written, still not live
    _assert_untouched(tmp_path, node, before, good)
    assert reports(c)["n1"].state is ApplyState.REJECTED
    # The refused commit is neither applied nor passed on to other peers.
    export = node.base / REPO / "export"
    assert git(export, "cat-file", "-t", evil, check=False) == ""


def test_unsafe_objects_that_bypassed_fsck_are_still_rejected(
    *,
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    attacker: tuple[Path, str],
) -> None:
    """A '..' commit already in the node's repository (fetched without fsck) is never written."""
    c = coordinator_factory()
    node, good = _good_node(agent_factory, c, tmp_path)
    repo, endpoint = attacker
    evil = commit(repo, dotdot_tree(repo, b"pwned\n"))
    work = node.base / REPO / "work"
    git(work, "-c", "transfer.fsckObjects=false", "fetch", "-q", str(repo), evil)
    before = snapshot(tmp_path, node.base)
    publish_evil_head(zookeeper, zk_cluster, evil, endpoint)
    final = wait_reports(c, _refused("n1", evil))
    assert "'..'" in final["n1"].error
    time.sleep(0.5)
    _assert_untouched(tmp_path, node, before, good)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 5000,
        b'{"sha": "--upload-pack=touch /tmp/x", "origin": "evil"}',
        b'{"sha": "0x' + b"a" * 38 + b'"}',
        b'{"sha": "' + b"A" * 40 + b'"}',
        b'{"sha": "' + b"a" * 40 + b'", "origin": "../../etc"}',
        b'{"sha": "' + b"a" * 40 + b'", "time": NaN}',
        b'{"sha": "' + b"a" * 40 + b'", "message": "' + b"m" * 200_000 + b'"}',
        b"[]",
    ],
)
def test_malformed_head_is_reported_and_the_node_recovers(
    *,
    data: bytes,
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
) -> None:
    """A malformed head is refused with a reason, the live version stays, a rollback recovers."""
    c = coordinator_factory()
    node, good = _good_node(agent_factory, c, tmp_path)
    client = KazooClient(hosts=zookeeper.address)
    client.start(timeout=10)
    try:
        client.set(f"/mhafail/{zk_cluster}/config/{REPO}/head", data)
    finally:
        client.stop()
        client.close()
    final = wait_reports(
        c, lambda r: r["n1"].state is ApplyState.REJECTED and "malformed head" in r["n1"].error
    )
    assert final["n1"].sha == good and live_sha(node.base) == good
    # The way out: an operator rolls back to a good version over the bad head.
    repo = ConfigRepository(name=REPO, base=node.base, node="n1", coordinator=c)
    fixed = repo.rollback(good, author=AUTHOR)
    assert fixed.head.parent is None
    wait_reports(c, all_applied(["n1"], fixed.sha))
    assert live_sha(node.base) == fixed.sha


def _endpoint(node: AgentProcess) -> str:
    for line in node.log.read_bytes().splitlines():
        if line.startswith(b"{") and json.loads(line).get("event") == "ready":
            return str(json.loads(line)["git"])
    raise AssertionError("no ready line")


def test_git_daemon_serves_published_history_only(
    agent_factory: Callable[..., AgentProcess],
    coordinator_factory: Callable[..., Coordinator],
    tmp_path: Path,
) -> None:
    """A stashed secret in the working copy is neither advertised nor fetchable from the daemon."""
    c = coordinator_factory()
    node, good = _good_node(agent_factory, c, tmp_path)
    work = node.base / REPO / "work"
    (work / "global" / "mta.toml").write_bytes(b'password = "hunter2"\n')
    git(work, "stash", "-q")
    stash = git(work, "rev-parse", "refs/stash")
    secret_blob = git(work, "rev-parse", f"{stash}:global/mta.toml")
    # A draft commit nobody published, and the whole working repository.
    draft = git(work, "commit-tree", git(work, "rev-parse", f"{stash}^{{tree}}"), "-m", "draft")
    endpoint = _endpoint(node)
    export_url, work_url = (f"git://{endpoint}/{REPO}/{d}" for d in ("export", "work"))
    listed = git(tmp_path, "ls-remote", export_url)
    assert "stash" not in listed and stash not in listed
    assert {line.split()[1] for line in listed.splitlines()} <= {"HEAD", "refs/heads/main"}
    assert good in listed
    assert git(tmp_path, "ls-remote", work_url, check=False) == ""
    thief = tmp_path / "thief"
    git(tmp_path, "init", "-q", str(thief))
    for url in (export_url, work_url):
        for sha in (stash, secret_blob, draft):
            for version in ("2", "0"):
                fetch = ["-c", f"protocol.version={version}", "fetch", "-q", url, sha]
                assert git(thief, *fetch, check=False) == "", (url, sha, version)
                assert git(thief, "cat-file", "-t", sha, check=False) == "", (url, sha, version)
    # The published version itself is fetchable by sha, which is what peers do.
    git(thief, "-c", "protocol.version=2", "fetch", "-q", export_url, good)
