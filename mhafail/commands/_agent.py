"""CommandAgent: a node runs the registered commands managers ask it to, once each.

For every request that names this node the agent, on its own loop thread:

1. reads and checks the request (malformed: skipped and reported);
2. answers at once, without running anything, when it already answered,
   when it took the request before (a durable local marker or its claim
   znode exists: ``abandoned``), when the request is cancelled or expired,
   or when the command is unknown, not allowed for the requester's role,
   or its arguments fail the schema (``refused``);
3. otherwise, only while the coordinator's lease is valid, writes the
   run-once markers of every request it takes in this pass (one append,
   one ``fdatasync``), creates their claim znodes (pipelined), and runs
   each handler on a thread of its own with the request's deadline and
   output cap;
4. appends ``started`` and the outcome to the audit jlog and creates its
   reply znode (retried until ZooKeeper takes it); an output too large for
   ZooKeeper waits on the node's reply channel (see ``_outputs``).

A new request costs a node three ZooKeeper requests: the list that
re-arms the folder's watch (``_feed``), reading the request, and one
transaction for the claims of a pass, overlapped with the marker's sync,
before the handler starts; one transaction after (the reply, ``_answers``).
Requests that were there when the process started are also checked for an
earlier process's claim and reply. One process per node name and state
directory.

A request therefore runs at most once per node: the marker is on disk
before the handler starts, and a node never runs a request whose marker
or claim exists. Without a valid lease the agent starts nothing and
cancels what runs (safety rule 5).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from mhafail.channel import ChannelSecurity
from mhafail.commands._answers import Answers, Tracer
from mhafail.commands._feed import RequestFeed
from mhafail.commands._journal import AuditJournal, Markers
from mhafail.commands._model import (
    Reply,
    ReplyStatus,
    Request,
    claim_path,
    reply_path,
    request_path,
)
from mhafail.commands._outputs import OutputStore
from mhafail.commands._registry import Command, CommandContext, Handler, Registry
from mhafail.commands._runner import AgentStats, Outcome, Run, Watchdog, call_handler
from mhafail.commands._schema import Arg, Schema
from mhafail.commands._taking import take
from mhafail.coordination import ConvergeLoop, Coordinator, LeaseState, Znodes, check_name
from mhafail.errors import (
    CommandError,
    CommandInvalidArgument,
    CoordinationError,
    MalformedData,
)

logger = logging.getLogger(__name__)

ReplyListener = Callable[[Reply], None]


def _path(value: str | os.PathLike[str]) -> Path:
    return Path(value)


@attrs.define(kw_only=True, eq=False)
class CommandAgent:
    """Runs registered commands that managers send to this node.

    Args:
        coordinator: a started coordinator (node or operator credentials).
        node: this node's name, as registered in membership.
        state_dir: where the run-once markers live (``<state_dir>/markers``);
            must survive restarts.
        audit_log: the audit jlog directory (default ``<state_dir>/commands.jlog``).
        allow: requester role (``operator``) or ``user:NAME`` -> command-name
            globs it may run; default: operators may run everything.
        max_running: handlers allowed at once; more requests wait.
        period: seconds between passes when no watch fires.
        marker_keep: seconds a marker is kept after its request is gone.
        prune_period: seconds between clean-ups of old markers and of
            stored outputs past their request's ``keep_until``.
        stop_timeout: the longest :meth:`stop` waits for handlers and ZooKeeper.
        clock: wall clock for expiry (``time.time``).
        channel: with it, outputs over 64 KiB (up to the request's
            ``max_output``) go by the reply channel: stored in
            ``<state_dir>/outputs`` and served on ``channel_listen`` to
            managers that pass this security (the cluster's shared secret
            or mutual TLS). Without it they are cut to 64 KiB.
        channel_listen: ``host:port`` of the reply channel (port 0: any).
        channel_advertise: ``host:port`` replies name (default: the bound one).
        trace: called at each step of each request (benchmarks, debugging;
            must not block).

    Thread safety: register commands before :meth:`start`; the rest may be
    called from any thread. Handlers run on threads of their own.
    """

    coordinator: Coordinator
    node: str = attrs.field(validator=lambda _, __, v: check_name("node name", v))
    state_dir: Path = attrs.field(converter=_path)
    audit_log: Path | None = attrs.field(default=None, converter=attrs.converters.optional(_path))
    allow: Mapping[str, Sequence[str]] = attrs.field(factory=lambda: {"operator": ("*",)})
    max_running: int = 16
    period: float = 2.0
    marker_keep: float = 7 * 86400.0
    prune_period: float = 60.0
    stop_timeout: float = 2.0
    clock: Callable[[], float] = time.time
    channel: ChannelSecurity | None = None
    channel_listen: str = "127.0.0.1:0"
    channel_advertise: str | None = None
    trace: Tracer | None = None

    _registry: Registry = attrs.field(init=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _loop: ConvergeLoop | None = attrs.field(init=False, default=None)
    _feed: RequestFeed | None = attrs.field(init=False, default=None)
    _markers: Markers | None = attrs.field(init=False, default=None)
    _journal: AuditJournal | None = attrs.field(init=False, default=None)
    _outputs: OutputStore | None = attrs.field(init=False, default=None)
    _answers: Answers | None = attrs.field(init=False, default=None)
    _watchdog: Watchdog | None = attrs.field(init=False, default=None)
    _running: dict[str, Run] = attrs.field(init=False, factory=dict)
    _done: set[str] = attrs.field(init=False, factory=set)
    _counts: dict[str, int] = attrs.field(init=False, factory=dict)
    _listeners: list[ReplyListener] = attrs.field(init=False, factory=list)
    _stopping: bool = attrs.field(init=False, default=False)
    _last_prune: float = attrs.field(init=False, default=0.0)
    _initial: set[str] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if self.max_running < 1:
            raise CommandInvalidArgument("max_running must be at least 1")
        self._registry = Registry(allow=self.allow)

    # --- registration ---------------------------------------------------------

    def register(
        self,
        name: str,
        handler: Handler,
        schema: Schema | Sequence[Arg] = (),
        *,
        roles: Sequence[str] = ("operator",),
        help: str = "",
    ) -> Command:
        """Register ``handler(ctx, args)`` as command ``name``.

        Raises:
            CommandInvalidArgument: a bad or taken name, or a bad schema.
        """
        if not isinstance(schema, Schema):
            schema = Schema(args=tuple(schema))
        command = Command(
            name=name, handler=handler, schema=schema, roles=frozenset(roles), help=help
        )
        self._registry.add(command)
        return command

    def command(
        self,
        name: str,
        schema: Schema | Sequence[Arg] = (),
        *,
        roles: Sequence[str] = ("operator",),
        help: str = "",
    ) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def decorate(handler: Handler) -> Handler:
            self.register(name, handler, schema, roles=roles, help=help)
            return handler

        return decorate

    def commands(self) -> list[Command]:
        """The registered commands, sorted by name."""
        return list(self._registry.commands())

    def add_listener(self, listener: ReplyListener) -> None:
        """Call ``listener(reply)`` after each reply is written (agent threads; must not block)."""
        self._listeners.append(listener)

    @property
    def stats(self) -> AgentStats:
        """Counters since start."""
        with self._lock:
            c = self._counts
            return AgentStats(
                ran=c.get("ran", 0),
                answered=c.get("answered", 0),
                refused=c.get("refused", 0),
                malformed=c.get("malformed", 0),
                running=len(self._running),
            )

    # --- life cycle -------------------------------------------------------------

    def start(self) -> CommandAgent:
        """Open the markers and audit jlog, start the reply channel and take requests.

        Raises:
            CommandError: the state directory or audit jlog cannot be used.
            ChannelError: the reply channel cannot listen (see ``Listener.start``).
        """
        if self._loop is not None:
            raise CommandError("command agent already started")
        self._markers = Markers(self.state_dir / "markers")
        self._journal = AuditJournal(self.audit_log or self.state_dir / "commands.jlog")
        if self.channel is not None:
            try:
                self._outputs = OutputStore(
                    self.state_dir / "outputs",
                    self.channel,
                    listen=self.channel_listen,
                    advertise=self.channel_advertise,
                ).start()
            except BaseException:
                self._journal.close()
                self._markers.close()
                raise
        self._answers = Answers(self.node, self._journal, self._outputs, self.clock, self.trace)
        self._watchdog = Watchdog(
            f"mhafail-command-watchdog-{self.node}", self._settle, self._watch_cancel
        )
        self._loop = ConvergeLoop(f"mhafail-commands-{self.node}", self._pass, period=self.period)
        self._feed = RequestFeed(self._znodes, self._loop.kick, self.period)
        self.coordinator.add_lease_listener(self._on_lease)
        self.coordinator.add_session_listener(self._on_session)
        self._loop.start()
        return self

    def stop(self) -> None:
        """Cancel running handlers, send what can be sent, stop; bounded by ``stop_timeout``."""
        if self._loop is None or self._stopping:
            return
        end = time.monotonic() + self.stop_timeout
        self._stopping = True
        if self._feed is not None:
            self._feed.reset()
        self._loop.stop(timeout=max(0.1, self.stop_timeout / 2))
        self._cancel_all("the agent is stopping")
        # The watchdog answers for every cancelled run; wait for those replies.
        self.wait_idle(max(0.0, end - time.monotonic()))
        if self._watchdog is not None:
            self._watchdog.stop(max(0.1, end - time.monotonic()))
        if self._journal is not None:
            self._journal.close()
        if self._markers is not None:
            self._markers.close()
        if self._outputs is not None:
            self._outputs.stop()

    @property
    def channel_endpoint(self) -> str | None:
        """``host:port`` the reply channel serves (None: no channel, or not started)."""
        return None if self._outputs is None else self._outputs.endpoint

    def wait_idle(self, timeout: float) -> bool:
        """Block until no handler runs and no reply waits to be sent; False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            unsent = self._answers.unsent() if self._answers is not None else set()
            with self._lock:
                if not self._running and not unsent:
                    return True
            time.sleep(0.01)
        return False

    # --- events -------------------------------------------------------------------

    def _on_lease(self, state: LeaseState) -> None:
        if state is LeaseState.EXPIRED:
            # Fail closed: nothing runs on the strength of a session we may have lost.
            self._cancel_all("coordination with ZooKeeper was lost")
        elif self._loop is not None:
            self._loop.kick()

    def _on_session(self, _session: int) -> None:
        if self._feed is not None:
            self._feed.reset()  # watches do not survive a session: arm new ones
        if self._loop is not None:
            self._loop.kick()

    def _cancel_all(self, reason: str) -> list[Run]:
        with self._lock:
            runs = list(self._running.values())
        for run in runs:
            self._cancel(run, reason)
        return runs

    def _cancel(self, run: Run, reason: str) -> None:
        if run.cancel(reason) and self._watchdog is not None:
            self._watchdog.poke(run)

    def _znodes(self) -> Znodes:
        z = self.coordinator.znodes
        return z.bounded(min(z.timeout, 1.0)) if self._stopping else z

    # --- one pass -------------------------------------------------------------------

    def _pass(self) -> None:
        began = time.monotonic()
        if self._stopping or self._feed is None or self._answers is None:
            return
        if not self.coordinator.lease_valid():
            self._cancel_all("coordination with ZooKeeper was lost")
            return
        for reply in self._answers.flush(self._znodes()):
            self._written(reply)
        names, fresh = self._feed.names()
        if names is None:
            return  # no list yet: the watch's first one starts a pass
        live = set(names)
        if self._initial is None:
            self._initial = live
        unsent = self._answers.unsent()
        with self._lock:
            if fresh:
                self._done &= live
            running = dict(self._running)
            busy = self._done | set(running) | unsent
        todo = [n for n in names if n not in busy]
        mine, docs = self._read_requests(todo, running, began)
        if mine:
            self._consider_all(mine, docs)
        self._prune(live)

    def _read_requests(
        self, todo: list[str], running: Mapping[str, Run], began: float
    ) -> tuple[list[Request], dict[str, Any]]:
        """Read new and running requests; cancel what was cancelled or deleted; return this
        node's new ones."""
        assert self._initial is not None
        watched = list(running)
        # One pipelined round trip: the new requests and the running ones,
        # with this node's claim and reply for requests that were there
        # when this process started (an earlier process of this node may
        # have taken or answered them). Later ones were never seen by an
        # earlier process; the claim's create still refuses a second taker.
        inherited = [n for n in todo if n in self._initial]
        paths = [request_path(n) for n in todo + watched]
        paths += [claim_path(n, self.node) for n in inherited]
        paths += [reply_path(n, self.node) for n in inherited]
        docs = self.coordinator.znodes.get_many(paths) if paths else {}
        mine: list[Request] = []
        for rid in watched:
            if docs.get(request_path(rid)) is None:
                self._cancel(running[rid], "the request was deleted")
        for rid in todo + watched:
            request = self._read(rid, docs.get(request_path(rid)))
            if request is None:
                continue
            if rid in running:
                if request.cancelled:
                    self._cancel(running[rid], "cancelled by the requester")
            elif self.node in request.nodes:
                self._trace("pass", rid, began)
                self._trace("seen", rid)
                mine.append(request)
            else:
                with self._lock:
                    self._done.add(rid)
        return mine, docs

    def _read(self, rid: str, znode: Any) -> Request | None:
        if znode is None:
            return None
        try:
            request = Request.from_json(znode.data, what=f"command request {rid}")
            if request.id != rid:
                raise MalformedData(f"command request {rid} carries the id {request.id}")
        except MalformedData as exc:
            # Shared data: skip it, report it once, never fail the pass.
            logger.warning("skipping request %s: %s", rid, exc)
            with self._lock:
                self._counts["malformed"] = self._counts.get("malformed", 0) + 1
                self._done.add(rid)
            return None
        return request

    def _consider_all(self, requests: list[Request], docs: Mapping[str, Any]) -> None:
        assert self._markers is not None
        ready: list[tuple[Request, Command, dict[str, Any]]] = []
        for request in requests:
            rid = request.id
            if docs.get(reply_path(rid, self.node)) is not None:
                with self._lock:
                    self._done.add(rid)
                continue
            if docs.get(claim_path(rid, self.node)) is not None or self._markers.exists(rid):
                # Taken before (an earlier process of this node): never again.
                self._answer(
                    request,
                    ReplyStatus.ABANDONED,
                    "this node took the request before (crash, restart or lost "
                    "coordination) and does not run it again",
                )
                continue
            checked = self._check(request)
            if checked is not None:
                ready.append((request, *checked))
        with self._lock:
            room = self.max_running - len(self._running)
        if len(ready) > room:
            ready = ready[: max(0, room)]  # the rest wait for a free slot
            if self._loop is not None:
                self._loop.kick_after(0.05)
        if ready and self.coordinator.lease_valid() and not self._stopping:
            self._take_and_launch(ready)

    def _check(self, request: Request) -> tuple[Command, dict[str, Any]] | None:
        """The command and checked arguments, or None after answering why not."""
        if request.cancelled:
            self._answer(request, ReplyStatus.CANCELLED, "cancelled before it ran")
            return None
        if self.clock() > request.expires:
            self._answer(
                request, ReplyStatus.EXPIRED, "the request expired before this node saw it"
            )
            return None
        try:
            return self._registry.check(request)
        except CommandInvalidArgument as exc:
            self._count("refused")
            self._answer(request, ReplyStatus.REFUSED, str(exc))
            return None

    def _take_and_launch(self, ready: list[tuple[Request, Command, dict[str, Any]]]) -> None:
        """Claim and mark a batch at once (see ``_taking``); run what both took."""
        assert self._markers is not None
        ids = [r.id for r, _, _ in ready]
        try:
            taken = take(self.coordinator.znodes, self._markers, self.node, ids, self.clock())
        except CommandError as exc:
            logger.error("not running %d requests: %s", len(ids), exc)
            return  # no marker: not run; claims that landed: answered abandoned later
        except CoordinationError as exc:
            # The markers stay: whether or not the claims landed, these never run now.
            logger.warning("%d claims failed (%s); those requests will not run", len(ids), exc)
            return
        for request, command, args in ready:
            self._trace("marked", request.id)
            self._trace("claimed", request.id)
            if request.id in taken.run:
                self._launch(request, command, args)
            elif request.id in taken.marked_before:
                self._answer(request, ReplyStatus.ABANDONED, "taken before; not run again")
            else:
                self._answer(
                    request,
                    ReplyStatus.ABANDONED,
                    "another process claimed it under this node's name",
                )

    def _launch(self, request: Request, command: Command, args: dict[str, Any]) -> None:
        ctx = CommandContext(
            request=request, node=self.node, deadline=time.monotonic() + request.timeout
        )
        run = Run(request=request, ctx=ctx)
        run.thread = threading.Thread(
            target=self._run,
            args=(run, command, args),
            name=f"mhafail-command-{request.id}",
            daemon=True,  # a handler that ignores cancellation must not block exit
        )
        with self._lock:
            self._running[request.id] = run
            self._counts["ran"] = self._counts.get("ran", 0) + 1
        run.thread.start()
        if self._watchdog is not None:
            self._watchdog.watch(run)

    def _watch_cancel(self, run: Run) -> None:
        # Only handlers still running after a first wait get a watch: a
        # quick command is done before a cancel could matter, and a watch
        # per request would cost every node a round trip and a pass.
        loop = self._loop
        if loop is None:
            return
        first = [True]

        def changed(_path: str) -> None:
            if first:
                first.clear()  # the call at registration: nothing changed yet
            else:
                loop.kick()

        try:
            run.watch = self.coordinator.znodes.watch_changes(request_path(run.request.id), changed)
        except CoordinationError:
            logger.info("request %s: no watch; cancels are seen within a period", run.request.id)

    def _run(self, run: Run, command: Command, args: dict[str, Any]) -> None:
        assert self._answers is not None
        run.started = self.clock()
        self._answers.audit(run.request, "started", args=args)
        self._trace("started", run.request.id)
        outcome = call_handler(run, command, args)
        self._trace("done", run.request.id)
        self._settle(run, outcome)

    def _settle(self, run: Run, outcome: Outcome) -> None:
        """Send the run's one reply, unless the watchdog or the handler's thread already did."""
        assert self._answers is not None
        with self._lock:
            if run.settled:
                return
            run.settled = True
        if run.watch is not None:
            run.watch.cancel()
        self._send(run.request, self._answers.outcome(run.request, outcome, run.started))

    # --- answers ----------------------------------------------------------------

    def _answer(self, request: Request, status: ReplyStatus, error: str) -> None:
        assert self._answers is not None
        self._send(request, self._answers.refusal(request, status, error))

    def _send(self, request: Request, reply: Reply) -> None:
        """Audit, then write the reply; one the loop retries if ZooKeeper does not take it.

        A running request stays in ``_running`` until its reply is written
        or queued, so no pass sees it as new in between.
        """
        answers = self._answers
        assert answers is not None
        answers.audit(request, reply.status.value, error=reply.error)
        # Without a lease ZooKeeper is likely out of reach: queue it rather
        # than hold the caller (often the watchdog) for a request timeout.
        sent = self.coordinator.lease_valid() and answers.write(self._znodes(), reply)
        if not sent:
            answers.queue(reply)
        with self._lock:
            self._running.pop(reply.id, None)
        if sent:
            self._written(reply)
        elif self._loop is not None and not self._stopping:
            self._loop.kick_after(0.5)

    def _written(self, reply: Reply) -> None:
        with self._lock:
            self._done.add(reply.id)
            self._counts["answered"] = self._counts.get("answered", 0) + 1
        for listener in list(self._listeners):
            try:
                listener(reply)
            except Exception:
                logger.exception("reply listener %r failed", listener)

    def _trace(self, step: str, rid: str, at: float | None = None) -> None:
        if self._answers is not None:
            self._answers.trace(step, rid, at)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def _prune(self, live: set[str]) -> None:
        now = time.monotonic()
        if now - self._last_prune < self.prune_period or self._markers is None:
            return
        self._last_prune = now
        self._markers.prune(live, self.marker_keep)
        if self._outputs is not None:
            self._outputs.prune(self.clock())
