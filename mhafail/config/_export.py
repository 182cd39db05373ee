"""The export repository: the only repository a node's git daemon serves.

``<base>/<repo>/export`` is a bare repository holding published, checked
history and nothing else. The working copy (``work/``) keeps the
operators' stash entries, drafts, uncommitted files hashed by ``git add``
and commits that lost the compare-and-set; ``upload-pack`` under protocol
v2 hands out *any* object of the repository it serves to a client naming
its sha (whatever ``uploadpack.allowAnySHA1InWant`` says), so the working
copy is never served at all.

A commit enters the export repository only through :func:`export`: after
:func:`~mhafail.config._trees.check_tree` accepted it (fetched commits),
or just before the compare-and-set (the node's own commits, built from a
checked change set on a checked parent).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mhafail.config._objects import parse_commit, parse_tree
from mhafail.config._paths import check_sha
from mhafail.config._refs import read_ref, update_ref
from mhafail.config._repo import BRANCH, GitStore
from mhafail.errors import InvalidChange

EXPORT_OK = "git-daemon-export-ok"
PROPOSED = "refs/mhafail/proposed"


def init_export(path: Path) -> GitStore:
    """Create (or adopt) the export repository at ``path``; idempotent.

    Raises:
        RepositoryError: git could not create it.
    """
    path = Path(path)
    if not (path / "HEAD").is_file():
        path.mkdir(parents=True, exist_ok=True)
        GitStore(path).git("init", "-q", "--bare", "--initial-branch=main")
    store = GitStore(path)
    store.git("config", "receive.fsckObjects", "true")
    store.git("config", "uploadpack.allowAnySHA1InWant", "false")
    store.git("config", "core.fsync", "committed")
    store.git("config", "gc.auto", "0")
    (path / EXPORT_OK).touch()  # git daemon serves only marked repositories
    return store


def export(
    source: GitStore,
    dest: Path,
    sha: str,
    *,
    ref: str = BRANCH,
    base: str | None = None,
    objects: Sequence[str] | None = None,
) -> None:
    """Copy commit ``sha`` (checked by the caller) from ``source`` into ``dest``.

    ``ref`` (default ``main``) is set to ``sha``. Published history is
    linear (every head's parent is the head it replaced), so ``main`` at
    the newest head reaches every version a peer may ask for.

    Objects are hard-linked from ``source``'s loose objects (git never
    modifies an object file), which costs two git processes instead of a
    local push's five; packed objects fall back to a push.

    ``base``: a commit the caller knows ``sha`` builds on (its parent); if
    it is exported already, only what it does not reach is copied, without
    asking git for ``dest``'s branch first. ``objects``: with ``base``,
    the objects ``sha`` adds to it (the committer just wrote them, a
    holder just received them), so that git need not be asked either; they
    are used only if every object their trees and the commit name is among
    them or in ``dest`` already (else git lists what is missing).

    Raises:
        RepositoryError: git failed.
    """
    check_sha(sha)
    if base is not None and not exported(dest, check_sha(base)):
        base = None
    if base is not None and objects is not None and _closed(source, dest, sha, objects):
        linked = _link(source, dest, [*objects, sha])
    else:
        linked = _link_objects(source, dest, sha, base)
    if not linked:
        source.git("push", "--quiet", "--no-verify", str(dest), f"+{sha}:{ref}")
        return
    if ref != PROPOSED:  # a proposal is served by sha; a ref would cost a process
        update_ref(Path(dest), ref, sha)


def _closed(source: GitStore, dest: Path, sha: str, objects: Sequence[str]) -> bool:
    """True when every object that ``sha`` and ``objects`` name is among them or in ``dest``."""
    mine = {*objects, sha}
    found = source.read_objects([o for o in mine if not exported(dest, o) or o == sha])
    for oid in mine:
        obj = found.get(oid)
        if obj is None:
            continue  # in dest already (checked, complete) or a blob: names nothing
        kind, body = obj
        try:
            if kind == b"tree":
                named = [child for _, _, child in parse_tree(body)]
            elif kind == b"commit":
                tree, parents = parse_commit(body)
                named = [tree, *parents]
            else:
                continue
        except InvalidChange:
            return False
        if any(n not in mine and not exported(dest, n) for n in named):
            return False
    return True


def exported(dest: Path, sha: str) -> bool:
    """True when commit ``sha`` is a loose object of the export repository ``dest``.

    Objects reach an export repository only through :func:`export`, after
    their checks, commit last; so this means "checked, and complete".
    """
    return (Path(dest) / "objects" / sha[:2] / sha[2:]).is_file()


def _link_objects(source: GitStore, dest: Path, sha: str, base: str | None) -> bool:
    """Hard-link the objects of ``sha``'s closure missing from ``dest``; False: push instead."""
    if base is None:
        base = read_ref(Path(dest), BRANCH)
        if base is not None and not source.has_commit(base):
            base = None
    out = source.git("rev-list", "--objects", sha, *([f"^{base}"] if base else []))
    # rev-list lists commits first: reversed, the commit comes last.
    return _link(source, dest, [line[:40].decode() for line in reversed(out.splitlines())])


def _link(source: GitStore, dest: Path, oids: Sequence[str]) -> bool:
    """Hard-link ``oids`` into ``dest`` in this order (commit last); False: one is not loose."""
    src, dst = source.path / ".git" / "objects", Path(dest) / "objects"
    # Commits last: a commit object in ``dest`` means its closure is there.
    for oid in dict.fromkeys(oids):
        target = dst / oid[:2] / oid[2:]
        if target.exists():
            continue
        try:
            target.parent.mkdir(exist_ok=True)
            os.link(src / oid[:2] / oid[2:], target)
        except FileExistsError:
            continue
        except OSError:
            return False  # packed here, or another file system
    return True
