"""A ready-made nemesis lab: three agents, a client, a 3-server ensemble, monitor, observer."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import attrs

from mhafail.testing._cluster import EventProcess
from mhafail.testing._netns import NetnsLab
from mhafail.testing._zookeeper import ZooKeeperEnsemble, ZooKeeperServer
from mhafail.testing.nemesis._arp import ArpObserver
from mhafail.testing.nemesis._monitor import OverlapMonitor
from mhafail.testing.nemesis._runner import Nemesis, normal
from mhafail.testing.nemesis._schedule import FaultSchedule

DEFAULT_VIPS = ("198.18.0.200/24@eth0", "2001:db8::200/64@eth0")
BRIDGE = "198.18.0.1"


@attrs.define(kw_only=True, eq=False)
class NemesisLab:
    """Namespaces, ZooKeeper, agents, monitor and observer, ready for a :class:`Nemesis`.

    Args:
        nodes: how many agent nodes (``h1``...).
        vips: VIP specs given to every agent (``ADDRESS/PREFIX@IFACE``).
        session_timeout: the agents' ``--session-timeout``.
        zk_servers: 3 for an ensemble (``zk-kill`` needs it), 1 for a single server.
        tick_time: ZooKeeper ``tickTime`` in ms (sessions up to 20 ticks).
        agent_args: extra ``mhafail agent`` arguments.
        workdir: where ZooKeeper data and agent logs go (default: a temp dir,
            removed on close unless ``keep``).
        observe: run the ARP observer from the client host ``c1``.

    Root and ZooKeeper only. Use as a context manager.
    """

    nodes: int = 3
    vips: tuple[str, ...] = DEFAULT_VIPS
    session_timeout: float = 1.0
    zk_servers: int = 3
    tick_time: int = 100
    agent_args: tuple[str, ...] = ()
    workdir: Path | None = None
    keep: bool = False
    observe: bool = True
    cluster: str = "nemesis"
    netns: NetnsLab = attrs.field(init=False)
    servers: list[ZooKeeperServer] = attrs.field(init=False, factory=list)
    agents: dict[str, EventProcess] = attrs.field(init=False, factory=dict)
    monitor: OverlapMonitor | None = attrs.field(init=False, default=None)
    observer: ArpObserver | None = attrs.field(init=False, default=None)
    _ensemble: ZooKeeperEnsemble | None = attrs.field(init=False, default=None)
    _own_workdir: bool = attrs.field(init=False, default=False)

    @property
    def names(self) -> list[str]:
        """The node names."""
        return [f"h{i}" for i in range(1, self.nodes + 1)]

    @property
    def addresses(self) -> tuple[str, ...]:
        """The VIP addresses without prefix or interface."""
        return tuple(normal(v) for v in self.vips)

    @property
    def zk_hosts(self) -> str:
        """The connection string (reachable from the lab's namespaces)."""
        return ",".join(s.address for s in self.servers)

    def start(self) -> NemesisLab:
        """Build everything; the agents are started last, after the monitor."""
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="mha-nemesis-"))
            self._own_workdir = True
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        self.netns = NetnsLab(hosts=self.nodes, client=True, bridge_address=f"{BRIDGE}/24")
        try:
            self.netns.start()
            self._start_zookeeper()
            self.monitor = OverlapMonitor.for_lab(self.netns, self.names, self.addresses)
            if self.observe:
                macs = {self._mac(n): n for n in self.names}
                self.observer = ArpObserver(self.netns["c1"], self.addresses, macs=macs)
            for name in self.names:
                self.agents[name] = self._agent(name).start()
        except BaseException:
            self.close()
            raise
        return self

    def _start_zookeeper(self) -> None:
        assert self.workdir is not None
        if self.zk_servers >= 3:
            self._ensemble = ZooKeeperEnsemble(
                size=self.zk_servers, tick_time=self.tick_time, host=BRIDGE, netns=self.netns.lan
            )
            self.servers = self._ensemble.servers
            self._ensemble.start()
        else:
            server = ZooKeeperServer(
                tick_time=self.tick_time, host=BRIDGE, netns=self.netns.lan,
                workdir=self.workdir / "zk",
            )  # fmt: skip
            self.servers = [server]
            server.start()

    def _mac(self, name: str) -> str:
        return self.netns[name].run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()

    def _agent(self, name: str) -> EventProcess:
        assert self.workdir is not None
        argv = [
            sys.executable, "-m", "mhafail", "agent", "--zk", self.zk_hosts,
            "--cluster", self.cluster, "--node", name,
            "--session-timeout", str(self.session_timeout), "--claim-step", "0.05", "--events",
            "--zk-open",  # the lab's ZooKeeper is its own, throwaway one
        ]  # fmt: skip
        for vip in self.vips:
            argv += ["--vip", vip]
        argv += list(self.agent_args)
        return EventProcess(
            argv,
            name=name,
            prefix=["ip", "netns", "exec", self.netns[name].netns],
            log_dir=self.workdir / "logs",
        )

    def schedule(self, seed: int, kinds: tuple[str, ...]) -> FaultSchedule:
        """The seeded schedule for this lab's shape."""
        return FaultSchedule(
            seed=seed,
            kinds=kinds,
            nodes=tuple(self.names),
            vips=self.addresses,
            zk_servers=len(self.servers),
            session_timeout=self.session_timeout,
        )

    def nemesis(self, **kwargs: Any) -> Nemesis:
        """A :class:`Nemesis` over this lab (keyword arguments pass through)."""
        assert self.monitor is not None
        kwargs.setdefault("session_timeout", self.session_timeout)
        return Nemesis(
            lab=self.netns,
            agents=self.agents,
            monitor=self.monitor,
            observer=self.observer,
            vips=self.addresses,
            zk_hosts=self.zk_hosts,
            cluster=self.cluster,
            zk_servers=self.servers,
            **kwargs,
        )

    def close(self) -> None:
        """Stop agents, monitor, observer, ZooKeeper and the namespaces. Idempotent."""
        for agent in self.agents.values():
            agent.kill()
        for watcher in (self.observer, self.monitor):
            if watcher is not None:
                watcher.close()
        if self._ensemble is not None:
            self._ensemble.cleanup()
        for server in self.servers:
            server.cleanup()
        if hasattr(self, "netns"):
            self.netns.close()
        if self._own_workdir and not self.keep and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> NemesisLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
