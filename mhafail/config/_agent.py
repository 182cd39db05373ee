"""ConfigAgent: the per-node loop that fetches, validates and applies the head.

Every pass re-reads the desired state (the head znode and the node's mode
override) and converges on it (safety rule 2): a watch on the head, a
watch on the mode override, every reconnect, every membership change and a
timer only *kick* the loop. Kicks during a pass coalesce, and each pass
starts with a short debounce pause, so a burst of commits is applied once,
at its last version.

One pass first *holds* the proposals (``config/<repo>/proposals/<sha>``,
commits waiting for holders before publication): it fetches and checks
each, serves it from the export repository and lists it in its report's
``holds``, at once. Then it fetches the head's commit from a peer if it is not here, check it
out into a new directory, run the node's validators there, switch
``current`` atomically, move the working copy, call the reload hooks, and
report ``config/<repo>/applied/<node>``. If the node's validators reject
the version, the old one stays live and the node reports ``rejected``.

Reload hooks run on the agent's own thread, never on kazoo's or the
coordinator's; wrap an asyncio callback with
:func:`mhafail.coordination.in_loop` to run it on an event loop.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from mhafail.config._export import PROPOSED
from mhafail.config._fetch import unbundle, unpack_commit
from mhafail.config._model import (
    MAX_HOLDS,
    ApplyOutcome,
    ApplyState,
    Head,
    NodeReport,
    UpdateMode,
    applied_path,
    head_path,
    mode_path,
    proposal_path,
)
from mhafail.config._paths import check_sha
from mhafail.config._repository import ConfigRepository
from mhafail.config._serve import ENDPOINT, repo_url
from mhafail.config._validate import Validator, cluster_check, run_validators, syntax_check
from mhafail.config._view import ConfigView
from mhafail.coordination import ConnectionState, ConvergeLoop, Membership, Watch, check_name
from mhafail.errors import (
    AccessDenied,
    ConfigError,
    FetchFailed,
    InvalidArgument,
    InvalidChange,
    RepositoryError,
)

logger = logging.getLogger(__name__)

ReloadHook = Callable[[ConfigView], object]


@attrs.define(kw_only=True, eq=False)
class ConfigAgent:
    """Keeps one node's applied version of a repository on the published head.

    Args:
        repository: the node's repository, with a started coordinator.
        membership: the node's started membership; its view lists the peers
            to fetch from (None: read ``members/`` when a fetch is needed).
        mode: the node's own update mode (an operator override in
            ``config/<repo>/modes/<node>`` wins over it).
        validators: node-local checks run on each checked-out version
            before it goes live (default: :func:`syntax_check`).
        cluster_check: also run the check the version itself declares
            (``.mhafail/check.toml``): the cluster's check, the same on
            every node and for every committer. Turning it off means this
            node applies versions the cluster's check would reject.
        debounce: seconds to wait at the start of a pass so a burst of
            commits settles into one apply.
        period: seconds between passes when nothing kicks (retries a stuck
            fetch, repairs a missed watch).

    Thread safety: :meth:`add_reload_hook` before :meth:`start`; the other
    public methods may be called from any thread.
    """

    repository: ConfigRepository
    membership: Membership | None = None
    mode: UpdateMode = UpdateMode.ALWAYS
    validators: Sequence[Validator] = (syntax_check,)
    cluster_check: bool = True
    debounce: float = 0.005
    period: float = 1.0

    _hooks: list[ReloadHook] = attrs.field(init=False, factory=list)
    _loop: ConvergeLoop | None = attrs.field(init=False, default=None)
    _watches: list[Watch] = attrs.field(init=False, factory=list)
    _cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    _outcome: ApplyOutcome | None = attrs.field(init=False, default=None)
    _reported: bytes = attrs.field(init=False, default=b"")
    _rejected: dict[str, str] = attrs.field(init=False, factory=dict)
    _applies: int = attrs.field(init=False, default=0)
    _last_error: str = attrs.field(init=False, default="")
    _holds: tuple[str, ...] = attrs.field(init=False, default=())
    _last_report: NodeReport | None = attrs.field(init=False, default=None)
    _followup: tuple[Head, UpdateMode] | None = attrs.field(init=False, default=None)

    def add_reload_hook(self, hook: ReloadHook) -> None:
        """Call ``hook(view)`` on the agent's thread after each new version goes live.

        A hook that raises is logged; the version stays live (it already is)
        and the error shows in the node's report.
        """
        self._hooks.append(hook)

    @property
    def outcome(self) -> ApplyOutcome | None:
        """What the latest pass did (None before the first pass)."""
        with self._cond:
            return self._outcome

    @property
    def applies(self) -> int:
        """How many times a new version went live in this process."""
        with self._cond:
            return self._applies

    def start(self) -> ConfigAgent:
        """Create the local repository if needed, watch the head and apply it.

        Raises:
            RepositoryError: the local repository cannot be created.
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        if self._loop is not None:
            raise ConfigError("agent already started")
        repo = self.repository
        repo.init()
        coordinator = repo._coordinator()
        coordinator.znodes.ensure(applied_path(repo.name))
        try:
            # A children watch on a missing folder is never armed: proposals
            # would wait for the timer (1 s) instead of being held at once.
            coordinator.znodes.ensure(proposal_path(repo.name))
        except AccessDenied:
            logger.warning(
                "%s: %s is missing and only an operator may create it (`mhafail init "
                "--config-repo %s`); proposals are held on the timer meanwhile",
                repo.name,
                proposal_path(repo.name),
                repo.name,
            )
        self._loop = ConvergeLoop(
            f"mhafail-config-{repo.name}",
            self._pass,
            period=self.period,
            retry=self.period,
            settle=self.debounce,
        )
        loop = self._loop
        coordinator.add_state_listener(
            lambda s: loop.kick() if s is ConnectionState.CONNECTED else None
        )
        coordinator.add_session_listener(loop.kick)
        if self.membership is not None:
            self.membership.add_listener(loop.kick)
        self._watches.append(coordinator.znodes.watch_data(head_path(repo.name), loop.kick))
        self._watches.append(
            coordinator.znodes.watch_data(mode_path(repo.name, repo.node), loop.kick)
        )
        self._watches.append(
            coordinator.znodes.watch_changes(
                proposal_path(repo.name), lambda _: loop.kick(), children=True
            )
        )
        loop.start()
        return self

    def stop(self) -> None:
        """Stop the loop (a pass in progress finishes first); idempotent."""
        for watch in self._watches:
            watch.cancel()
        self._watches.clear()
        if self._loop is not None:
            self._loop.stop()

    def _pass(self) -> None:
        # The loop waited ``debounce`` already, and kicks in that time are
        # covered: a head move and its proposal's removal make one pass.
        self._converge()

    def kick(self) -> None:
        """Ask for a pass now (e.g. after thawing the local mode)."""
        if self._loop is not None:
            self._loop.kick()

    def wait_for(self, predicate: Callable[[ApplyOutcome], bool], timeout: float) -> ApplyOutcome:
        """Block until a pass's outcome satisfies ``predicate``; return it.

        Raises:
            TimeoutError: it did not within ``timeout`` seconds.
        """
        with self._cond:
            ok = self._cond.wait_for(
                lambda: self._outcome is not None and predicate(self._outcome), timeout
            )
            if not ok or self._outcome is None:
                raise TimeoutError(f"config agent outcome is {self._outcome}")
            return self._outcome

    # --- one pass -------------------------------------------------------------------

    def converge(self) -> ApplyOutcome:
        """Run one pass now on the calling thread and return what it did.

        The agent's loop calls this; tests and tools may call it directly
        on an agent that was not started.

        A local failure to apply (git, the disk) is not raised: the pass
        reports ``pending`` with ``error`` saying what failed, keeps the
        live version, and the next pass retries.

        Raises:
            CoordinationUnavailable: ZooKeeper could not be asked (the loop
                retries; the live version is untouched).
        """
        if self.debounce > 0:
            time.sleep(self.debounce)
        return self._converge()

    def _converge(self) -> ApplyOutcome:
        repo = self.repository
        self._hold_proposals()
        mode = repo.mode_override() or self.mode
        try:
            head = repo.head()
        except InvalidChange as exc:
            # Shared data anyone with ZooKeeper access could have written:
            # refuse it, keep the live version, say why.
            logger.warning("%s: refusing the head: %s", repo.name, exc)
            live = repo.checkouts.current()
            outcome = ApplyOutcome(state=ApplyState.REJECTED, sha=live, target=None, error=str(exc))
            return self._finish(outcome, mode)
        try:
            outcome = self._decide(head, mode)
        except (ConfigError, OSError) as exc:
            # A node that cannot apply says so in its report (it used to
            # keep reporting "applied" while failing every pass).
            error = f"cannot apply {head.sha[:12] if head else 'the head'}: {exc}"
            if error != self._last_error:
                logger.warning("%s: %s", repo.name, error, exc_info=True)
            self._last_error = error
            live = repo.checkouts.current()
            outcome = ApplyOutcome(
                state=ApplyState.PENDING,
                sha=live,
                target=head.sha if head else None,
                error=error,
            )
        else:
            self._last_error = ""
        result = self._finish(outcome, mode)
        followup, self._followup = self._followup, None
        if followup is not None:
            # After the report: pruning and the export branch are not part
            # of "applied", and each costs git processes.
            self._serve(followup[0])
            self.repository.checkouts.prune()
        return result

    def _hold_proposals(self) -> None:
        """Fetch, check and serve every proposed commit; say so in the report at once.

        A committer publishes only what enough other nodes hold (see
        :meth:`ConfigRepository.commit`), so that the head never depends
        on one node. Holding is not applying: frozen nodes hold too.
        """
        repo = self.repository
        znodes = repo.znodes()
        names = [n for n in znodes.children(proposal_path(repo.name)) or [] if n not in self._holds]
        held = []
        for sha in sorted(names)[:MAX_HOLDS]:
            znode = znodes.get(proposal_path(repo.name, sha))
            if znode is None:
                continue
            header, _, pack = znode.data.partition(b"\n")
            try:
                about = json.loads(header)
                origin, parent = about.get("origin", ""), about.get("parent")
                check_name("node name", origin)
                parent = check_sha(parent) if parent is not None else None
                objects = None
                try:
                    if pack and about.get("objects") == "loose":
                        objects = unbundle(repo.store, pack, sha, parent, repo.limits)
                    elif pack:
                        unpack_commit(repo.store, pack)
                except InvalidChange as exc:  # fetched below instead, checked there
                    logger.warning("%s: proposal %s: %s", repo.name, sha[:12], exc)
                repo.ensure_commit(
                    sha,
                    origin=origin,
                    peers=self._peers(),
                    ref=PROPOSED,
                    parent=parent,
                    objects=objects,
                )
            except (ValueError, AttributeError, InvalidArgument, ConfigError, OSError) as exc:
                logger.info("%s: not holding proposal %s: %s", repo.name, sha[:12], exc)
                continue
            held.append(sha)
        if not held:
            return
        self._holds = (*held, *self._holds)[:MAX_HOLDS]
        if self._last_report is not None:
            self._write_report(attrs.evolve(self._last_report, holds=self._holds, time=time.time()))

    def _decide(self, head: Head | None, mode: UpdateMode) -> ApplyOutcome:
        repo = self.repository
        live = repo.checkouts.current()
        target = None if head is None else head.sha
        if mode is UpdateMode.FROZEN:
            return ApplyOutcome(state=ApplyState.HELD, sha=live, target=target, error="frozen")
        if head is None or target is None:
            return ApplyOutcome(state=ApplyState.PENDING, sha=live, target=None)
        if live == target:
            self._serve(head)
            self._follow_worktree(target, mode)
            return ApplyOutcome(state=ApplyState.APPLIED, sha=live, target=target)
        error = self._rejected.get(target)
        if error is not None:
            return ApplyOutcome(state=ApplyState.REJECTED, sha=live, target=target, error=error)
        blocked = self._blocked(head, mode)
        if blocked is not None:
            return ApplyOutcome(state=blocked[0], sha=live, target=target, error=blocked[1])
        outcome = self._apply(live, target, mode)
        if outcome.changed:
            self._followup = (head, mode)
        return outcome

    def _blocked(self, head: Head, mode: UpdateMode) -> tuple[ApplyState, str] | None:
        """Why the head cannot be applied now (pending fetch, held by edits), or None."""
        repo = self.repository
        try:
            # Exported as a proposal for now; main moves after the report.
            repo.ensure_commit(head.sha, origin=head.origin, peers=self._peers(), ref=PROPOSED)
        except FetchFailed as exc:
            return ApplyState.PENDING, str(exc)
        except InvalidChange as exc:
            # Unsafe (a '..' name, a link, a huge file...): never applied.
            # Not memoised: a clean copy of the same sha may still arrive.
            logger.warning("%s: refusing %s: %s", repo.name, head.sha[:12], exc)
            return ApplyState.REJECTED, f"unsafe commit: {exc}"
        conflicts = repo.store.conflicts(head.sha) if mode is UpdateMode.IF_UNCHANGED else []
        if conflicts:
            return ApplyState.HELD, f"uncommitted edits in {repo.worktree}: " + ", ".join(
                conflicts[:10]
            )
        return None

    def _apply(self, live: str | None, target: str, mode: UpdateMode) -> ApplyOutcome:
        repo = self.repository
        checkouts = repo.checkouts
        entries = repo.store.entries(live, target) if live is not None else None
        tmp = checkouts.prepare(repo.store, target, base=live, entries=entries)
        # Syntax checks need only the files that changed since the live
        # version (the rest passed before); a check command still sees the tree.
        changed = [p for p, _, _ in entries] if entries is not None else []
        checks = (*self.validators, *((cluster_check,) if self.cluster_check else ()))
        problems = run_validators(checks, tmp, changed)
        if problems:
            checkouts.discard(tmp)
            error = "local validation failed: " + "; ".join(problems)
            self._rejected[target] = error
            logger.warning("%s: rejected %s: %s", repo.name, target[:12], error)
            return ApplyOutcome(state=ApplyState.REJECTED, sha=live, target=target, error=error)
        checkouts.install(tmp, target)
        checkouts.switch(target)
        logger.info("%s: %s is live", repo.name, target[:12])
        with self._cond:
            self._applies += 1
        self._follow_worktree(target, mode)
        view = ConfigView(root=checkouts.path(target), sha=target, node=repo.node)
        hook_error = self._run_hooks(view)
        return ApplyOutcome(
            state=ApplyState.APPLIED, sha=target, target=target, changed=True, error=hook_error
        )

    def _serve(self, head: Head) -> None:
        """Make sure the live head is in the export repository (free after the first pass).

        A repository made by an older version has an empty export
        repository while its live version is the head: without this, no
        peer could fetch the head from this node.
        """
        try:
            self.repository.ensure_commit(head.sha, origin=head.origin, peers=[])
        except (ConfigError, OSError) as exc:
            logger.warning("%s: not serving %s: %s", self.repository.name, head.sha[:12], exc)

    def _peers(self) -> list[tuple[str, str]] | None:
        if self.membership is None:
            return None
        repo = self.repository
        peers = []
        for info in self.membership.view:
            endpoint = info.endpoints.get(ENDPOINT)
            if info.name == repo.node or not endpoint:
                continue
            try:
                peers.append((info.name, repo_url(endpoint, repo.name)))
            except InvalidChange as exc:
                logger.warning("%s: ignoring member %s: %s", repo.name, info.name, exc)
        return peers

    def _follow_worktree(self, target: str, mode: UpdateMode) -> None:
        store = self.repository.store
        main = store.main()
        if main == target:
            return
        try:
            saved = store.advance_from(main, target, force=mode is UpdateMode.ALWAYS)
        except (InvalidChange, RepositoryError) as exc:
            # The applied version does not depend on the working copy.
            logger.warning("%s: working copy not moved: %s", self.repository.name, exc)
            return
        if saved:
            logger.warning(
                "%s: uncommitted edits saved as stash %s before moving to %s",
                self.repository.name,
                saved[:12],
                target[:12],
            )

    def _run_hooks(self, view: ConfigView) -> str:
        errors = []
        for hook in list(self._hooks):
            try:
                hook(view)
            except Exception as exc:
                logger.exception("reload hook %r failed", hook)
                errors.append(f"reload hook {getattr(hook, '__name__', hook)!s} failed: {exc}")
        return "; ".join(errors)

    def _write_report(self, report: NodeReport) -> None:
        # Rewrite only when something but the time changed: a timer pass
        # must not turn into a ZooKeeper write every second on every node.
        key = attrs.evolve(report, time=0.0).to_json()
        if key != self._reported:
            repo = self.repository
            znodes = repo.znodes()
            path = applied_path(repo.name, repo.node)
            data = report.to_json()
            if znodes.set(path, data) is None:
                znodes.create(path, data, makepath=True)
            self._reported = key
        self._last_report = report

    def _finish(self, outcome: ApplyOutcome, mode: UpdateMode) -> ApplyOutcome:
        repo = self.repository
        report = NodeReport(
            node=repo.node,
            sha=outcome.sha,
            state=outcome.state,
            target=outcome.target,
            error=outcome.error,
            mode=mode,
            time=time.time(),
            holds=self._holds,
        )
        self._write_report(report)
        with self._cond:
            self._outcome = outcome
            self._cond.notify_all()
        return outcome
