"""Publication through ZooKeeper, in-process: CAS, conflicts, rebase, bad input, ZooKeeper down."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mhafail.config import CheckCommand, ConfigRepository, Limits, syntax_check
from mhafail.coordination import Coordinator
from mhafail.errors import (
    CoordinationUnavailable,
    HeadConflict,
    InvalidChange,
    ValidationFailed,
)
from mhafail.testing import TcpProxy

from .conftest import AUTHOR, REPO

pytestmark = pytest.mark.zookeeper


def _repo(base: Path, node: str, coordinator: Coordinator, **kw: object) -> ConfigRepository:
    return ConfigRepository(
        replicas=0,
        name=REPO,
        base=base / node,
        node=node,
        coordinator=coordinator,
        **kw,  # type: ignore[arg-type]
    ).init()


def test_concurrent_commits_exactly_one_wins_and_rebase_loses_nothing(
    coordinator_factory: Callable[..., Coordinator], tmp_path: Path
) -> None:
    """Two commits on the same base race: one wins, one conflicts; the loser's rebase keeps both."""
    c = coordinator_factory()
    a, b = _repo(tmp_path, "a", c), _repo(tmp_path, "b", c)
    base = a.commit({"global/x": b"0\n"}, message="base", author=AUTHOR)
    b.ensure_commit(base.sha, peers=[("a", str(a.worktree))])
    barrier = threading.Barrier(2)
    results: dict[str, object] = {}

    def run(name: str, repo: ConfigRepository, path: str) -> None:
        barrier.wait()
        try:
            results[name] = repo.commit(
                {path: name.encode()}, message=name, author=AUTHOR, base=base.sha
            )
        except HeadConflict as exc:
            results[name] = exc

    threads = [
        threading.Thread(target=run, args=("a", a, "global/from-a")),
        threading.Thread(target=run, args=("b", b, "global/from-b")),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conflicts = [n for n, r in results.items() if isinstance(r, HeadConflict)]
    assert len(conflicts) == 1
    loser = conflicts[0]
    winner = "b" if loser == "a" else "a"
    head = a.head()
    assert head is not None and head.sha == results[winner].sha  # type: ignore[attr-defined]
    repos = {"a": a, "b": b}
    peers = [(winner, str(repos[winner].worktree))]
    repos[loser].ensure_commit(head.sha, peers=peers)
    retried = repos[loser].commit(
        {f"global/from-{loser}": loser.encode()},
        message="retry",
        author=AUTHOR,
        base=base.sha,
        rebase=True,
    )
    assert retried.rebased and retried.parent == head.sha
    files = repos[loser].store.files(retried.sha)
    assert {"global/x", "global/from-a", "global/from-b"} <= set(files)


def test_rebase_refuses_when_both_sides_touch_the_same_file(
    coordinator_factory: Callable[..., Coordinator], tmp_path: Path
) -> None:
    """Rebasing over a head that changed the same file is a conflict naming that file."""
    c = coordinator_factory()
    a = _repo(tmp_path, "a", c)
    base = a.commit({"global/x": b"0\n"}, message="base", author=AUTHOR)
    a.commit({"global/x": b"1\n"}, message="one", author=AUTHOR)
    with pytest.raises(HeadConflict) as info:
        a.commit({"global/x": b"2\n"}, message="two", author=AUTHOR, base=base.sha, rebase=True)
    assert info.value.paths == ("global/x",)
    with pytest.raises(HeadConflict, match="pull and retry"):
        a.commit({"global/y": b"2\n"}, message="two", author=AUTHOR, base=base.sha)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"../etc/passwd": b"x"}, InvalidChange),
        ({"/etc/passwd": b"x"}, InvalidChange),
        ({"global/../../x": b"x"}, InvalidChange),
        ({".git/config": b"x"}, InvalidChange),
        ({"global/.GIT/hooks/post-checkout": b"x"}, InvalidChange),
        ({"global/big": b"x" * 2048}, InvalidChange),
        ({"global/a.toml": b"[table\nx = 1"}, ValidationFailed),
        ({"global/a.json": b'{"a": 1,}'}, ValidationFailed),
        ({"global/missing": None}, InvalidChange),
        ({}, InvalidChange),
    ],
)
def test_bad_commits_publish_nothing(
    coordinator_factory: Callable[..., Coordinator],
    tmp_path: Path,
    changes: dict[str, bytes | None],
    error: type[Exception],
) -> None:
    """Traversal, .git paths, oversized files, malformed TOML/JSON: refused, nothing published."""
    c = coordinator_factory()
    repo = _repo(tmp_path, "a", c, limits=Limits(max_file_bytes=1024))
    base = repo.commit({"global/ok": b"ok\n"}, message="base", author=AUTHOR)
    with pytest.raises(error):
        repo.commit(changes, message="bad", author=AUTHOR)
    head = repo.head()
    assert head is not None and head.sha == base.sha
    assert repo.store.main() == base.sha
    assert not list(repo.root.glob(".stage-*"))


