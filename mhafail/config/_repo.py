"""The git adapter: the only module that touches GitPython or runs ``git``.

Every git failure becomes a :class:`~mhafail.errors.RepositoryError` (or
:class:`~mhafail.errors.InvalidChange` for refused input) carrying git's
own message, so no ``git.exc`` type reaches a caller.

Processes: GitPython keeps a persistent ``git cat-file --batch`` process
per repository object once object data is read, until the repository is
closed; a daemon that opens repositories in a loop would leak them. Every
GitPython repository here is therefore opened for one operation and closed
in a ``finally`` (``Repo.close()`` ends its cat-file processes), and
plumbing commands (``read-tree``, ``commit-tree``, ``fetch``...) run as
one-shot ``git`` subprocesses that are always waited for.

Concurrency: one repository may be used by several processes at once (the
node's agent, an operator's CLI). Object writes are safe in git; ref moves
go through ``update-ref`` with the expected old value; index operations
retry while another process holds ``index.lock``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import git

from mhafail.config._index import update_index
from mhafail.config._model import LogEntry
from mhafail.config._objects import (
    TREE_MODE,
    LooseObjects,
    build_tree,
    compress,
    encode_commit,
    object_id,
    parse_commit,
    parse_tree,
)
from mhafail.config._paths import check_sha
from mhafail.config._refs import read_ref, update_ref
from mhafail.config._safefs import read_regular, remove_file, write_file
from mhafail.errors import InvalidChange, RepositoryError

BRANCH = "refs/heads/main"
FETCHED = "refs/mhafail/fetched"
_AUTHOR = re.compile(r"^\s*([^<>\n]+?)\s*(?:<([^<>\s]*)>)?\s*$")
_GIT_TIMEOUT = 120.0
# What git prints when transfer.fsckObjects refuses a received object.
_FSCK_FAILURE = re.compile(r"fsck error|error: object [0-9a-f]{40}: \w+:")
_ZERO = "0" * 40
# Applied as the last (winning) attribute rules: no conversion, no filter.
_NO_FILTERS = "* -text -ident -filter !eol !working-tree-encoding\n"
# Tree bodies and object sizes by (objects directory, sha): objects never
# change, and a node checks the same unchanged subtrees on every commit.
_TREES: dict[tuple[str, str], bytes] = {}
_SIZES: dict[tuple[str, str], tuple[bytes, int]] = {}
_CACHE_MAX = 4096


def write_files(root: Path, changes: Mapping[str, bytes | None]) -> None:
    """Apply a change set to the directory ``root``; nothing lands outside it.

    Deletions come first (so a directory may become a file), every path is
    checked, no symbolic link is followed, and files are replaced by rename,
    never written through a hard link into a live version.

    Raises:
        InvalidChange: an unsafe path, a symbolic link or a file where a
            directory is needed, or a directory where a file should go.
    """
    for path, data in changes.items():
        if data is None:
            remove_file(root, path)
    for path, data in changes.items():
        if data is not None:
            write_file(root, path, data)


def _decode_path(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidChange(f"invalid path {raw!r}: file names must be UTF-8") from None


def parse_author(author: str) -> tuple[str, str]:
    """Split ``Name <email>`` (email optional) into name and email.

    Raises:
        InvalidChange: empty, multi-line, or stray angle brackets.
    """
    match = _AUTHOR.match(author or "")
    if match is None:
        raise InvalidChange(f"invalid author {author!r}: use 'Name <email>'")
    name, email = match.group(1), match.group(2) or ""
    return name, email or f"{name.replace(' ', '.').lower()}@mhafail.invalid"


class GitStore:
    """One node's git repository: a working copy with its ``.git``.

    Args:
        path: the working copy directory (it holds ``.git``).

    Not thread-safe by itself; each component serialises its own use.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # --- life cycle ---------------------------------------------------------

    @classmethod
    def init(cls, path: Path) -> GitStore:
        """Create (or adopt) the repository at ``path``; idempotent.

        Raises:
            RepositoryError: git could not create it.
        """
        path = Path(path)
        try:
            if not (path / ".git").is_dir():
                path.mkdir(parents=True, exist_ok=True)
                repo = git.Repo.init(path, initial_branch="main")
                repo.close()
        except (git.exc.GitError, OSError) as exc:
            raise RepositoryError(f"cannot create repository {path}: {exc}") from exc
        store = cls(path)
        # The working copy is never served (peers fetch from the export
        # repository): drop what older versions set to serve it by sha.
        store.git("config", "--unset-all", "uploadpack.allowAnySHA1InWant", check=False)
        # Peers' objects are checked on arrival (a '..' tree entry is refused).
        store.git("config", "transfer.fsckObjects", "true")
        # An acknowledged commit must survive a power cut of its node.
        store.git("config", "core.fsync", "committed")
        store.git("config", "core.fsyncMethod", "batch")
        store.git("config", "gc.auto", "0")
        store.neutralise_attributes()
        return store

    def neutralise_attributes(self) -> None:
        """Make git ignore every ``.gitattributes`` filter in this repository.

        One sha must mean one set of bytes on every node: a committed
        ``.gitattributes`` (``eol=crlf``, ``ident``, ``filter=...``) would
        make git rewrite files on checkout and on ``git add``, so that a
        node's full checkout and another's incremental apply differ.
        ``$GIT_DIR/info/attributes`` overrides every in-tree file.
        """
        info = self.path / ".git" / "info"
        path = info / "attributes"
        if not path.is_file() or path.read_text() != _NO_FILTERS:
            info.mkdir(parents=True, exist_ok=True)
            path.write_text(_NO_FILTERS)

    @classmethod
    def open(cls, path: Path) -> GitStore:
        """Open an existing repository.

        Raises:
            RepositoryError: ``path`` is not a git working copy.
        """
        try:
            with contextlib.closing(git.Repo(path)):
                pass
        except (git.exc.GitError, OSError) as exc:
            raise RepositoryError(f"{path} is not a config repository: {exc}") from exc
        return cls(Path(path))

    @contextlib.contextmanager
    def _repo(self) -> Iterator[git.Repo]:
        try:
            repo = git.Repo(self.path)
        except (git.exc.GitError, OSError) as exc:
            raise RepositoryError(f"{self.path} is not a config repository: {exc}") from exc
        try:
            yield repo
        except (git.exc.GitError, ValueError) as exc:
            raise RepositoryError(f"{self.path}: {exc}") from exc
        finally:
            repo.close()

    # --- plumbing ---------------------------------------------------------------

    def git(
        self,
        *args: str,
        input: bytes | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = _GIT_TIMEOUT,
        check: bool = True,
    ) -> bytes:
        """Run ``git args...`` in the repository and return its stdout.

        Raises:
            RepositoryError: git failed (its stderr is in the message) or
                did not finish within ``timeout``.
        """
        full_env = {**os.environ, "LC_ALL": "C", "GIT_TERMINAL_PROMPT": "0"}
        for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
            full_env.pop(var, None)
        full_env.update(env or {})
        argv = ["git", "-C", str(self.path), *args]
        for attempt in range(50):
            try:
                proc = subprocess.run(
                    argv,
                    input=input,
                    env=full_env,
                    capture_output=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired as exc:
                raise RepositoryError(f"git {args[0]} timed out after {timeout:g} s") from exc
            except OSError as exc:
                raise RepositoryError(f"cannot run git: {exc}") from exc
            if proc.returncode == 0 or not check:
                return proc.stdout
            err = proc.stderr.decode(errors="replace").strip()
            # Another process (agent or CLI) is updating the index: wait briefly.
            if "index.lock" in err and attempt < 49:
                time.sleep(0.02)
                continue
            raise RepositoryError(f"git {' '.join(args[:2])} failed: {err or proc.returncode}")
        raise AssertionError("unreachable")  # pragma: no cover

    def resolve(self, rev: str) -> str | None:
        """The commit sha ``rev`` names, or None when it names no commit here."""
        if rev.startswith("-"):
            raise InvalidChange(f"invalid revision {rev!r}")
        out = self.git("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False)
        sha = out.decode().strip()
        return sha or None

    def has_commit(self, sha: str) -> bool:
        """True when the commit ``sha`` and everything it needs is here."""
        return self.resolve(sha) == sha

    def is_ancestor(self, old: str, new: str) -> bool:
        """True when commit ``old`` is ``new`` or one of its ancestors (both here)."""
        if not (self.has_commit(old) and self.has_commit(new)):
            return False
        return self.git("merge-base", old, new, check=False).decode().strip() == old

    def main(self) -> str | None:
        """The sha of the local branch (None in a fresh repository).

        Read from the ref file (or ``packed-refs``) without starting git:
        it runs several times per commit on every node.
        """
        try:
            return read_ref(self.path / ".git", BRANCH)
        except RepositoryError:
            return self.resolve(BRANCH)

    def files(self, sha: str | None) -> list[str]:
        """All file paths in commit ``sha`` (empty for None)."""
        if sha is None:
            return []
        out = self.git("ls-tree", "-r", "-z", "--name-only", sha)
        return [_decode_path(p) for p in out.split(b"\0") if p]

    def changed_paths(self, old: str | None, new: str) -> list[str]:
        """Paths that differ between commits ``old`` and ``new`` (all of ``new`` if None)."""
        if old is None:
            return self.files(new)
        return sorted(path for path, _, _, _ in self.changes(old, new))

    def read(self, sha: str, path: str) -> bytes | None:
        """The content of ``path`` at ``sha``, or None when it is not a file there."""
        out = self.git("cat-file", "-t", f"{sha}:{path}", check=False).strip()
        if out != b"blob":
            return None
        return self.git("cat-file", "blob", f"{sha}:{path}")

    # --- trees and commits ----------------------------------------------------

    @contextlib.contextmanager
    def _temp_index(self) -> Iterator[dict[str, str]]:
        fd, name = tempfile.mkstemp(prefix="mhafail-index-", dir=self.path / ".git")
        os.close(fd)
        os.unlink(name)  # git wants to create it itself
        try:
            yield {"GIT_INDEX_FILE": name}
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def checkout(self, sha: str | None, dest: Path) -> None:
        """Write the files of commit ``sha`` into the new directory ``dest``.

        The blobs are written as stored (no ``.gitattributes`` filter, no
        line-ending conversion), through the same function as an
        incremental apply (:meth:`write_entries`), so a full checkout and
        an incremental one of the same sha hold the same bytes and modes.
        """
        dest.mkdir(parents=True)
        if sha is not None:
            self.write_entries(dest, self.entries(None, sha))

    def entries(self, old: str | None, new: str) -> list[tuple[str, str | None, str]]:
        """``(path, mode, blob)`` of every file of ``new`` that differs from ``old``.

        ``old`` None: every file of ``new``. A file deleted in ``new`` has
        mode None. Directories are not listed.
        """
        return [(p, m, b or a or "") for p, m, b, a in self.changes(old, new)]

    def changes(
        self, old: str | None, new: str
    ) -> list[tuple[str, str | None, str | None, str | None]]:
        """``(path, new mode, new blob, old blob)`` of every file that differs, old -> new.

        A file that is not in ``new`` has new mode and blob None; one not
        in ``old`` has old blob None. Read in-process from the tree
        objects (this runs on every node for every commit), skipping
        unchanged subtrees by their sha.

        Raises:
            InvalidChange: a name that is not UTF-8.
            RepositoryError: a commit or tree is not here.
        """
        result: list[tuple[str, str | None, str | None, str | None]] = []
        old_tree = self.tree_of(old) if old is not None else None
        self._diff(old_tree, self.tree_of(new), "", result)
        return result

    def _diff(
        self,
        old: str | None,
        new: str | None,
        where: str,
        out: list[tuple[str, str | None, str | None, str | None]],
    ) -> None:
        if old == new:
            return
        before = {e[1]: e for e in parse_tree(self.read_tree(old))} if old else {}
        after = {e[1]: e for e in parse_tree(self.read_tree(new))} if new else {}
        for name in sorted(before.keys() | after.keys()):
            path = where + _decode_path(name)
            a, b = before.get(name), after.get(name)
            a_tree = a is not None and a[0] == TREE_MODE
            b_tree = b is not None and b[0] == TREE_MODE
            if a_tree or b_tree:
                self._diff(
                    a[2] if a_tree and a else None, b[2] if b_tree and b else None, path + "/", out
                )
            a_file = a if a is not None and not a_tree else None
            b_file = b if b is not None and not b_tree else None
            if b_file is not None:
                if a_file is None or (a_file[0], a_file[2]) != (b_file[0], b_file[2]):
                    out.append((path, b_file[0].decode(), b_file[2], a_file and a_file[2]))
            elif a_file is not None:
                out.append((path, None, None, a_file[2]))

    def sync_index(self, old: str | None, new: str) -> None:
        """Make the index entries of the paths ``old`` -> ``new`` changes match ``new``.

        In-process (:mod:`._index`), or one ``git update-index`` when the
        index is not in a plain format; a ``git reset`` re-read the whole
        tree. Other index entries (an operator's staged edits) are left as
        they are.
        """
        changes = self.entries(old, new)
        if update_index(self.path / ".git", changes):
            return
        lines = [
            f"{mode} {blob}\t{path}" if mode is not None else f"0 {_ZERO}\t{path}"
            for path, mode, blob in changes
        ]
        if lines:
            self.git("update-index", "--index-info", input=("\n".join(lines) + "\n").encode())

    def write_entries(self, dest: Path, entries: Sequence[tuple[str, str | None, str]]) -> None:
        """Write (or delete, mode None) the given files under ``dest``, raw, confined."""
        wanted = [(p, m, b) for p, m, b in entries if m is not None]
        blobs = self.read_blobs([b for _, _, b in wanted])
        for path, mode, _ in entries:
            if mode is None:
                remove_file(dest, path)
        for (path, mode, _), data in zip(wanted, blobs, strict=True):
            if data is None:
                raise RepositoryError(f"{path}: its blob is not in {self.path}")
            write_file(dest, path, data, 0o755 if mode == "100755" else 0o644)

    def stage(
        self,
        parent: str | None,
        changes: Mapping[str, bytes | None],
        dest: Path,
        seed: Path | None = None,
    ) -> None:
        """Check out ``parent`` into ``dest`` and apply ``changes`` there.

        Args:
            seed: an existing checkout of ``parent`` (a version directory);
                its files are hard-linked instead of written again, which
                is much faster for large trees. Changed files are replaced,
                never written through the links.

        Raises:
            InvalidChange: deleting a path that is not a file in ``parent``,
                or a file/directory clash with the parent's tree.
        """
        if seed is not None and seed.is_dir():
            # The seed is a checkout of ``parent``: list it instead of asking git.
            cut = len(str(seed)) + 1
            existing = {
                os.path.join(top, name)[cut:] for top, _, names in os.walk(seed) for name in names
            }
        else:
            existing = set(self.files(parent))
        after = set(existing)
        for path, data in changes.items():
            if data is None:
                if path not in existing:
                    raise InvalidChange(f"{path}: cannot delete, it is not a file in the base")
                after.discard(path)
            else:
                after.add(path)
        dirs = {"/".join(p.split("/")[:i]) for p in after for i in range(1, p.count("/") + 1)}
        clash = sorted(dirs & after)
        if clash:
            raise InvalidChange(f"{clash[0]}: is both a file and a directory in the new tree")
        if seed is not None and seed.is_dir():
            shutil.copytree(seed, dest, copy_function=os.link, symlinks=True)
        else:
            self.checkout(parent, dest)
        write_files(dest, changes)

    def write_commit(
        self,
        *,
        parent: str | None,
        paths: Sequence[str],
        staged: Path,
        message: str,
        author: str,
        when: float,
        written: list[str] | None = None,
    ) -> str:
        """Create the commit whose tree is ``parent`` with ``paths`` taken from ``staged``.

        ``paths`` that no longer exist in ``staged`` are deleted. The
        objects are written in-process (:mod:`._objects`: the blobs, the
        trees on the changed paths, the commit), byte-identical to what
        ``hash-object --no-filters``, ``write-tree`` and ``commit-tree``
        write; no ref points at the commit.

        Args:
            written: if given, receives the sha of every object the new
                commit adds to ``parent``'s (what a peer needs besides it).

        Returns:
            The new commit's sha.

        Raises:
            InvalidChange: the result equals the parent's tree (nothing to
                commit), or the change set does not fit the parent's tree.
        """
        who = parse_author(author)
        loose = self.loose
        new_objects: list[str] = []

        def write(kind: bytes, body: bytes) -> str:
            sha = object_id(kind, body)
            pending[sha] = compress(kind, body)
            new_objects.append(sha)
            return sha

        pending: dict[str, bytes] = {}
        files: dict[str, str | None] = {}
        for path in paths:
            target = staged / path
            files[path] = write(b"blob", target.read_bytes()) if target.is_file() else None
        old_tree = self.tree_of(parent) if parent is not None else None
        tree = build_tree(old_tree, files, self.read_tree, write)
        if tree is None:
            tree = write(b"tree", b"")
        if tree == old_tree:
            raise InvalidChange("nothing to commit: the change set leaves the tree as it is")
        body = encode_commit(tree, parent, who, int(when), message)
        sha = write(b"commit", body)
        loose.store(pending)
        if written is not None:
            written.extend(dict.fromkeys(new_objects))
        return sha

    def commit_tree_of(
        self,
        source: str,
        parent: str | None,
        message: str,
        author: str,
        when: float,
        *,
        same_tree: bool = False,
    ) -> str:
        """Create a commit on ``parent`` whose tree is the tree of ``source`` (rollback).

        Args:
            same_tree: allow a tree equal to the parent's (a rollback built
                on its own target, away from an unsafe head).
        """
        name, email = parse_author(author)
        tree = self.git("rev-parse", f"{source}^{{tree}}").decode().strip()
        if not same_tree and parent is not None and tree == self._tree(parent):
            raise InvalidChange(f"nothing to commit: the head already has the tree of {source}")
        return self._commit_tree(tree, parent, message, (name, email), when)

    def _tree(self, commit: str) -> str:
        return self.tree_of(commit)

    # --- objects in-process ---------------------------------------------------------

    @property
    def loose(self) -> LooseObjects:
        """The repository's loose objects (read and written without git)."""
        git_dir = self.path / ".git"
        return LooseObjects((git_dir if git_dir.is_dir() else self.path) / "objects")

    def read_objects(self, shas: Sequence[str]) -> dict[str, tuple[bytes, bytes]]:
        """``(type, body)`` of each object in ``shas`` that is here (missing ones left out).

        Loose objects are read in-process; packed ones with one
        ``git cat-file --batch`` for all of them. Trees are cached by
        repository and sha (an object never changes).
        """
        loose = self.loose
        key = str(loose.objects)
        found: dict[str, tuple[bytes, bytes]] = {}
        missing: list[str] = []
        for sha in dict.fromkeys(shas):
            cached = _TREES.get((key, sha))
            if cached is not None:
                found[sha] = (b"tree", cached)
                continue
            try:
                obj = loose.read(sha)
            except InvalidChange as exc:
                raise RepositoryError(f"{self.path}: {exc}") from exc
            if obj is None:
                missing.append(sha)
            else:
                found[sha] = obj
        if missing:
            out = self.git("cat-file", "--batch", input="".join(f"{s}\n" for s in missing).encode())
            pos = 0
            for sha in missing:
                eol = out.index(b"\n", pos)
                header = out[pos:eol].split()
                pos = eol + 1
                if len(header) == 3:
                    size = int(header[2])
                    found[sha] = (header[1], out[pos : pos + size])
                    pos += size + 1
        if len(_TREES) > _CACHE_MAX:
            _TREES.clear()
        for sha, (kind, body) in found.items():
            if kind == b"tree":
                _TREES[(key, sha)] = body
        return found

    def object_sizes(self, shas: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        """``(type, size)`` of each object in ``shas`` that is here; cached like trees."""
        loose = self.loose
        key = str(loose.objects)
        found: dict[str, tuple[bytes, int]] = {}
        missing: list[str] = []
        for sha in dict.fromkeys(shas):
            info = _SIZES.get((key, sha)) or loose.size(sha)
            if info is None:
                missing.append(sha)
            else:
                found[sha] = info
        if missing:
            out = self.git(
                "cat-file", "--batch-check", input="".join(f"{s}\n" for s in missing).encode()
            )
            for sha, line in zip(missing, out.splitlines(), strict=False):
                header = line.split()
                if len(header) == 3:
                    found[sha] = (header[1], int(header[2]))
        if len(_SIZES) > _CACHE_MAX:
            _SIZES.clear()
        for sha, info in found.items():
            _SIZES[(key, sha)] = info
        return found

    def read_tree(self, sha: str) -> bytes:
        """The body of tree ``sha``.

        Raises:
            RepositoryError: it is not here (or is not a tree).
        """
        obj = self.read_objects([sha]).get(sha)
        if obj is None or obj[0] != b"tree":
            raise RepositoryError(f"tree {sha[:12]} is not in {self.path}")
        return obj[1]

    def tree_of(self, commit: str) -> str:
        """The tree sha of commit ``commit``.

        Raises:
            RepositoryError: it is not here (or is not a commit).
        """
        obj = self.read_objects([commit]).get(commit)
        if obj is None or obj[0] != b"commit":
            raise RepositoryError(f"commit {commit[:12]} is not in {self.path}")
        try:
            return parse_commit(obj[1])[0]
        except InvalidChange as exc:
            raise RepositoryError(f"commit {commit[:12]}: {exc}") from exc

    def _commit_tree(
        self, tree: str, parent: str | None, message: str, who: tuple[str, str], when: float
    ) -> str:
        name, email = who
        stamp = f"@{int(when)} +0000"
        env = {
            "GIT_AUTHOR_NAME": name,
            "GIT_AUTHOR_EMAIL": email,
            "GIT_AUTHOR_DATE": stamp,
            "GIT_COMMITTER_NAME": name,
            "GIT_COMMITTER_EMAIL": email,
            "GIT_COMMITTER_DATE": stamp,
        }
        args = ["commit-tree", tree]
        if parent is not None:
            args += ["-p", parent]
        out = self.git(*args, input=message.encode(), env=env)
        return out.decode().strip()

    # --- fetch ------------------------------------------------------------------

    def fetch(self, url: str, sha: str, timeout: float) -> None:
        """Fetch exactly commit ``sha`` from ``url`` and keep it under a ref.

        Every received object is checked by git (``transfer.fsckObjects``):
        trees with ``..``, ``.git`` or ``/`` in a name and malformed objects
        are refused before they are stored.

        Raises:
            InvalidChange: the peer sent objects that fail git's checks.
            RepositoryError: the peer is unreachable or does not have it, or
                the commit is not complete here afterwards.
        """
        check_sha(sha)
        try:
            self.git(
                "-c",
                "protocol.version=2",
                "-c",
                "transfer.fsckObjects=true",
                "fetch",
                "--no-tags",
                "--no-write-fetch-head",
                "--quiet",
                url,
                sha,
                timeout=timeout,
            )
        except RepositoryError as exc:
            if _FSCK_FAILURE.search(str(exc)):
                detail = " | ".join(str(exc).splitlines()[:3])
                raise InvalidChange(
                    f"{url} sent {sha[:12]} with objects that fail git fsck: {detail}"
                ) from exc
            raise
        if not self.has_commit(sha):
            raise RepositoryError(f"fetched {sha[:12]} from {url}, but it is not complete here")
        self.git("update-ref", FETCHED, sha)

    # --- working copy ---------------------------------------------------------

    def read_blobs(self, shas: Sequence[str]) -> list[bytes | None]:
        """The contents of blobs ``shas`` (None: not here, or not a blob), mostly in-process."""
        found = self.read_objects(shas)
        return [
            obj[1] if (obj := found.get(sha)) is not None and obj[0] == b"blob" else None
            for sha in shas
        ]

    def _worktree_file(self, path: str) -> bytes | None:
        try:
            return read_regular(self.path, path)
        except (InvalidChange, OSError):
            return None  # a link or unreadable: never equal to a version's bytes

    def _plan(self, old: str | None, new: str) -> tuple[list[str], dict[str, bytes | None]]:
        """Conflicting paths, and the files to write, to move the working copy old -> new."""
        # In-process diff and reads: this runs on every node for every commit.
        changed = self.changes(old, new)
        paths = [path for path, _, _, _ in changed]
        wanted = [
            sha for _, _, new_blob, old_blob in changed for sha in (new_blob, old_blob) if sha
        ]
        by_sha = dict(zip(wanted, self.read_blobs(wanted), strict=True))
        news = [by_sha.get(sha) if sha else None for _, _, sha, _ in changed]
        olds = [by_sha.get(sha) if sha else None for _, _, _, sha in changed]
        conflicts: list[str] = []
        writes: dict[str, bytes | None] = {}
        for path, before, after in zip(paths, olds, news, strict=True):
            mine = self._worktree_file(path)
            if mine == after:
                continue
            if mine == before:
                writes[path] = after
            else:
                conflicts.append(path)
        return conflicts, writes

    def conflicts(self, target: str) -> list[str]:
        """Uncommitted edits that moving the working copy to ``target`` would lose.

        A path conflicts when ``target`` changes it and the working copy
        holds neither the local branch's nor the target's content. Edits to
        paths the update does not touch are not conflicts: they survive.
        """
        return self._plan(self.main(), target)[0]

    def advance(self, target: str, *, force: bool = False) -> str | None:
        """Move the local branch and the working copy to ``target``.

        Files the update changes are rewritten only where the working copy
        still holds the old content; other uncommitted edits survive.

        Args:
            target: the commit to move to.
            force: on conflicting edits, save all edits as a stash entry
                (``git stash list`` shows them) and reset hard to ``target``.

        Returns:
            The stash entry's sha when edits were saved, else None.

        Raises:
            InvalidChange: conflicting edits and not ``force`` (names the paths).
        """
        return self.advance_from(self.main(), target, force=force)

    def advance_from(self, old: str | None, target: str, *, force: bool = False) -> str | None:
        """:meth:`advance` for a caller that just read the local branch (``old``)."""
        if old == target:
            return None
        conflicts, writes = self._plan(old, target)
        if conflicts:
            if not force:
                raise InvalidChange(
                    "uncommitted edits would be overwritten: " + ", ".join(conflicts[:10])
                )
            return self._stash_and_reset(target)
        self.move_branch(old, target, writes)
        return None

    def move_branch(self, old: str | None, target: str, writes: Mapping[str, bytes | None]) -> None:
        """Write ``writes`` into the working copy, then move the branch ``old`` -> ``target``.

        For callers that planned the move themselves (no conflicting edit).

        Raises:
            RepositoryError: the branch is no longer at ``old``.
            InvalidChange: an unsafe path or a link on the way.
        """
        # Unique temporary names, no links followed, nothing outside the
        # working copy (the paths come from a checked commit all the same).
        write_files(self.path, writes)
        update_ref(self.path / ".git", BRANCH, target, old)
        # The index follows (for operators' `git status`), for the paths
        # that changed only: `git reset` re-read the whole tree.
        self.sync_index(old, target)

    def _stash_and_reset(self, target: str) -> str | None:
        saved = None
        if self.main() is not None:
            self.git("add", "-A")
            stash = self.git("stash", "create", f"mhafail: local edits before {target[:12]}")
            saved = stash.decode().strip() or None
            if saved is not None:
                self.git("stash", "store", "-m", f"mhafail: before {target[:12]}", saved)
        self.git("reset", "-q", "--hard", target)
        return saved

    # --- history ------------------------------------------------------------------

    def log(self, rev: str | None = None, limit: int = 20) -> list[LogEntry]:
        """Up to ``limit`` commits reachable from ``rev`` (default: the local branch)."""
        start = rev or self.main()
        if start is None:
            return []
        with self._repo() as repo:
            return [
                LogEntry(
                    sha=c.hexsha,
                    parent=c.parents[0].hexsha if c.parents else None,
                    author=f"{c.author.name} <{c.author.email}>",
                    time=float(c.committed_date),
                    message=str(c.message).strip(),
                )
                for c in repo.iter_commits(start, max_count=limit)
            ]

    def diff(self, old: str, new: str | None) -> str:
        """A unified diff from ``old`` to ``new`` (None: the working copy)."""
        args = ["diff", "--no-color", "--no-ext-diff", old]
        if new is not None:
            args.append(new)
        return self.git(*args, "--").decode(errors="replace")

    def worktree_changes(
        self, paths: Sequence[str] = (), max_file_bytes: int | None = None
    ) -> dict[str, bytes | None]:
        """The uncommitted edits of the working copy as a change set.

        Args:
            paths: limit to these files or directories (empty: everything).
            max_file_bytes: refuse a new or changed file larger than this
                before anything is hashed into the repository (a refused
                64 MiB file used to stay in ``.git`` as garbage).

        Raises:
            InvalidChange: a symbolic link (also on the way to a path), a
                file too large, a name that is not UTF-8.
        """
        head = self.main()
        for path in paths:
            self._refuse_links(path)
        with self._temp_index() as env:
            # From the branch, not the index: what the operator staged with
            # plain git must not sneak into a commit limited to ``paths``.
            if head is not None:
                self.git("read-tree", head, env=env)
            if max_file_bytes is not None:
                self._refuse_large(paths, max_file_bytes, env)
            self.git("add", "-A", "--", *(paths or ["."]), env=env)
            worktree = self.git("write-tree", env=env).decode().strip()
        changes: dict[str, bytes | None] = {}
        for name, mode in self._diff_tree_modes(head, worktree):
            if mode == "120000":
                raise InvalidChange(
                    f"{name}: is a symbolic link; config commits carry regular files only "
                    "(copy the file instead of linking it)"
                )
            if mode not in ("100644", "100755", "000000"):
                raise InvalidChange(f"{name}: is not a regular file (git mode {mode})")
            # read_regular refuses links on the way too (a linked directory).
            changes[name] = None if mode == "000000" else read_regular(self.path, name)
        return changes

    def _refuse_links(self, path: str) -> None:
        parts = [p for p in path.split("/") if p not in ("", ".")]
        for depth in range(1, len(parts) + 1):
            if self.path.joinpath(*parts[:depth]).is_symlink():
                raise InvalidChange(
                    f"{'/'.join(parts[:depth])}: is a symbolic link; config commits carry "
                    "regular files only (copy the file instead of linking it)"
                )

    def _refuse_large(self, paths: Sequence[str], limit: int, env: Mapping[str, str]) -> None:
        listed = self.git(
            "ls-files", "-z", "--others", "--modified", "--exclude-standard", "--",
            *(paths or ["."]), env=env,
        )  # fmt: skip
        for raw in listed.split(b"\0"):
            if not raw:
                continue
            name = _decode_path(raw)
            try:
                info = os.lstat(self.path / name)
            except (FileNotFoundError, NotADirectoryError):
                continue  # deleted (or its directory became a file)
            if stat.S_ISREG(info.st_mode) and info.st_size > limit:
                raise InvalidChange(
                    f"{name}: {info.st_size} bytes exceeds the limit of {limit} "
                    "(nothing was committed or stored)"
                )

    def _diff_tree_modes(self, commitish: str | None, tree: str) -> list[tuple[str, str]]:
        """``(path, new mode)`` for every path that differs; mode 000000: deleted."""
        result: list[tuple[str, str]] = []
        if commitish is None:
            out = self.git("ls-tree", "-r", "-z", tree)
            for item in out.split(b"\0"):
                if item:
                    meta, _, raw = item.partition(b"\t")
                    result.append((_decode_path(raw), meta.split()[0].decode()))
        else:
            out = self.git("diff-tree", "-r", "-z", "--no-renames", commitish, tree)
            fields = out.split(b"\0")
            for meta, raw in zip(fields[0::2], fields[1::2], strict=False):
                if meta.startswith(b":"):
                    result.append((_decode_path(raw), meta[1:].split()[1].decode()))
        return sorted(result)
