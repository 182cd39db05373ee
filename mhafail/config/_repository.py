"""ConfigRepository: one node's copy of a config repository, and publication.

Publication order (why nothing is ever half-done):

1. The change set is checked (paths, sizes) and the head znode is read.
   ZooKeeper unreachable here: nothing was written anywhere.
2. The parent's tree plus the change set is staged in a temporary
   directory and the validators run on it. A rejection publishes nothing.
3. The commit object is written to the local repository and served from
   the export repository under a private ref; the head does not name it.
4. It is proposed (``config/<repo>/proposals/<sha>``) and the commit
   waits until enough other nodes hold it (:mod:`._publish`); too few:
   :class:`~mhafail.errors.NotReplicated`, nothing published.
5. The head znode moves by compare-and-set on its version, sent only on a
   live connection. Losing the CAS is a :class:`~mhafail.errors.HeadConflict`;
   no answer is settled by an ordered re-read of the head.
6. Only then does the local branch move (and the working copy follow where
   that loses no uncommitted edit). Peers fetch the commit by sha from any
   node that has it.

Concurrency: methods are thread-safe (one lock per instance); several
processes may share one repository directory (an agent and the CLI).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

from mhafail.config._apply import Checkouts
from mhafail.config._export import PROPOSED, export, exported, init_export
from mhafail.config._fetch import fetch_from_peers, live_peers
from mhafail.config._model import (
    MAX_AUTHOR_BYTES,
    MAX_MESSAGE_BYTES,
    ApplyState,
    ClusterStatus,
    Commit,
    Head,
    LogEntry,
    NodeReport,
    UpdateMode,
    applied_path,
    head_path,
    mode_path,
)
from mhafail.config._paths import Limits, absolute_path, check_changes, check_sha
from mhafail.config._publish import OUTGOING, publish, replicate, withdraw
from mhafail.config._refs import update_ref
from mhafail.config._repo import BRANCH, GitStore, parse_author
from mhafail.config._safefs import read_regular
from mhafail.config._trees import check_tree
from mhafail.config._validate import Validator, cluster_check, require_valid, syntax_check
from mhafail.config._view import ConfigView
from mhafail.coordination import (
    Coordinator,
    Znodes,
    check_name,
)
from mhafail.errors import (
    FetchFailed,
    HeadConflict,
    InvalidArgument,
    InvalidChange,
    RepositoryError,
)

logger = logging.getLogger(__name__)

WORK = "work"
EXPORT = "export"


def _valid_name(what: str) -> Callable[[object, object, str], None]:
    def check(_: object, __: object, value: str) -> None:
        try:
            check_name(what, value)
        except InvalidArgument as exc:
            raise InvalidChange(str(exc)) from exc

    return check


@attrs.define(kw_only=True, eq=False)
class ConfigRepository:
    """A node's copy of the config repository ``name`` and the ways to change it.

    Args:
        name: repository name (``config/<name>`` in ZooKeeper).
        base: the node's config directory; the repository lives in
            ``<base>/<name>/`` (``work/`` working copy with ``.git``,
            ``versions/`` and ``current`` for applied versions).
        node: this node's name (the folder resolved first, the origin of
            its commits, and where its reports go).
        coordinator: a started coordinator; needed by everything that
            reads or moves the published head (None: local use only).
        validators: run on every staged tree before publication
            (default: :func:`syntax_check`).
        cluster_check: also run the check the tree itself declares
            (``.mhafail/check.toml``, see :func:`cluster_check`), as every
            node does before applying; off only for tools that must not
            run commands from the repository.
        limits: path and size limits for change sets.
        fetch_timeout: seconds one fetch from one peer may take.
        keep: versions kept besides the live one.
        zk_timeout: the longest one ZooKeeper request waits (seconds).
            With ZooKeeper down, :meth:`head` and :meth:`status` raise
            ``CoordinationUnavailable`` within about this bound, and
            :meth:`commit` within about three times it (head read,
            compare-and-set, settling its outcome) plus the replication
            wait.
        replicas: how many *other* nodes must hold a commit before it is
            published (see :meth:`commit`); None: a majority of the live
            nodes, at least one; 0: publish at once (operator override).
        replicate_timeout: the longest :meth:`commit` waits for them.
    """

    name: str = attrs.field(validator=_valid_name("repository name"))
    base: Path = attrs.field(converter=absolute_path)
    node: str = attrs.field(validator=_valid_name("node name"))
    coordinator: Coordinator | None = None
    validators: Sequence[Validator] = (syntax_check,)
    cluster_check: bool = True
    limits: Limits = attrs.field(factory=Limits)
    fetch_timeout: float = 10.0
    keep: int = 3
    zk_timeout: float = 5.0
    replicas: int | None = None
    replicate_timeout: float = 10.0
    _lock: threading.RLock = attrs.field(init=False, factory=threading.RLock)
    _verified: set[str] = attrs.field(init=False, factory=set)
    _refs: dict[str, str] = attrs.field(init=False, factory=dict)

    # --- local ----------------------------------------------------------------

    @property
    def root(self) -> Path:
        """``<base>/<name>``."""
        return self.base / self.name

    @property
    def worktree(self) -> Path:
        """The working copy operators edit (``<base>/<name>/work``)."""
        return self.root / WORK

    @property
    def export_dir(self) -> Path:
        """The bare repository the node's git daemon serves (``<base>/<name>/export``).

        It holds only published, checked commits, never the working copy's
        stash, drafts or refused commits.
        """
        return self.root / EXPORT

    @property
    def checks(self) -> tuple[Validator, ...]:
        """The validators a staged tree must pass: ``validators`` and the cluster's check."""
        return (*self.validators, *((cluster_check,) if self.cluster_check else ()))

    @property
    def store(self) -> GitStore:
        """The git adapter for the working copy."""
        return GitStore(self.worktree)

    @property
    def checkouts(self) -> Checkouts:
        """The applied versions and the ``current`` link."""
        return Checkouts(root=self.root, keep=self.keep)

    def init(self) -> ConfigRepository:
        """Create the local repository if missing; idempotent. Returns self.

        Raises:
            RepositoryError: git could not create it.
        """
        GitStore.init(self.worktree)
        init_export(self.export_dir)
        (self.root / "versions").mkdir(exist_ok=True)
        return self

    def view(self) -> ConfigView | None:
        """The live version as a :class:`ConfigView`, or None before the first apply."""
        checkouts = self.checkouts
        sha = checkouts.current()
        return (
            None if sha is None else ConfigView(root=checkouts.path(sha), sha=sha, node=self.node)
        )

    def log(self, limit: int = 20, rev: str | None = None) -> list[LogEntry]:
        """The local history, newest first (default: from the local branch)."""
        if limit < 1:
            raise InvalidChange(f"invalid log limit {limit}")
        return self.store.log(rev, limit)

    def diff(self, old: str | None = None, new: str | None = None) -> str:
        """A unified diff: ``old`` to ``new``; default the local branch to the working copy."""
        store = self.store
        start = old or store.main()
        if start is None:
            return ""
        for rev in (start, new):
            if rev is not None and store.resolve(rev) is None:
                raise InvalidChange(f"unknown revision {rev!r}")
        return store.diff(start, new)

    # --- ZooKeeper --------------------------------------------------------------

    def _coordinator(self) -> Coordinator:
        if self.coordinator is None:
            raise InvalidChange("this operation needs a coordinator (ZooKeeper)")
        return self.coordinator

    def znodes(self) -> Znodes:
        """The coordinator's znodes, every call bounded by ``zk_timeout``."""
        return self._coordinator().znodes.bounded(self.zk_timeout)

    def _read_head(self, *, lenient: bool = False) -> tuple[Head | None, int | None]:
        """The head and its znode version; ``lenient``: a malformed head reads as None."""
        node = self.znodes().get(head_path(self.name))
        if node is None:
            return None, None
        try:
            return Head.from_json(node.data), node.version
        except InvalidChange as exc:
            if not lenient:
                raise
            logger.warning("%s: the published head is malformed: %s", self.name, exc)
            return None, node.version

    def head(self) -> Head | None:
        """The published head, or None before the first commit.

        Raises:
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        return self._read_head()[0]

    def peers(self) -> list[tuple[str, str]]:
        """``(node, fetch URL)`` of every live member that serves git, self excluded."""
        return live_peers(self.znodes(), self.node, self.name)

    def ensure_commit(
        self,
        sha: str,
        *,
        origin: str = "",
        peers: Sequence[tuple[str, str]] | None = None,
        ref: str = BRANCH,
        parent: str | None = None,
        objects: Sequence[str] | None = None,
    ) -> None:
        """Make sure commit ``sha`` is here, safe, and served to peers.

        Fetches it if needed: peers are tried in order, ``origin`` (the node
        that published it) first, then the others in random order, so that
        a burst of nodes does not pile onto one peer. git checks every
        received object (``transfer.fsckObjects``). Then the whole tree is
        checked (:func:`~mhafail.config._trees.check_tree`: safe names at
        every level, regular files only, size limits) and only then is the
        commit copied into the export repository peers fetch from. Nothing
        is written to any checkout before this returns. ``ref`` is the
        export repository's ref that names it (``main``: the published
        head; :data:`PROPOSED`: a proposal, not published yet). ``parent``:
        the commit ``sha`` is said to build on, a hint that saves git work
        when it is exported already (never trusted for anything else);
        ``objects``: what ``sha`` adds to it, if known (see :func:`export`).

        Raises:
            InvalidChange: ``sha`` is not a sha, or the commit (or what a
                peer sent for it) is unsafe; it must never be applied.
            FetchFailed: no peer had it or none could be reached; the
                message lists each attempt.
            RepositoryError: the local repository failed.
            CoordinationUnavailable: the member list could not be read.
        """
        sha = check_sha(sha)
        if sha not in self._verified:
            store = self.store
            if exported(self.export_dir, sha) and store.has_commit(sha):
                self._verified.add(sha)  # checked before it went there
            else:
                try:
                    # Usually here already (a proposal's pack): no git
                    # process just to ask; a missing commit fails the check.
                    check_tree(store, sha, self.limits)
                except RepositoryError:
                    self._fetch(sha, origin, peers)
                    check_tree(store, sha, self.limits)
                self._export(sha, ref, parent, objects)
                self._verified.add(sha)
                self._refs[ref] = sha
        if ref != PROPOSED and self._refs.get(ref) != sha:
            update_ref(self.export_dir, ref, sha)
            self._refs[ref] = sha

    def _export(
        self, sha: str, ref: str, base: str | None = None, objects: Sequence[str] | None = None
    ) -> None:
        """Copy a checked or own commit into the export repository, creating it if needed."""
        if not (self.export_dir / "HEAD").is_file():
            init_export(self.export_dir)  # a repository made by an older version
        export(self.store, self.export_dir, sha, ref=ref, base=base, objects=objects)

    def _fetch(self, sha: str, origin: str, peers: Sequence[tuple[str, str]] | None) -> None:
        candidates = self.peers() if peers is None else peers
        fetch_from_peers(
            self.store, self.name, sha, origin=origin, peers=candidates, timeout=self.fetch_timeout
        )

    def _base(self, base: str | None) -> str | None:
        if base is None:
            return self.store.main()
        sha = check_sha(base)
        if not self.store.has_commit(sha):
            raise InvalidChange(f"base {sha[:12]} is not in the local repository")
        return sha

    def commit(
        self,
        changes: Mapping[str, bytes | None],
        *,
        message: str,
        author: str,
        base: str | None = None,
        rebase: bool = False,
        replicas: int | None = None,
    ) -> Commit:
        """Validate a change set, commit it and publish it as the new head.

        Before the compare-and-set, the commit is proposed
        (``config/<repo>/proposals/<sha>``) and published only once
        ``replicas`` other live nodes hold it (fetched, checked, served): a
        head never depends on one node, so the committer dying the moment
        after does not leave every node waiting for it.

        Args:
            changes: repository path -> new content, or None to delete it.
            message: the commit message.
            author: ``Name <email>``.
            base: the commit the change was prepared against (default: the
                local branch).
            rebase: when the head moved past ``base``, commit on top of the
                head anyway if no file of the change set changed since
                ``base`` (retries up to 3 lost CAS races). If no live node
                can provide the head's commit (its holders are gone), the
                commit replaces that head, built on ``base``.
            replicas: other nodes that must hold the commit first (default:
                the repository's ``replicas``; None there: a majority of
                the live members, counting this node if it is one, and at
                least one other; 0: publish at once).

        Returns:
            The published :class:`Commit` (``holders``: who held it).

        Raises:
            InvalidChange: bad path, size, author, message or base; nothing to commit.
            ValidationFailed: a validator rejected the staged tree (nothing published).
            HeadConflict: the head is not ``base`` (and could not be rebased),
                or another commit won the CAS; pull and retry.
            NotReplicated: too few other nodes held it within
                ``replicate_timeout`` (nothing published).
            CoordinationUnavailable: ZooKeeper unreachable; nothing was
                published (:class:`~mhafail.errors.PublishOutcomeUnknown`:
                see the guarantees in docs/config.md).
        """
        checked = check_changes(changes, self.limits)
        message = self._check_message(message, author)
        with self._lock:
            base_sha = self._base(base)
            for _ in range(3 if rebase else 1):
                head, version = self._read_head()
                parent, rebased = self._parent_for(head, base_sha, set(checked), rebase)
                staged = self._stage_and_validate(parent, checked)
                written: list[str] = []
                try:
                    sha = self.store.write_commit(
                        parent=parent,
                        paths=list(checked),
                        staged=staged,
                        message=message,
                        author=author,
                        when=time.time(),
                        written=written,
                    )
                finally:
                    shutil.rmtree(staged.parent, ignore_errors=True)
                # Served before the CAS, so peers can fetch it the moment it wins.
                self._export(sha, OUTGOING, parent, written)
                holders = replicate(self, sha, replicas, parent, written)
                try:
                    result = publish(
                        self,
                        sha=sha,
                        parent=head.sha if head else None,
                        head=head,
                        version=version,
                        message=message,
                        author=author,
                    )
                finally:
                    withdraw(self, sha)
                if result is not None:
                    self._after_publish(base_sha, sha, checked if parent == base_sha else None)
                    return Commit(
                        sha=sha,
                        parent=result.parent,
                        paths=tuple(checked),
                        rebased=rebased,
                        head=result,
                        holders=holders,
                    )
            current = self.head()
            raise HeadConflict(
                f"another commit was published first (head is now "
                f"{current.sha[:12] if current else 'gone'}); pull and retry",
                head=current.sha if current else None,
            )

    def rollback(
        self,
        sha: str,
        *,
        author: str,
        message: str | None = None,
        replicas: int | None = None,
    ) -> Commit:
        """Publish a new commit whose tree is the tree of ``sha`` (history is kept).

        This is also the way out of a bad head: if the published head is
        unsafe or malformed (every node refuses it), the new commit is
        built on ``sha`` instead of on the head, so that no node ever has
        to fetch the refused commit, and it replaces the head znode by
        compare-and-set all the same. The same holds for a head that no
        live node can provide (its holders died). ``replicas`` as for
        :meth:`commit`.

        Raises:
            InvalidChange: unknown or unsafe sha, or the head already has that tree.
            ValidationFailed: today's validators reject the old tree.
            HeadConflict: another commit was published meanwhile; retry.
            NotReplicated, CoordinationUnavailable: as for :meth:`commit`.
        """
        target = check_sha(sha)
        text = self._check_message(message or f"Roll back to {target[:12]}", author)
        with self._lock:
            head, version = self._read_head(lenient=True)
            parent = head.sha if head else None
            git_parent = target if head is None and version is not None else parent
            if head is not None:
                try:
                    self.ensure_commit(head.sha, origin=head.origin)
                except (InvalidChange, FetchFailed) as exc:
                    logger.warning("%s: rolling back over an unusable head: %s", self.name, exc)
                    git_parent = target
            if not self.store.has_commit(target):
                raise InvalidChange(f"unknown commit {target[:12]}: not in this repository")
            self.ensure_commit(target)
            tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.root))
            try:
                self.store.checkout(target, tmp / "tree")
                require_valid(self.checks, tmp / "tree", (), f"rollback to {target[:12]}")
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            new = self.store.commit_tree_of(
                target, git_parent, text, author, time.time(), same_tree=git_parent == target
            )
            self._export(new, OUTGOING, git_parent)
            holders = replicate(self, new, replicas, git_parent)
            paths = tuple(self.store.changed_paths(git_parent, new))
            local = self.store.main()
            try:
                result = publish(
                    self,
                    sha=new,
                    parent=parent,
                    head=head,
                    version=version,
                    message=text,
                    author=author,
                )
            finally:
                withdraw(self, new)
            if result is None:
                raise HeadConflict("another commit was published first; retry", head=None)
            self._after_publish(local, new)
            return Commit(
                sha=new, parent=parent, paths=paths, rebased=False, head=result, holders=holders
            )

    def _check_message(self, message: str, author: str) -> str:
        parse_author(author)
        if len(author.encode(errors="surrogatepass")) > MAX_AUTHOR_BYTES:
            raise InvalidChange(f"author longer than {MAX_AUTHOR_BYTES} bytes")
        text = (message or "").strip()
        if not text:
            raise InvalidChange("empty commit message")
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise InvalidChange("commit message is not valid Unicode text") from None
        if size > MAX_MESSAGE_BYTES or "\0" in text:
            raise InvalidChange("commit message too long or contains NUL")
        return text + "\n"

    def _parent_for(
        self, head: Head | None, base: str | None, paths: set[str], rebase: bool
    ) -> tuple[str | None, bool]:
        head_sha = head.sha if head else None
        if head is None or head_sha == base:
            return base, False
        if not rebase:
            raise HeadConflict(
                f"the published head is {head.sha[:12]} but this change is based on "
                f"{base[:12] if base else 'nothing'}; pull and retry (or rebase; a head "
                "no live node can provide is replaced by a rebase or a rollback)",
                head=head.sha,
            )
        try:
            self.ensure_commit(head.sha, origin=head.origin)
        except FetchFailed as exc:
            # Every holder of the head is gone: waiting for it would block
            # every commit, pull and rollback of the cluster forever.
            logger.warning(
                "%s: replacing head %s, which no node can provide: %s",
                self.name,
                head.sha[:12],
                exc,
            )
            return base, True
        if base is not None and not self.store.resolve(f"{base}") == base:
            raise InvalidChange(f"base {base[:12]} is not in the local repository")
        touched = sorted(paths & set(self.store.changed_paths(base, head.sha)))
        if touched:
            raise HeadConflict(
                f"cannot rebase onto {head.sha[:12]}: it also changed " + ", ".join(touched),
                head=head.sha,
                paths=tuple(touched),
            )
        return head.sha, True

    def _stage_and_validate(self, parent: str | None, changes: dict[str, bytes | None]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".stage-", dir=self.root))
        tree = tmp / "tree"
        try:
            live = self.checkouts.current()
            seed = self.checkouts.path(live) if live is not None and live == parent else None
            self.store.stage(parent, changes, tree, seed=seed)
            require_valid(self.checks, tree, changes, "commit")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return tree

    def _after_publish(
        self, base: str | None, sha: str, changes: Mapping[str, bytes | None] | None = None
    ) -> None:
        # The working copy follows only if that loses no uncommitted edit;
        # otherwise the agent (or `pull`) deals with it by its update mode.
        # Never raises: the commit is published already.
        store = self.store
        try:
            seed = self.checkouts.path(base) if base is not None else None
            if changes is not None and seed is not None and self.checkouts.current() == base:
                # The parent's files are on disk (the live version): plan the
                # move without asking git for either side.
                writes: dict[str, bytes | None] = {}
                for path, new in changes.items():
                    mine = read_regular(self.worktree, path)
                    if mine == new:
                        continue
                    if mine != read_regular(seed, path):
                        return  # an uncommitted edit: not ours to overwrite
                    writes[path] = new
                store.move_branch(base, sha, writes)
                return
            if store.main() != base:
                return
            store.advance_from(base, sha)
        except (InvalidChange, RepositoryError, OSError) as exc:
            logger.info("%s: working copy not moved to %s: %s", self.name, sha[:12], exc)

    # --- cluster ------------------------------------------------------------------

    def pull(self, *, force: bool = False) -> str | None:
        """Fetch the published head and move the working copy to it.

        Args:
            force: save conflicting uncommitted edits as a stash entry and
                overwrite them; otherwise they make the pull fail.

        Returns:
            The head sha now checked out (None when nothing is published).

        Raises:
            InvalidChange: uncommitted edits would be overwritten (not ``force``).
            FetchFailed: no peer could provide the head.
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        with self._lock:
            head = self.head()
            if head is None:
                return None
            self.ensure_commit(head.sha, origin=head.origin)
            self.store.advance(head.sha, force=force)
            return head.sha

    def reports(self) -> dict[str, NodeReport]:
        """Every node's latest report, by node name (malformed ones skipped)."""
        znodes = self.znodes()
        names = znodes.children(applied_path(self.name)) or []
        found = znodes.get_many([applied_path(self.name, n) for n in names])
        reports = {}
        for node in names:
            znode = found[applied_path(self.name, node)]
            if znode is None:
                continue
            try:
                reports[node] = NodeReport.from_json(node, znode.data)
            except InvalidChange:
                logger.warning("%s: ignoring malformed report of %s", self.name, node)
        return reports

    def status(self) -> ClusterStatus:
        """The published head, every node's report, and which nodes drift.

        Raises:
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        head = self.head()
        reports = self.reports()
        drift = tuple(
            name
            for name, report in reports.items()
            if report.state is not ApplyState.APPLIED or (head and report.sha != head.sha)
        )
        return ClusterStatus(head=head, nodes=reports, drift=drift)

    def set_mode(self, node: str, mode: UpdateMode | None, *, force: bool = False) -> None:
        """Override ``node``'s update mode cluster-wide (None: back to its own).

        ``freeze`` is ``set_mode(node, UpdateMode.FROZEN)``; ``thaw`` is
        ``set_mode(node, None)``. The node's agent reacts within moments.

        Raises:
            InvalidChange: bad node name.
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        try:
            check_name("node name", node)
        except InvalidArgument as exc:
            raise InvalidChange(str(exc)) from exc
        znodes = self.znodes()
        path = mode_path(self.name, node)
        if mode is not None and not force:
            known = set(znodes.children("members") or [])
            known |= set(znodes.children(applied_path(self.name)) or [])
            if node not in known:
                raise InvalidChange(
                    f"unknown node {node!r}: not live and never reported for {self.name} "
                    f"(known: {', '.join(sorted(known)) or 'none'}); force it for a node "
                    "not started yet"
                )
        if mode is None:
            znodes.delete(path)
            return
        if znodes.set(path, mode.value.encode()) is None:
            znodes.create(path, mode.value.encode(), makepath=True)

    def mode_override(self, node: str | None = None) -> UpdateMode | None:
        """The operator's override for ``node`` (default: this node), or None."""
        znode = self.znodes().get(mode_path(self.name, node or self.node))
        if znode is None:
            return None
        try:
            return UpdateMode(znode.data.decode())
        except (ValueError, UnicodeDecodeError):
            logger.warning("%s: ignoring malformed mode override %r", self.name, znode.data)
            return None
