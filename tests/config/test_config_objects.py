"""The in-process git object writer: byte-identical to git's own, fsck-clean, strict on input."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.config._objects import (
    LooseObjects,
    compress,
    decompress,
    encode_commit,
    encode_tree,
    object_id,
    parse_commit,
    parse_tree,
)
from mhafail.config._repo import GitStore
from mhafail.errors import InvalidChange

AUTHOR = "Test <test@example.org>"


def _git(
    repo: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> bytes:
    import os

    full = {**os.environ, "LC_ALL": "C", **(env or {})}
    return subprocess.run(
        ["git", "-C", str(repo), *args], input=input, capture_output=True, check=True, env=full
    ).stdout


def _reference_commit(
    store: GitStore, parent: str | None, staged: Path, paths: list[str], *, message: str, when: int
) -> str:
    """What git's own plumbing makes of the same change set (the old write_commit)."""
    index = store.path / ".git" / "ref-index"
    index.unlink(missing_ok=True)
    env = {"GIT_INDEX_FILE": str(index)}
    if parent is not None:
        _git(store.path, "read-tree", parent, env=env)
    info = []
    for p in paths:
        if (staged / p).is_file():
            sha = (
                _git(store.path, "hash-object", "-w", "--no-filters", str(staged / p))
                .decode()
                .strip()
            )
            info.append(f"100644 {sha}\t{p}")
        else:
            info.append(f"0 {'0' * 40}\t{p}")
    _git(
        store.path, "update-index", "--index-info", input=("\n".join(info) + "\n").encode(), env=env
    )
    tree = _git(store.path, "write-tree", env=env).decode().strip()
    stamp = f"@{when} +0000"
    ident = {
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.org",
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.org",
        "GIT_COMMITTER_DATE": stamp,
    }
    args = ["commit-tree", tree, *(["-p", parent] if parent else [])]
    return _git(store.path, *args, input=message.encode(), env={**env, **ident}).decode().strip()


