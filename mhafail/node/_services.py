"""NodeServices: every mhafail component a cluster node runs, started and stopped as one.

An MTA node wires the same pieces in the same order every time: a
coordinator, its node-name binding on the shared storage, the jlog service
(with a ``JlogHandler`` per log), the cluster audit, a config repository
with its git daemon, the membership (last of the services: it publishes
their endpoints), the config agent, the spool lock, spool and takeover,
and DuraVIP. :class:`NodeServices` does that from one :class:`NodeSettings`
and stops them in the reverse order, each step bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs

from mhafail.audit import AuditSeries, ClusterAudit
from mhafail.channel import read_secret_file
from mhafail.config import (
    ConfigAgent,
    ConfigRepository,
    ConfigView,
    GitDaemon,
    Validator,
    syntax_check,
)
from mhafail.coordination import Coordinator, Credentials, Membership, NodeInfo
from mhafail.errors import InvalidArgument, MhafailError
from mhafail.jlog import JlogHandler
from mhafail.logs import JlogService
from mhafail.node._settings import NodeSettings
from mhafail.spool import LockState, NodePaths, Spool, SpoolLock, Takeover, TakeoverEvent
from mhafail.vip import FenceProcess, NetlinkPlumber, Plumber, Vip, VipManager

logger = logging.getLogger(__name__)
T = TypeVar("T")


@attrs.define(kw_only=True, eq=False)
class NodeServices:
    """The node's mhafail components, wired and run together.

    Wiring::

        node = NodeServices(
            settings=NodeSettings.from_args(args), roles=("mta",), config_repo="mta",
            validators=(syntax_check, check_settings), logs={"mainlog": mainlog},
            series=[conn],
        )
        node.on_config(reload)  # the live version at start, then every applied one
        node.on_vip_acquire(lambda vip: ...)
        node.start()
        ... node.spool, node.lock, node.vips, node.coordinator ...
        node.stop()

    Args:
        settings: where ZooKeeper, the secrets, the storage and the VIPs are.
        roles: the node's roles in its ``NodeInfo``.
        config_repo: the replicated config repository to follow (None: none;
            then ``settings.config_dir`` is not needed).
        validators: the checks every new config version passes before it
            goes live (and that :attr:`repo` applies to commits made here).
        logs: jlog name -> logger: each jlog is created under the node's
            log directory, served to ``settings.managers``, and the logger
            gets a :class:`~mhafail.jlog.JlogHandler` (level INFO) writing it.
        log_format: the handlers' format, ``json`` or ``text``.
        series: audit series made cluster-wide (``ClusterAudit``, listening
            on ``settings.address``); none: no audit.
        with_spool: run the spool lock (re-acquired automatically after a
            fencing), the spool and the takeover of dead nodes' spools.
        lock_timeout: how long :meth:`start` waits for the spool lock
            (a survivor may be importing this node's old spool).
        fence: run a fence process with the netlink plumber (docs/vip.md).

    Start order: binding, coordinator, jlogs, audit, config repository and
    git daemon, membership, config agent (hooks first hear the live
    version), spool lock, spool, takeover, DuraVIP. Stop order: the
    reverse, each step bounded (DuraVIP hands its VIPs over first); with
    ZooKeeper gone a stop still ends within a few seconds.

    Failure behaviour: settings problems (secret or credentials file,
    VIP specs, names) raise before anything starts; a failure during
    :meth:`start` stops whatever was started and re-raises. Listeners must
    not block: config hooks run on the agent's thread, VIP callbacks on
    the VIP manager's event thread, lock listeners on the lease thread.

    Raises:
        InvalidArgument: ``config_repo`` without ``settings.config_dir``, or
            ``log_format`` is not ``json`` or ``text``.
    """

    settings: NodeSettings
    roles: Sequence[str] = ()
    config_repo: str | None = None
    validators: Sequence[Validator] = (syntax_check,)
    logs: Mapping[str, logging.Logger] = attrs.field(factory=dict)
    log_format: Literal["json", "text"] = "json"
    series: Sequence[AuditSeries] = ()
    with_spool: bool = True
    lock_timeout: float = 60.0
    fence: bool = True

    _config_hooks: list[Callable[[ConfigView], None]] = attrs.field(init=False, factory=list)
    _acquire: list[Callable[[Vip], None]] = attrs.field(init=False, factory=list)
    _release: list[Callable[[Vip], None]] = attrs.field(init=False, factory=list)
    _lock_listeners: list[Callable[[LockState], None]] = attrs.field(init=False, factory=list)
    _takeover_listeners: list[Callable[[TakeoverEvent], None]] = attrs.field(
        init=False, factory=list
    )
    _parts: dict[str, Any] = attrs.field(init=False, factory=dict)
    _handlers: list[tuple[logging.Logger, JlogHandler]] = attrs.field(init=False, factory=list)
    _stops: list[tuple[str, Callable[[], object]]] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        if self.config_repo is not None and self.settings.config_dir is None:
            raise InvalidArgument(f"config repository {self.config_repo!r} needs a config_dir")
        if self.log_format not in ("json", "text"):
            raise InvalidArgument(f"log_format {self.log_format!r}: use json or text")

    # --- listeners (add them before start) -------------------------------------

    def on_config(self, hook: Callable[[ConfigView], None]) -> None:
        """Call ``hook(view)`` with the live config at start, then each applied version."""
        self._config_hooks.append(hook)

    def on_vip_acquire(self, callback: Callable[[Vip], None]) -> None:
        """Call ``callback(vip)`` after this node plumbed a VIP."""
        self._acquire.append(callback)

    def on_vip_release(self, callback: Callable[[Vip], None]) -> None:
        """Call ``callback(vip)`` after this node removed a VIP."""
        self._release.append(callback)

    def on_lock(self, listener: Callable[[LockState], None]) -> None:
        """Call ``listener(state)`` on every spool lock state change."""
        self._lock_listeners.append(listener)

    def on_takeover(self, listener: Callable[[TakeoverEvent], None]) -> None:
        """Call ``listener(event)`` for every takeover event of this node."""
        self._takeover_listeners.append(listener)

    # --- the components (after start) -----------------------------------------

    def _part(self, name: str, kind: type[T]) -> T:
        part = self._parts.get(name)
        if not isinstance(part, kind):
            raise InvalidArgument(f"node services: no {name} (not started, or not configured)")
        return part

    @property
    def name(self) -> str:
        """This node's name."""
        return self.settings.node

    @property
    def paths(self) -> NodePaths:
        """This node's directories on the shared storage."""
        return self.settings.paths

    @property
    def coordinator(self) -> Coordinator:
        """The node's coordinator."""
        return self._part("coordinator", Coordinator)

    @property
    def membership(self) -> Membership:
        """The node's membership."""
        return self._part("membership", Membership)

    @property
    def jlogs(self) -> JlogService:
        """The jlog service (serves ``logs`` to the managers)."""
        return self._part("jlogs", JlogService)

    @property
    def audit(self) -> ClusterAudit:
        """The cluster audit (when ``series`` were given)."""
        return self._part("audit", ClusterAudit)

    @property
    def repo(self) -> ConfigRepository:
        """The config repository (when ``config_repo`` was given)."""
        return self._part("repo", ConfigRepository)

    @property
    def agent(self) -> ConfigAgent:
        """The config agent (when ``config_repo`` was given)."""
        return self._part("agent", ConfigAgent)

    @property
    def lock(self) -> SpoolLock:
        """The spool lock (``with_spool=True``)."""
        return self._part("lock", SpoolLock)

    @property
    def spool(self) -> Spool:
        """The spool (``with_spool=True``)."""
        return self._part("spool", Spool)

    @property
    def takeover(self) -> Takeover:
        """The takeover of dead nodes' spools (``with_spool=True``)."""
        return self._part("takeover", Takeover)

    @property
    def vips(self) -> VipManager:
        """The VIP manager."""
        return self._part("vips", VipManager)

    # --- life cycle --------------------------------------------------------------

    def start(self) -> NodeServices:
        """Start every component in order (see the class docstring).

        Raises:
            MhafailError: whatever a component raised (each names its
                problem); what was started is stopped again.
        """
        if self._parts:
            return self
        s = self.settings
        secret = None if s.secret_file is None else read_secret_file(s.secret_file)
        credentials = None if s.zk_auth is None else Credentials.from_file(s.zk_auth)
        plumber = self._plumber()  # refuses a bad fake:PATH before anything runs
        try:
            self._start(secret, credentials, plumber)
        except BaseException:
            self.stop()
            raise
        return self

    def _started(self, name: str, part: T, stop: Callable[[], object]) -> T:
        self._parts[name] = part
        self._stops.append((name, stop))
        return part

    def _start(self, secret: bytes | None, credentials: Credentials | None, plumber: Any) -> None:
        s = self.settings
        binding = s.paths.bind()
        self._started("binding", binding, binding.close)
        coordinator = Coordinator(
            hosts=s.zk, cluster=s.cluster, session_timeout=s.session_timeout,
            credentials=credentials, open_acl=s.open_acl,
        ).start()  # fmt: skip
        self._started("coordinator", coordinator, coordinator.stop)
        endpoints: dict[str, str] = {}
        if self.logs:
            paths = {name: s.paths.logs / name for name in self.logs}
            # Any: mypy's attrs plugin cannot type a field with converter=tuple.
            managers: Any = s.managers
            jlogs = JlogService(
                node=s.node, logs=paths, managers=managers, host=s.address, secret=secret
            ).start()
            self._started("jlogs", jlogs, jlogs.stop)
            endpoints["jlog"] = jlogs.endpoint
            for name, log in self.logs.items():
                handler = JlogHandler(paths[name], format=self.log_format)
                log.addHandler(handler)
                log.setLevel(min(log.level or logging.INFO, logging.INFO))
                self._handlers.append((log, handler))
            self._stops.append(("log handlers", self._close_handlers))
        audit: ClusterAudit | None = None
        if self.series:
            started = ClusterAudit(
                node=s.node, series=list(self.series), listen=f"{s.address}:0", secret=secret
            ).start()
            audit = self._started("audit", started, lambda: started.stop(flush_timeout=0.5))
            endpoints |= started.endpoints()
        if self.config_repo is not None:
            assert s.config_dir is not None  # checked in __attrs_post_init__
            repo = ConfigRepository(
                name=self.config_repo, base=s.config_dir, node=s.node,
                coordinator=coordinator, validators=tuple(self.validators),
            ).init()  # fmt: skip
            self._parts["repo"] = repo
            git = GitDaemon(base=s.config_dir, host=s.address).start()
            self._started("git", git, git.stop)
            endpoints["git"] = git.endpoint
        info = NodeInfo(
            name=s.node, addresses=[s.address], roles=tuple(self.roles), endpoints=endpoints
        )
        membership = Membership(coordinator=coordinator, info=info).start()
        self._started("membership", membership, membership.stop)
        if audit is not None:
            audit.follow(membership)  # share counts with every node and manager
        if self.config_repo is not None:
            self._start_agent(self.repo, membership)
        if self.with_spool:
            self._start_spool(coordinator, membership)
        self._start_vips(coordinator, membership, plumber)

    def _start_agent(self, repo: ConfigRepository, membership: Membership) -> None:
        agent = ConfigAgent(
            repository=repo, membership=membership, validators=tuple(self.validators)
        )
        for hook in self._config_hooks:
            agent.add_reload_hook(hook)
        if (live := repo.view()) is not None:
            for hook in self._config_hooks:  # the version we ran before a restart
                hook(live)
        self._started("agent", agent.start(), agent.stop)

    def _start_spool(self, coordinator: Coordinator, membership: Membership) -> None:
        s = self.settings
        lock = SpoolLock(coordinator=coordinator, paths=s.paths, reacquire=True)
        for listener in self._lock_listeners:
            lock.add_listener(listener)
        lock.acquire(timeout=self.lock_timeout)  # waits while a survivor imports our spool
        self._started("lock", lock, lock.release)
        spool = Spool(directory=s.paths.spool, node=s.node, fence=lock).open()
        self._started("spool", spool, spool.close)
        takeover = Takeover(
            coordinator=coordinator, membership=membership, paths=s.paths,
            spool=spool, lock=lock, grace=s.grace, step=0.5,
        )  # fmt: skip
        for on_event in self._takeover_listeners:
            takeover.add_listener(on_event)
        self._started("takeover", takeover.start(), takeover.stop)

    def _start_vips(self, coordinator: Coordinator, membership: Membership, plumber: Any) -> None:
        s = self.settings
        real = isinstance(plumber, NetlinkPlumber)
        fence = FenceProcess(coordinator.lease_deadline) if real and self.fence else None
        manager = VipManager(
            coordinator=coordinator, membership=membership, plumber=plumber,
            vips=list(s.vips), fence=fence, validate_host=real, rebalance=s.rebalance,
        )  # fmt: skip
        for callback in self._acquire:
            manager.on_acquire(callback)
        for callback in self._release:
            manager.on_release(callback)
        self._started("vips", manager.start(), manager.stop)

    def _plumber(self) -> Plumber:
        s = self.settings
        if s.plumber == "netlink":
            return NetlinkPlumber()
        from mhafail.testing import FakeNetwork, FakePlumber  # only tests and demos need it

        interfaces: dict[str, list[str]] = {}
        for vip in s.vips:
            networks = interfaces.setdefault(vip.interface, [])
            if str(vip.network) not in networks:
                networks.append(str(vip.network))
        plumber: Plumber = FakePlumber(FakeNetwork(path=s.plumber[5:]), s.node, interfaces)
        return plumber

    def _close_handlers(self) -> None:
        for log, handler in self._handlers:
            log.removeHandler(handler)
            handler.close()
        self._handlers.clear()

    def stop(self) -> None:
        """Stop everything started, in the reverse order; each step bounded, none raises.

        DuraVIP goes first (every VIP handed over, a survivor claims at
        once), then the takeover, the spool (lock released), the agent,
        git, membership, audit, log handlers, jlog service, coordinator and
        the node-name binding. A step that fails is logged and skipped.
        """
        while self._stops:
            name, stop = self._stops.pop()
            try:
                stop()
            except (MhafailError, OSError) as exc:
                logger.warning("node services: stopping %s failed: %s", name, exc)
            except Exception:  # a bug in one component must not leave the rest running
                logger.exception("node services: stopping %s failed", name)
        self._parts.clear()
