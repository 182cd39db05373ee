"""Checking a whole commit's tree before any of it may touch the disk.

A published head names a commit that a peer sent. ``git fetch`` runs with
``transfer.fsckObjects`` (which refuses ``..``, ``.git`` and malformed
trees), but objects may also arrive by other ways (an operator's manual
fetch, a repository made by an older version), and fsck lets through
things a config tree must never hold: symbolic links, submodules, names
that are not UTF-8, huge files. So every commit is checked here, by
reading the raw tree objects themselves (not ``git ls-tree`` output, in
which a name holding ``/`` looks like two levels), before a node checks it
out, advances its working copy to it, or re-serves it to peers.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs

from mhafail.config._objects import parse_commit
from mhafail.config._paths import Limits, check_component, check_path, check_sha
from mhafail.config._repo import GitStore
from mhafail.errors import InvalidChange, RepositoryError

_FILE_MODES = (b"100644", b"100755")
_TREE_MODE = b"40000"
_KINDS = {b"120000": "a symbolic link", b"160000": "a submodule (gitlink)"}


@attrs.frozen
class TreeFile:
    """One file of a checked tree.

    Attributes:
        path: its repository path (every component a safe name).
        executable: True for mode 100755.
        blob: the blob's sha.
        size: the blob's size in bytes.
    """

    path: str
    executable: bool
    blob: str
    size: int


def _entries(body: bytes, where: str) -> Iterator[tuple[bytes, str, str]]:
    """Parse one raw tree object: ``<mode> <name>\\0<20-byte id>`` repeated."""
    pos = 0
    names: set[str] = set()
    while pos < len(body):
        space = body.find(b" ", pos)
        nul = body.find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > len(body):
            raise InvalidChange(f"malformed git tree at {where or '/'}")
        mode, raw, child = body[pos:space], body[space + 1 : nul], body[nul + 1 : nul + 21]
        pos = nul + 21
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidChange(f"invalid path {where}{raw!r}: not valid UTF-8") from None
        check_component(name, where + name)
        if name in names:
            raise InvalidChange(f"invalid path {where + name!r}: listed twice in one tree")
        names.add(name)
        yield mode, name, child.hex()


def check_tree(store: GitStore, commit: str, limits: Limits | None = None) -> list[TreeFile]:
    """Check every entry, at every level, of the tree of ``commit``; return its files.

    Accepted: directories and regular files (modes 100644, 100755) whose
    every path component is a safe name (see
    :func:`~mhafail.config._paths.check_component`) and whose paths, file
    sizes, entry count and total size respect ``limits``.

    Raises:
        InvalidChange: an unsafe name, a symbolic link, a submodule, an
            unknown mode, a duplicate name, a malformed tree, or a limit
            exceeded (the message names the path).
        RepositoryError: the commit or one of its objects is not here.
    """
    limits = limits or Limits()
    check_sha(commit)
    # Read in-process (loose objects, cached trees), git only for packed
    # ones: this runs for every proposal on every node, and it used to be
    # one git process per level, then one cat-file process per check.
    top = store.read_objects([commit]).get(commit)
    if top is None or top[0] != b"commit":
        raise RepositoryError(f"commit {commit[:12]} is not in the repository")
    try:
        root = parse_commit(top[1])[0]
    except InvalidChange as exc:
        raise InvalidChange(f"commit {commit[:12]}: {exc}") from None
    level = [("", root)]
    found: list[tuple[str, bool, str]] = []
    entries = 0
    while level:
        deeper: list[tuple[str, str]] = []
        answers = store.read_objects([sha for _, sha in level])
        for where, sha in level:
            answer = answers.get(sha)
            if answer is None or answer[0] != b"tree":
                raise RepositoryError(f"{commit[:12]}: tree {where or '/'} ({sha[:12]}) is missing")
            for mode, name, child in _entries(answer[1], where):
                path = where + name
                check_path(path, limits)
                entries += 1
                if entries > limits.max_tree_entries:
                    raise InvalidChange(
                        f"commit {commit[:12]}: more than {limits.max_tree_entries} tree entries"
                    )
                if mode == _TREE_MODE:
                    deeper.append((path + "/", child))
                elif mode in _FILE_MODES:
                    found.append((path, mode == b"100755", child))
                else:
                    kind = _KINDS.get(mode, f"mode {mode.decode(errors='replace')}")
                    raise InvalidChange(
                        f"{path}: is {kind}; a config tree holds only files and directories"
                    )
        level = deeper
    infos = store.object_sizes(sorted({blob for _, _, blob in found}))
    sizes = {blob: size for blob, (kind, size) in infos.items() if kind == b"blob"}
    return _sized(commit, found, sizes, limits)


def _sized(
    commit: str, found: list[tuple[str, bool, str]], sizes: dict[str, int], limits: Limits
) -> list[TreeFile]:
    files: list[TreeFile] = []
    total = 0
    for path, executable, blob in found:
        size = sizes.get(blob)
        if size is None:
            raise RepositoryError(f"{commit[:12]}: {path} ({blob[:12]}) is missing or not a blob")
        if size > limits.max_file_bytes:
            raise InvalidChange(
                f"{path}: {size} bytes exceeds the limit of {limits.max_file_bytes}"
            )
        total += size
        if total > limits.max_tree_bytes:
            raise InvalidChange(
                f"commit {commit[:12]}: its files exceed {limits.max_tree_bytes} bytes in total"
            )
        files.append(TreeFile(path=path, executable=executable, blob=blob, size=size))
    return files