def _stage(root: Path, changes: dict[str, bytes | None]) -> None:
    for path, data in changes.items():
        target = root / path
        if data is None:
            target.unlink(missing_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def test_objects_hash_like_git(tmp_path: Path) -> None:
    """Blob, tree and commit shas computed in-process equal git hash-object's."""
    store = GitStore.init(tmp_path / "r")
    for kind, body in [
        (b"blob", b""),
        (b"blob", b"a = 1\r\n\0binary\xff"),
        (b"tree", encode_tree([(b"100644", b"a", "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391")])),
    ]:
        expected = _git(store.path, "hash-object", "-t", kind.decode(), "--stdin", input=body)
        assert object_id(kind, body) == expected.decode().strip()
        sha = store.loose.write(kind, body)
        assert _git(store.path, "cat-file", kind.decode(), sha) == body


def test_tree_order_matches_mktree(tmp_path: Path) -> None:
    """Trees list entries in git's order (a directory sorts as name + '/'), as git mktree does."""
    store = GitStore.init(tmp_path / "r")
    blob = store.loose.write(b"blob", b"x")
    sub = store.loose.write(b"tree", encode_tree([(b"100644", b"f", blob)]))
    entries = [
        (b"100644", b"a.b", blob),
        (b"40000", b"a", sub),
        (b"100644", b"a-", blob),
        (b"100755", b"a0", blob),
        (b"100644", "é".encode(), blob),
    ]
    listing = "".join(
        f"{m.decode()} {'tree' if m == b'40000' else 'blob'} {s}\t{n.decode()}\n"
        for m, n, s in entries
    )
    expected = _git(store.path, "mktree", input=listing.encode()).decode().strip()
    assert store.loose.write(b"tree", encode_tree(entries)) == expected
    assert parse_tree(store.read_tree(expected)) == sorted(
        entries, key=lambda e: e[1] + (b"/" if e[0] == b"40000" else b"")
    )


@pytest.mark.parametrize(
    "name",
    ["Test", " Test ", "'Quoted'", "A, B;", "Dr. Who", "Zoë Ü", 'x"y\\'],
)
def test_commit_identity_like_commit_tree(tmp_path: Path, name: str) -> None:
    """Author names are trimmed exactly as git commit-tree trims them: the same commit sha."""
    store = GitStore.init(tmp_path / "r")
    tree = store.loose.write(b"tree", b"")
    stamp = "@1700000000 +0000"
    env = {
        "GIT_AUTHOR_NAME": name,
        "GIT_AUTHOR_EMAIL": " e@x ",
        "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_NAME": name,
        "GIT_COMMITTER_EMAIL": " e@x ",
        "GIT_COMMITTER_DATE": stamp,
    }
    expected = _git(store.path, "commit-tree", tree, input=b"msg\n", env=env).decode().strip()
    body = encode_commit(tree, None, (name, " e@x "), 1700000000, "msg\n")
    assert object_id(b"commit", body) == expected
    assert parse_commit(body) == (tree, [])


_names = st.sampled_from(["a", "b", "c.d", "d-e", "x"])
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join)
_changes = st.dictionaries(_paths, st.one_of(st.none(), st.binary(max_size=40)), max_size=6)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(first=_changes, second=_changes)
def test_write_commit_matches_git_plumbing(
    tmp_path_factory: pytest.TempPathFactory, first, second
) -> None:  # type: ignore[no-untyped-def]
    """write_commit gives the sha git's index plumbing and commit-tree give, fsck-clean."""
    root = tmp_path_factory.mktemp("w")
    store = GitStore.init(root / "r")
    staged = root / "staged"
    staged.mkdir()
    parent: str | None = None
    for i, drawn in enumerate((first, second)):
        # Only change sets that make a valid tree (what stage() lets through).
        changes = {p: d for p, d in drawn.items() if d is not None or (staged / p).is_file()}
        files = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}
        after = (files | {p for p, d in changes.items() if d is not None}) - {
            p for p, d in changes.items() if d is None
        }
        dirs = {"/".join(p.split("/")[:k]) for p in after for k in range(1, p.count("/") + 1)}
        if dirs & after or any((staged / d).is_file() for d in dirs) or not changes:
            return
        for p in [p for p, d in changes.items() if d is None]:
            (staged / p).unlink()
        for path in sorted(after):
            if (staged / path).is_dir():
                return
        _stage(staged, {p: d for p, d in changes.items() if d is not None})
        when = 1700000000 + i
        try:
            expected = _reference_commit(
                store, parent, staged, list(changes), message=f"c{i}\n", when=when
            )
        except subprocess.CalledProcessError:
            return
        try:
            sha = store.write_commit(
                parent=parent,
                paths=list(changes),
                staged=staged,
                message=f"c{i}\n",
                author=AUTHOR,
                when=when,
            )
        except InvalidChange:
            assert parent is not None and store.tree_of(expected) == store.tree_of(parent)
            return
        assert sha == expected
        parent = sha
    if parent is not None:
        _git(store.path, "update-ref", "refs/heads/main", parent)
        _git(store.path, "fsck", "--strict", "--no-dangling")


def test_write_commit_directory_and_file_swap(tmp_path: Path) -> None:
    """A directory emptied and replaced by a file of the same name: same sha as git, fsck-clean."""
    store = GitStore.init(tmp_path / "r")
    staged = tmp_path / "s"
    _stage(staged, {"global/d/x.conf": b"x\n", "global/a.conf": b"a\n"})
    one = store.write_commit(
        parent=None, paths=["global/d/x.conf", "global/a.conf"], staged=staged,
        message="one\n", author=AUTHOR, when=1700000000,
    )  # fmt: skip
    (staged / "global/d/x.conf").unlink()
    (staged / "global/d").rmdir()
    _stage(staged, {"global/d": b"file now\n"})
    paths = ["global/d/x.conf", "global/d"]
    expected = _reference_commit(store, one, staged, paths, message="two\n", when=1700000001)
    two = store.write_commit(
        parent=one, paths=paths, staged=staged, message="two\n", author=AUTHOR, when=1700000001
    )
    assert two == expected
    _git(store.path, "update-ref", "refs/heads/main", two)
    _git(store.path, "fsck", "--strict", "--no-dangling")