def test_check_command_sees_the_staged_tree(
    coordinator_factory: Callable[..., Coordinator], tmp_path: Path
) -> None:
    """An external check command receives the whole staged tree and can veto the commit."""
    c = coordinator_factory()
    check = CheckCommand(
        [
            "sh",
            "-c",
            "test -f {tree}/default/required || echo missing >&2; test -f default/required",
        ]
    )
    repo = _repo(tmp_path, "a", c, validators=(syntax_check, check))
    with pytest.raises(ValidationFailed, match="missing"):
        repo.commit({"global/a": b"1"}, message="no", author=AUTHOR)
    assert repo.head() is None
    ok = repo.commit({"global/a": b"1", "default/required": b""}, message="yes", author=AUTHOR)
    assert repo.head() is not None and repo.head().sha == ok.sha  # type: ignore[union-attr]


def test_zookeeper_down_during_commit_fails_cleanly(
    coordinator_factory: Callable[..., Coordinator],
    tcp_proxy_factory: Callable[[str], TcpProxy],
    zookeeper: object,
    tmp_path: Path,
) -> None:
    """With ZooKeeper unreachable a commit raises CoordinationUnavailable and changes nothing."""
    observer = coordinator_factory()
    proxy = tcp_proxy_factory(zookeeper.address)  # type: ignore[attr-defined]
    c = coordinator_factory(hosts=proxy.address, session_timeout=2.0)
    repo = _repo(tmp_path, "a", c)
    base = repo.commit({"global/a": b"0"}, message="base", author=AUTHOR)
    proxy.cut()
    with pytest.raises(CoordinationUnavailable):
        repo.commit({"global/a": b"1"}, message="lost", author=AUTHOR)
    node = observer.znodes.get(f"config/{REPO}/head")
    assert node is not None and base.sha.encode() in node.data
    assert repo.store.main() == base.sha
    assert not list(repo.root.glob(".stage-*"))


def test_rollback_publishes_a_new_commit_with_the_old_tree(
    coordinator_factory: Callable[..., Coordinator], tmp_path: Path
) -> None:
    """Rollback adds a commit restoring an old tree; history is kept, unknown shas are refused."""
    c = coordinator_factory()
    repo = _repo(tmp_path, "a", c)
    one = repo.commit({"global/a": b"1"}, message="one", author=AUTHOR)
    two = repo.commit({"global/a": b"2", "global/b": b"b"}, message="two", author=AUTHOR)
    back = repo.rollback(one.sha, author=AUTHOR)
    assert back.parent == two.sha
    assert repo.store.read(back.sha, "global/a") == b"1"
    assert repo.store.read(back.sha, "global/b") is None
    assert [e.sha for e in repo.log(3)] == [back.sha, two.sha, one.sha]
    with pytest.raises(InvalidChange):
        repo.rollback("0" * 40, author=AUTHOR)
    with pytest.raises(InvalidChange):
        repo.rollback("abc", author=AUTHOR)
