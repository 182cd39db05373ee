"""Local behaviour without ZooKeeper: paths, values, validators, checkouts, views, git processes."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

import mhafail.config
from mhafail.config import (
    CheckCommand,
    Checkouts,
    ConfigRepository,
    ConfigView,
    Head,
    Limits,
    NodeReport,
    check_changes,
    check_path,
    run_validators,
    syntax_check,
)
from mhafail.config._paths import candidates, check_sha
from mhafail.config._repo import GitStore
from mhafail.errors import InvalidChange

AUTHOR = "Test <test@example.org>"


def test_all_equals_the_public_names() -> None:
    """mhafail.config.__all__ lists exactly its public names."""
    public = {
        n
        for n, v in vars(mhafail.config).items()
        if not n.startswith("_") and type(v).__name__ != "module"
    }
    assert set(mhafail.config.__all__) == public


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/abs",
        "a/../b",
        "..",
        "./a",
        "a//b",
        "a/",
        ".git",
        "x/.Git/y",
        "a\\b",
        "a\nb",
        "x" * 300,
    ],
)
def test_bad_paths_are_refused(path: str) -> None:
    """Absolute, traversal, empty parts, .git, backslashes, control chars, overlong: refused."""
    with pytest.raises(InvalidChange):
        check_path(path)


def test_change_set_limits_and_clashes() -> None:
    """Size limits, non-bytes content and file/directory clashes are refused with the path named."""
    limits = Limits(max_file_bytes=4, max_total_bytes=6, max_files=2)
    assert check_changes({"b": b"1", "a": None}, limits) == {"a": None, "b": b"1"}
    with pytest.raises(InvalidChange, match="global/x"):
        check_changes({"global/x": b"12345"}, limits)
    with pytest.raises(InvalidChange, match="limit 6"):
        check_changes({"a": b"1234", "b": b"1234"}, limits)
    with pytest.raises(InvalidChange, match="3 paths"):
        check_changes({"a": b"", "b": b"", "c": b""}, limits)
    with pytest.raises(InvalidChange, match="bytes"):
        check_changes({"a": "text"}, limits)  # type: ignore[dict-item]
    with pytest.raises(InvalidChange, match="is a file"):
        check_changes({"a": b"", "a/b": b""})
    with pytest.raises(InvalidChange):
        check_sha("abc123")


def test_resolution_order_is_node_global_default(tmp_path: Path) -> None:
    """A file resolves from the node folder first, then global/, then default/."""
    for rel, text in [
        ("default/a", "d"),
        ("default/b", "d"),
        ("default/c", "d"),
        ("global/b", "g"),
        ("global/c", "g"),
        ("n1/c", "n"),
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    view = ConfigView(root=tmp_path, sha="0" * 40, node="n1")
    assert [view.read(p) for p in ("a", "b", "c", "z")] == [b"d", b"g", b"n", None]
    assert {k: v.read_text() for k, v in view.files().items()} == {"a": "d", "b": "g", "c": "n"}
    other = ConfigView(root=tmp_path, sha="0" * 40, node="n2")
    assert other.read("c") == b"g"
    assert candidates("n1", "x") == ["n1/x", "global/x", "default/x"]
    with pytest.raises(InvalidChange):
        view.resolve("../n1/c")


def test_head_and_report_json_round_trip_and_reject_garbage() -> None:
    """Head and report documents round-trip; malformed znode data is an InvalidChange."""
    head = Head(sha="a" * 40, author=AUTHOR, message="m", time=1.5, parent=None, origin="n1")
    assert Head.from_json(head.to_json()) == head
    with pytest.raises(InvalidChange):
        Head.from_json(b"not json")
    with pytest.raises(InvalidChange):
        NodeReport.from_json("n1", b'{"state": "bogus"}')


def test_validators_report_problems_and_exceptions(tmp_path: Path) -> None:
    """Syntax errors, a failing check command and a raising callable all become problems."""
    (tmp_path / "a.toml").write_text("x = 1\n")
    (tmp_path / "b.json").write_text("{oops")
    (tmp_path / "c.toml").write_bytes(b"\xff\xfe")

    def explode(tree: Path, changed: frozenset[str]) -> list[str]:
        raise RuntimeError("boom")

    problems = run_validators(
        [syntax_check, CheckCommand(["sh", "-c", "echo nope >&2; exit 3"]), explode], tmp_path
    )
    assert any(p.startswith("b.json: invalid JSON") for p in problems)
    assert any(p.startswith("c.toml: not UTF-8") for p in problems)
    assert any("exited 3: nope" in p for p in problems)
    assert any("boom" in p for p in problems)
    assert not any(p.startswith("a.toml") for p in problems)
    with pytest.raises(InvalidChange):
        CheckCommand([])


def _version_commits(store: GitStore, tmp_path: Path, count: int) -> list[str]:
    """Commits whose every file holds the version number."""
    shas: list[str] = []
    parent = None
    for i in range(count):
        staged = tmp_path / f"stage{i}"
        changes: dict[str, bytes | None] = {f"global/f{j:02}": f"{i}\n".encode() for j in range(20)}
        store.stage(parent, changes, staged)
        parent = store.write_commit(
            parent=parent,
            paths=list(changes),
            staged=staged,
            message=f"v{i}",
            author=AUTHOR,
            when=0,
        )
        shas.append(parent)
    return shas


def test_readers_never_see_two_versions_during_rapid_swaps(tmp_path: Path) -> None:
    """A reader resolving current once always finds one complete version, never a mix or a gap."""
    store = GitStore.init(tmp_path / "repo" / "work")
    shas = _version_commits(store, tmp_path, 6)
    checkouts = Checkouts(root=tmp_path / "repo", keep=2)
    for sha in shas:
        checkouts.install(checkouts.prepare(store, sha), sha)
    checkouts.switch(shas[0])
    stop = threading.Event()
    seen: list[set[bytes]] = []
    failures: list[str] = []

    def read() -> None:
        while not stop.is_set():
            try:
                root = Path(os.path.realpath(checkouts.current_link))
            except OSError as exc:
                failures.append(f"current missing: {exc}")
                continue
            contents = {f.read_bytes() for f in sorted((root / "global").iterdir())}
            seen.append(contents)

    reader = threading.Thread(target=read)
    reader.start()
    for _ in range(60):
        for sha in shas:
            checkouts.switch(sha)
    stop.set()
    reader.join()
    assert not failures
    assert seen and all(len(s) == 1 for s in seen)
    assert len({next(iter(s)) for s in seen}) > 1  # the reader did observe several versions


def test_prune_keeps_the_live_version_and_the_most_recent(tmp_path: Path) -> None:
    """Old versions beyond keep are deleted; the live one never is."""
    store = GitStore.init(tmp_path / "repo" / "work")
    shas = _version_commits(store, tmp_path, 5)
    checkouts = Checkouts(root=tmp_path / "repo", keep=2)
    for i, sha in enumerate(shas):
        checkouts.install(checkouts.prepare(store, sha), sha)
        os.utime(checkouts.path(sha), (i, i))
    checkouts.switch(shas[0])
    removed = checkouts.prune()
    assert sorted(removed) == sorted(shas[1:3])
    assert sorted(p.name for p in checkouts.versions.iterdir()) == sorted([shas[0], *shas[3:]])


def test_working_copy_advance_keeps_edits_and_refuses_conflicts(tmp_path: Path) -> None:
    """Moving the working copy keeps unrelated edits, refuses to overwrite conflicting ones."""
    store = GitStore.init(tmp_path / "work")
    one, two = _version_commits(store, tmp_path, 2)
    store.advance(one)
    assert (store.path / "global" / "f00").read_bytes() == b"0\n"
    (store.path / "global" / "mine").write_bytes(b"untracked\n")
    assert store.conflicts(two) == []
    store.advance(two)
    assert (store.path / "global" / "f00").read_bytes() == b"1\n"
    assert (store.path / "global" / "mine").read_bytes() == b"untracked\n"
    store.git("reset", "-q", "--hard", one)
    (store.path / "global" / "f01").write_bytes(b"edited\n")
    assert store.conflicts(two) == ["global/f01"]
    with pytest.raises(InvalidChange, match="global/f01"):
        store.advance(two)
    saved = store.advance(two, force=True)
    assert saved is not None
    assert b"mhafail" in store.git("stash", "list")


def _children() -> list[str]:
    names = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                names.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
            except OSError:
                continue
    return names


def test_no_git_processes_outlive_repository_operations(tmp_path: Path) -> None:
    """Many commits, logs, diffs and views leave no git (cat-file) process running."""
    repo = ConfigRepository(name="r", base=tmp_path, node="n1").init()
    store = repo.store
    parent = None
    for i in range(15):
        staged = tmp_path / f"s{i}"
        store.stage(parent, {"global/a.toml": f"x = {i}\n".encode()}, staged)
        parent = store.write_commit(
            parent=parent,
            paths=["global/a.toml"],
            staged=staged,
            message="m",
            author=AUTHOR,
            when=0,
        )
        store.advance(parent)
        assert repo.log(5)[0].sha == parent
        repo.diff()
    assert not [c for c in _children() if "git" in c]