def test_write_commit_refuses_what_does_not_fit(tmp_path: Path) -> None:
    """Deleting a missing file, a file under a file, or an unchanged tree: InvalidChange, no ref."""
    store = GitStore.init(tmp_path / "r")
    staged = tmp_path / "s"
    _stage(staged, {"a": b"1"})
    one = store.write_commit(
        parent=None, paths=["a"], staged=staged, message="m\n", author=AUTHOR, when=1
    )
    with pytest.raises(InvalidChange, match="nothing to commit"):
        store.write_commit(
            parent=one, paths=["a"], staged=staged, message="m\n", author=AUTHOR, when=2
        )
    with pytest.raises(InvalidChange, match="cannot delete"):
        store.write_commit(
            parent=one, paths=["zz"], staged=staged, message="m\n", author=AUTHOR, when=2
        )
    _stage(tmp_path / "s2", {"a/b": b"2"})
    with pytest.raises(InvalidChange, match="both a file and a directory"):
        store.write_commit(
            parent=one, paths=["a/b"], staged=tmp_path / "s2", message="m\n", author=AUTHOR, when=2
        )
    assert store.main() is None


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not zlib", "not zlib"),
        (zlib.compress(b"blob 3\0ab"), "malformed header"),
        (zlib.compress(b"bogus 1\0a"), "malformed header"),
        (zlib.compress(b"blob 1\0b"), "another sha"),
        (compress(b"blob", b"a")[:-3], "truncated"),
        (compress(b"blob", b"a") + b"x", "trailing"),
    ],
)
def test_corrupt_objects_are_refused(data: bytes, match: str) -> None:
    """A loose object that is not what its name says gets a clear InvalidChange."""
    with pytest.raises(InvalidChange, match=match):
        decompress(object_id(b"blob", b"a"), data, 1 << 20)


def test_oversized_object_is_refused() -> None:
    """An object larger than the caller's limit is refused without inflating all of it."""
    body = b"x" * 100_000
    with pytest.raises(InvalidChange, match=r"too large|exceeds"):
        decompress(object_id(b"blob", body), compress(b"blob", body), 1000)


@pytest.mark.parametrize(
    "body",
    [
        b"100644 a\0" + b"\1" * 19,  # truncated id
        b"100644 b\0" + b"\1" * 20 + b"100644 a\0" + b"\1" * 20,  # out of order
        b"100644 a\0" + b"\1" * 20 + b"100644 a\0" + b"\1" * 20,  # duplicate
        b"0100644 a\0" + b"\1" * 20,  # zero-padded mode
        b"100644 \0" + b"\1" * 20,  # empty name
    ],
)
def test_malformed_trees_are_refused(body: bytes) -> None:
    """Trees git fsck refuses (truncated, unsorted, duplicate, bad mode, empty name) are refused."""
    with pytest.raises(InvalidChange, match="malformed"):
        parse_tree(body)


@pytest.mark.parametrize(
    "body",
    [
        b"parent " + b"a" * 40 + b"\n",
        b"tree xyz\nauthor a <b> 1 +0000\ncommitter a <b> 1 +0000\n\nm",
        b"tree " + b"a" * 40 + b"\nauthor a b 1 +0000\ncommitter a <b> 1 +0000\n\nm",
        b"tree " + b"a" * 40 + b"\nauthor a <b> 1 +0000\n\nm",
    ],
)
def test_malformed_commits_are_refused(body: bytes) -> None:
    """Commit headers without a valid tree, author or committer line are refused."""
    with pytest.raises(InvalidChange, match="malformed commit"):
        parse_commit(body)


def test_loose_store_is_idempotent(tmp_path: Path) -> None:
    """Storing an object twice keeps one file and leaves no temporary file behind."""
    loose = LooseObjects(tmp_path / "objects")
    (tmp_path / "objects").mkdir()
    sha = loose.write(b"blob", b"abc")
    assert loose.write(b"blob", b"abc") == sha
    assert loose.read(sha) == (b"blob", b"abc")
    assert loose.size(sha) == (b"blob", 3)
    assert [p.name for p in loose.path(sha).parent.iterdir()] == [sha[2:]]


