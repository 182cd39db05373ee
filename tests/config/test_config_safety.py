"""Path safety without ZooKeeper: shas, tree checks on real git objects, confined writes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mhafail.config import Limits
from mhafail.config._paths import check_sha
from mhafail.config._repo import GitStore, write_files
from mhafail.config._safefs import read_regular, remove_file, write_file
from mhafail.config._trees import check_tree
from mhafail.errors import InvalidChange

from .test_config_security import blob, commit, dotdot_tree, git, mktree


@pytest.mark.parametrize(
    "value",
    [
        "0x" + "a" * 38,
        "-" + "a" * 39,
        " " + "a" * 39,
        "a" * 39 + "\n",
        "\u0661" * 40,  # Arabic-Indic digit one: int() accepts it
        "A" * 40,
        "a" * 39,
        "a" * 41,
        "g" * 40,
        "+" + "1" * 39,
        "1_" + "1" * 38,
    ],
)
def test_check_sha_refuses_everything_but_forty_lower_case_hex(value: str) -> None:
    """Prefixes, signs, whitespace, Unicode digits, upper case and wrong lengths are refused."""
    with pytest.raises(InvalidChange, match="40 lower-case hex"):
        check_sha(value)


def test_check_sha_accepts_a_git_sha() -> None:
    """A sha as git prints it is returned unchanged."""
    assert check_sha("0123456789abcdef" * 2 + "01234567") == "0123456789abcdef" * 2 + "01234567"


@pytest.fixture
def store(tmp_path: Path) -> GitStore:
    """A real repository to build hostile trees in."""
    return GitStore.init(tmp_path / "repo")


def _tree_of(store: GitStore, entries: list[tuple[str, str, str]]) -> str:
    return commit(store.path, mktree(store.path, [("040000", mktree(store.path, entries), "g")]))


def test_check_tree_refuses_dotdot_at_any_level(store: GitStore) -> None:
    """A '..' entry (which git mktree accepts) is refused before anything is written."""
    sha = commit(store.path, dotdot_tree(store.path, b"x"))
    with pytest.raises(InvalidChange, match=r"'\.\.'"):
        check_tree(store, sha)


@pytest.mark.parametrize(
    ("mode", "name", "match"),
    [
        ("120000", "link", "symbolic link"),
        ("160000", "sub", "submodule"),
        ("100644", ".GIT", "reserved"),
        ("100644", "a\\b", "may not contain"),
        ("100644", "tab\there", "control characters"),
        ("100664", "legacy", "mode 100664"),
    ],
)
def test_check_tree_refuses_links_submodules_and_unsafe_names(
    store: GitStore, mode: str, name: str, match: str
) -> None:
    """Symbolic links, gitlinks, '.git' in any case, backslashes, control chars: refused."""
    oid = blob(store.path, b"/etc/passwd") if mode != "160000" else "a" * 40
    raw = f"{mode} {'commit' if mode == '160000' else 'blob'} {oid}\t{name}\n"
    tree = store.git("mktree", "--missing", input=raw.encode()).decode().strip()
    sha = commit(store.path, mktree(store.path, [("040000", tree, "g")]))
    with pytest.raises(InvalidChange, match=match):
        check_tree(store, sha)


def test_check_tree_refuses_names_that_are_not_utf8(store: GitStore) -> None:
    """A name that is not UTF-8 is refused with InvalidChange, not a decoding error."""
    oid = blob(store.path, b"x")
    raw = b"100644 blob " + oid.encode() + b"\t\xff\xfe\n"
    tree = store.git("mktree", input=raw).decode().strip()
    with pytest.raises(InvalidChange, match="UTF-8"):
        check_tree(store, commit(store.path, mktree(store.path, [("040000", tree, "g")])))


def test_check_tree_enforces_size_and_entry_limits(store: GitStore) -> None:
    """Files above max_file_bytes, trees above max_tree_entries or max_tree_bytes: refused."""
    entries = [("100644", blob(store.path, b"x" * 100 + bytes([i])), f"f{i}") for i in range(5)]
    sha = _tree_of(store, entries)
    assert [f.path for f in check_tree(store, sha)] == [f"g/f{i}" for i in range(5)]
    with pytest.raises(InvalidChange, match="exceeds the limit"):
        check_tree(store, sha, Limits(max_file_bytes=50))
    with pytest.raises(InvalidChange, match="tree entries"):
        check_tree(store, sha, Limits(max_tree_entries=4))
    with pytest.raises(InvalidChange, match="in total"):
        check_tree(store, sha, Limits(max_tree_bytes=300))


def test_confined_writes_refuse_symlinks_and_never_write_through_links(tmp_path: Path) -> None:
    """A symlinked directory or file is refused; a hard-linked file is replaced, not rewritten."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "d").symlink_to(outside)
    (root / "f").symlink_to(outside / "secret")
    (outside / "secret").write_bytes(b"secret")
    for path in ("d/x", "f"):
        with pytest.raises(InvalidChange, match="symbolic link"):
            read_regular(root, path)
    with pytest.raises(InvalidChange, match="symbolic link"):
        write_file(root, "d/x", b"pwned")
    assert os.listdir(outside) == ["secret"]
    (root / "live").write_bytes(b"old")
    os.link(root / "live", tmp_path / "other-version")
    write_files(root, {"live": b"new"})
    assert (tmp_path / "other-version").read_bytes() == b"old"
    assert (root / "live").read_bytes() == b"new"
    assert not [n for n in os.listdir(root) if n.endswith(".mhafail-tmp")]


def test_a_directory_can_become_a_file(tmp_path: Path) -> None:
    """Deleting d/x prunes the empty d, so a file d can follow in the same change set."""
    write_file(tmp_path, "g/d/x", b"1")
    write_files(tmp_path, {"g/d/x": None, "g/d": b"2"})
    assert (tmp_path / "g" / "d").read_bytes() == b"2"
    assert remove_file(tmp_path, "g/d") and not (tmp_path / "g").exists()


def test_commit_from_real_git_objects_round_trips(store: GitStore, tmp_path: Path) -> None:
    """A safe tree made by plain git passes check_tree with its files listed."""
    git(store.path, "commit", "-q", "--allow-empty", "-m", "x")
    sha = _tree_of(store, [("100755", blob(store.path, b"#!/bin/sh\n"), "run")])
    (files,) = [check_tree(store, sha)]
    assert [(f.path, f.executable, f.size) for f in files] == [("g/run", True, 10)]