def _commit_worktree(store: GitStore, when: int) -> str:
    """Commit the working copy with git itself (the reference)."""
    _git(store.path, "add", "-A")
    stamp = f"@{when} +0000"
    env = {
        "GIT_AUTHOR_NAME": "T", "GIT_AUTHOR_EMAIL": "t@x", "GIT_AUTHOR_DATE": stamp,
        "GIT_COMMITTER_NAME": "T", "GIT_COMMITTER_EMAIL": "t@x", "GIT_COMMITTER_DATE": stamp,
    }  # fmt: skip
    _git(store.path, "commit", "-q", "-m", "c", env=env)
    return _git(store.path, "rev-parse", "HEAD").decode().strip()


@pytest.mark.parametrize("split", [False, True])
def test_index_follows_like_git(tmp_path: Path, split: bool) -> None:
    """After a move the index lists exactly the new tree (status clean), in-process or via git."""
    from mhafail.config._index import update_index

    store = GitStore.init(tmp_path / "r")
    _stage(store.path, {"global/a.conf": b"a\n", "global/d/x.conf": b"x\n", "b.conf": b"b\n"})
    one = _commit_worktree(store, 1)
    if split:
        _git(store.path, "update-index", "--split-index")
    staged = tmp_path / "s"
    _stage(staged, {"global/d": b"now a file\n", "c.conf": b"c\n"})
    paths = ["global/d/x.conf", "global/d", "b.conf", "c.conf"]
    two = store.write_commit(
        parent=one, paths=paths, staged=staged, message="two\n", author=AUTHOR, when=2
    )
    writes: dict[str, bytes | None] = {
        "global/d/x.conf": None, "b.conf": None, "global/d": b"now a file\n", "c.conf": b"c\n"
    }  # fmt: skip
    assert update_index(store.path / ".git", []) is not split  # split index: git's job
    store.move_branch(one, two, writes)
    assert store.main() == two
    listed = _git(store.path, "ls-files", "-s").decode()
    tree = _git(store.path, "ls-tree", "-r", two).decode()
    assert sorted(ln.split()[1] + " " + ln.split("\t")[1] for ln in listed.splitlines()) == sorted(
        ln.split()[2] + " " + ln.split("\t")[1] for ln in tree.splitlines()
    )
    assert _git(store.path, "status", "--porcelain") == b""
    _git(store.path, "fsck", "--strict", "--no-dangling")
    assert b"mhafail" in _git(store.path, "reflog", "main")


def test_ref_moves_only_from_the_expected_value(tmp_path: Path) -> None:
    """update_ref refuses a stale old value and a held lock, and git reads what it wrote."""
    from mhafail.config._refs import read_ref, update_ref
    from mhafail.errors import RepositoryError

    store = GitStore.init(tmp_path / "r")
    _stage(store.path, {"a": b"1"})
    one = _commit_worktree(store, 1)
    git_dir = store.path / ".git"
    with pytest.raises(RepositoryError, match="expected nothing"):
        update_ref(git_dir, "refs/heads/main", one, None)
    (git_dir / "refs/heads/main.lock").write_text("")
    with pytest.raises(RepositoryError, match="locked"):
        update_ref(git_dir, "refs/heads/main", one, one)
    (git_dir / "refs/heads/main.lock").unlink()
    update_ref(git_dir, "refs/mhafail/x", one, None)
    assert _git(store.path, "rev-parse", "refs/mhafail/x").decode().strip() == one
    _git(store.path, "pack-refs", "--all")
    assert read_ref(git_dir, "refs/mhafail/x") == one  # from packed-refs
    with pytest.raises(RepositoryError, match="packed"):
        update_ref(git_dir, "refs/mhafail/x", None)
    assert read_ref(git_dir, "refs/mhafail/nope") is None


def _bundle(objects: list[tuple[bytes, bytes]]) -> tuple[bytes, dict[str, bytes]]:
    """A proposal bundle of ``(type, body)`` objects, and their shas by body."""
    out, shas = b"", {}
    for kind, body in objects:
        sha = object_id(kind, body)
        data = compress(kind, body)
        out += b"%s %d\n%s" % (sha.encode(), len(data), data)
        shas[body] = sha
    return out, shas


def _proposal(tmp_path: Path, names: list[tuple[bytes, bytes]]) -> tuple[GitStore, str, str, bytes]:
    """A holder repository with a parent commit, and a bundle for a child with ``names``."""
    from mhafail.config._objects import encode_commit

    store = GitStore.init(tmp_path / "holder")
    base_tree = store.loose.write(b"tree", b"")
    parent = store.loose.write(b"commit", encode_commit(base_tree, None, ("T", "t@x"), 1, "p\n"))
    blob = b"data\n"
    tree = encode_tree([(mode, name, object_id(b"blob", blob)) for mode, name in names])
    commit = encode_commit(object_id(b"tree", tree), parent, ("T", "t@x"), 2, "c\n")
    data, _ = _bundle([(b"blob", blob), (b"tree", tree), (b"commit", commit)])
    _PARTS[data] = [(b"tree", tree), (b"commit", commit)]
    return store, parent, object_id(b"commit", commit), data


_PARTS: dict[bytes, list[tuple[bytes, bytes]]] = {}


def test_unbundle_stores_a_clean_proposal(tmp_path: Path) -> None:
    """A well-formed proposal is stored loose, commit last, and its whole tree checks clean."""
    from mhafail.config._fetch import unbundle
    from mhafail.config._paths import Limits
    from mhafail.config._trees import check_tree

    store, parent, sha, data = _proposal(tmp_path, [(b"100644", b"a.conf")])
    order = unbundle(store, data, sha, parent, Limits())
    assert order[-1] == sha and all(store.loose.has(o) for o in order)
    assert [f.path for f in check_tree(store, sha)] == ["a.conf"]


@pytest.mark.parametrize(
    ("names", "match"),
    [
        ([(b"100644", b"..")], "invalid path"),
        ([(b"100644", b".git")], "reserved"),
        ([(b"100644", b".GIT")], "reserved"),
        ([(b"120000", b"link")], "not a regular file"),
        ([(b"160000", b"sub")], "not a regular file"),
        ([(b"100644", b"\xff")], "UTF-8"),
        ([(b"100644", b"a\\b")], "invalid path"),
    ],
)
def test_unbundle_refuses_unsafe_trees(
    tmp_path: Path, names: list[tuple[bytes, bytes]], match: str
) -> None:
    """A proposal whose tree holds an unsafe name, a link or a submodule is refused, none stored."""
    from mhafail.config._fetch import unbundle
    from mhafail.config._paths import Limits

    store, parent, sha, data = _proposal(tmp_path, names)
    with pytest.raises(InvalidChange, match=match):
        unbundle(store, data, sha, parent, Limits())
    assert not store.loose.has(sha)


def test_unbundle_refuses_bad_framing_and_links(tmp_path: Path) -> None:
    """Wrong parent, unreached extras, missing objects, corrupt or truncated data: refused."""
    from mhafail.config._fetch import unbundle
    from mhafail.config._paths import Limits

    store, parent, sha, data = _proposal(tmp_path, [(b"100644", b"a.conf")])
    limits = Limits()
    with pytest.raises(InvalidChange, match="does not build on"):
        unbundle(store, data, sha, None, limits)
    extra, _ = _bundle([(b"blob", b"unreached")])
    with pytest.raises(InvalidChange, match="does not reach"):
        unbundle(store, data + extra, sha, parent, limits)
    without_blob, _ = _bundle(_PARTS[data])
    with pytest.raises(InvalidChange, match="not here"):
        unbundle(store, without_blob, sha, parent, limits)
    with pytest.raises(InvalidChange, match="truncated"):
        unbundle(store, data[:-5], sha, parent, limits)
    with pytest.raises(InvalidChange, match="bad object header"):
        unbundle(store, b"garbage\n" + data, sha, parent, limits)
    assert not store.loose.has(sha)
