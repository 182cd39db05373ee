"""Simulated clusters: N nodes of any application command, in namespaces or on loopback.

:class:`SimulatedCluster` is what an application's end-to-end test needs
around its own daemon: a ZooKeeper server, a cluster created by an operator
with credentials (``mhafail init``), a shared secret for the logs and audit
ports, shared storage, and N node processes started from one command
template. As root each node runs in its own network namespace on a bridge
(real addresses, netlink, gratuitous ARP) and a client host ``c1`` is
there for test clients; otherwise every node runs on loopback with its own
127.0.0.x address and the fake plumber.

The command is an argv template; each node fills it with ``str.format``:

==================  ================================================
``{node}``          the node's name (``n1``, ``n2``...)
``{index}``         1, 2, 3...
``{address}``       the node's own address (198.18.0.11 / 127.0.0.11)
``{net}``           the first three octets (``198.18.0`` / ``127.0.0``)
``{prefix}``        the lab's prefix length (24 / 8)
``{interface}``     where VIPs go (``eth0`` / ``lo``)
``{plumber}``       ``netlink``, or ``fake:PATH`` with a shared record
``{zk}``            ZooKeeper's ``host:port``
``{cluster}``       the cluster name
``{node_auth}``     the node credentials file (mode 0600)
``{operator_auth}`` the operator credentials file
``{secret_file}``   the cluster's shared secret (mode 0600)
``{shared}``        the shared-storage directory (one for all nodes)
``{dir}``           the node's private directory
``{python}``        ``sys.executable``
==================  ================================================

Nodes are :class:`~mhafail.testing.EventProcess` objects: the command must
print one JSON event per line and an ``{"event": "ready"}`` once it serves.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs

from mhafail.coordination import Coordinator, Credentials, Role, write_credentials_pair
from mhafail.errors import TestingError
from mhafail.testing._children import spawn
from mhafail.testing._cluster import Event, EventProcess, is_ready
from mhafail.testing._netns import Host, NetnsLab, run_in_netns
from mhafail.testing._ports import unique_suffix
from mhafail.testing._zookeeper import ZooKeeperServer

T = TypeVar("T")


class SimNode(EventProcess):
    """One node of a :class:`SimulatedCluster`: an :class:`EventProcess` plus where it lives.

    Attributes:
        node: the node's name.
        address: its own address.
        directory: its private directory (its stderr goes to ``<node>-<n>.log`` there).
        host: its namespace host (None on loopback).
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        node: str,
        address: str,
        directory: Path,
        host: Host | None,
        log_dir: Path,
    ) -> None:
        prefix = ["ip", "netns", "exec", host.netns] if host is not None else []
        EventProcess.__init__(self, argv, name=node, prefix=prefix, log_dir=log_dir)
        self.node, self.address, self.directory, self.host = node, address, directory, host


@attrs.define(kw_only=True, eq=False)
class SimulatedCluster:
    """N nodes of one application command around a ZooKeeper, with credentials.

    Args:
        command: the argv template (see the module docstring).
        nodes: how many nodes (named ``n1``...).
        namespaces: run each node in a network namespace (root only);
            None: when running as root.
        cluster: the cluster name (default: a fresh one).
        tick_time: ZooKeeper's tickTime in ms (sessions of 2 to 20 ticks).
        config_repos: config repositories ``mhafail init`` prepares.
        workdir: where everything goes (default: a new temporary directory).
        ready: the start-up predicate of every node (default: a ``ready`` event).
        start_timeout: seconds a node may take to be ready.

    Use it as a context manager, or :meth:`start` and :meth:`close`.
    """

    command: Sequence[str]
    nodes: int = 3
    namespaces: bool | None = None
    cluster: str = attrs.field(factory=lambda: f"sim{unique_suffix()}")
    tick_time: int = 100
    config_repos: Sequence[str] = ()
    workdir: Path = attrs.field(
        factory=lambda: Path(tempfile.mkdtemp(prefix="mha-sim-")), converter=Path
    )
    ready: Callable[[Event], bool] | None = is_ready
    start_timeout: float = 60.0

    lab: NetnsLab | None = attrs.field(init=False, default=None)
    zookeeper: ZooKeeperServer | None = attrs.field(init=False, default=None)
    members: dict[str, SimNode] = attrs.field(init=False, factory=dict)
    services: list[EventProcess] = attrs.field(init=False, factory=list)
    files: dict[str, Path] = attrs.field(init=False, factory=dict)

    # --- where things are ------------------------------------------------------

    @property
    def net(self) -> str:
        """The first three octets of every address in this cluster."""
        return "198.18.0" if self.lab is not None else "127.0.0"

    @property
    def zk(self) -> str:
        """ZooKeeper's ``host:port``."""
        if self.zookeeper is None:
            raise TestingError("the cluster is not started")
        return self.zookeeper.address

    @property
    def operator(self) -> Credentials:
        """The operator's credentials (for the test's own coordinators)."""
        return Credentials.from_file(self.files["operator_auth"])

    @property
    def service_address(self) -> str:
        """Where cluster-wide services listen (the bridge, or 127.0.0.1): ZooKeeper, sinks."""
        return "198.18.0.1" if self.lab is not None else "127.0.0.1"

    @property
    def client_prefix(self) -> list[str]:
        """Command prefix that runs a client program on ``c1`` (empty on loopback)."""
        return ["ip", "netns", "exec", self.lab["c1"].netns] if self.lab is not None else []

    @property
    def client_address(self) -> str:
        """The address test clients connect from."""
        return self.lab["c1"].ipv4 if self.lab is not None else "127.0.0.1"

    def address(self, octet: int) -> str:
        """An address in the cluster's network (``198.18.0.N`` or ``127.0.0.N``)."""
        return f"{self.net}.{octet}"

    def __getitem__(self, name: str) -> SimNode:
        return self.members[name]

    def __iter__(self) -> Iterator[SimNode]:
        return iter(self.members.values())

    # --- life cycle ----------------------------------------------------------------

    def start(self) -> SimulatedCluster:
        """Start ZooKeeper, create the cluster as operator, start every node.

        Raises:
            TestingError: namespaces asked for without root, ``mhafail init``
                failed, or a node was not ready in time (everything started
                so far is stopped).
        """
        use_netns = os.geteuid() == 0 if self.namespaces is None else self.namespaces
        if use_netns and os.geteuid() != 0:
            raise TestingError("namespaces need root; run as root or pass namespaces=False")
        try:
            self._prepare(use_netns)
            # Start every node first, then wait: start-ups overlap.
            started = [self.add_node(i).start(None) for i in range(1, self.nodes + 1)]
            if self.ready is not None:
                for node in started:
                    node.wait_event(self.ready, self.start_timeout)
        except BaseException:
            self.close()
            raise
        return self

    def _prepare(self, use_netns: bool) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        auth = write_credentials_pair(self.workdir / "auth")
        self.files["operator_auth"] = auth[Role.OPERATOR]
        self.files["node_auth"] = auth[Role.NODE]
        secret = self.workdir / "auth" / "cluster.secret"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        self.files["secret_file"] = secret
        (self.workdir / "shared").mkdir(exist_ok=True)
        zk_dir = self.workdir / "zookeeper"
        zk_dir.mkdir(exist_ok=True)
        if use_netns:
            self.lab = NetnsLab(hosts=self.nodes, client=True, bridge_address="198.18.0.1/24")
            self.lab.start()
            self.zookeeper = ZooKeeperServer(
                tick_time=self.tick_time, host="198.18.0.1", netns=self.lab.lan, workdir=zk_dir
            )
        else:
            self.zookeeper = ZooKeeperServer(tick_time=self.tick_time, workdir=zk_dir)
        self.zookeeper.start()
        self.operator_command(["init", *[f"--config-repo={r}" for r in self.config_repos]])

    def operator_command(self, args: Sequence[str], *, check: bool = True) -> str:
        """Run ``mhafail ARGS --zk ... --cluster ... --zk-auth OPERATOR`` where ZooKeeper is.

        Returns its standard output.

        Raises:
            TestingError: it failed and ``check`` is true (with its stderr).
        """
        argv = [sys.executable, "-m", "mhafail", *args]
        argv += ["--zk", self.zk, "--cluster", self.cluster]
        argv += ["--zk-auth", str(self.files["operator_auth"])]
        prefix = ["ip", "netns", "exec", self.lab.lan] if self.lab is not None else []
        proc = spawn([*prefix, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=60)
        if check and proc.returncode != 0:
            raise TestingError(f"mhafail {' '.join(args)} failed: {err.decode().strip()}")
        return out.decode()

    def add_node(self, index: int) -> SimNode:
        """Make (not start) node ``n<index>`` from the command template."""
        name = f"n{index}"
        directory = self.workdir / "nodes" / name
        directory.mkdir(parents=True, exist_ok=True)
        host = self.lab[f"h{index}"] if self.lab is not None else None
        address = host.ipv4 if host is not None else f"127.0.0.{10 + index}"
        fields = self.fields(node=name, index=index, address=address, dir=directory)
        argv = [part.format(**fields) for part in self.command]
        node = SimNode(
            argv, node=name, address=address, directory=directory, host=host, log_dir=directory
        )
        self.members[name] = node
        return node

    def fields(self, **extra: Any) -> dict[str, Any]:
        """The template fields shared by every node (plus ``extra``)."""
        return {
            "net": self.net,
            "prefix": 24 if self.lab is not None else 8,
            "interface": "eth0" if self.lab is not None else "lo",
            "plumber": "netlink" if self.lab is not None else f"fake:{self.workdir / 'addresses'}",
            "zk": self.zk,
            "cluster": self.cluster,
            "shared": self.workdir / "shared",
            "python": sys.executable,
            "service_address": self.service_address,
            **{key: str(path) for key, path in self.files.items()},
            **extra,
        }

    def service(
        self, argv: Sequence[str], *, name: str, ready: Callable[[Event], bool] | None = is_ready
    ) -> EventProcess:
        """Start a cluster-wide helper (a sink, a manager) where ZooKeeper is; stopped at close.

        ``argv`` is a template like the nodes' (without the per-node fields),
        plus ``{service_address}``.
        """
        fields = self.fields(dir=self.workdir / name)
        (self.workdir / name).mkdir(exist_ok=True)
        prefix = ["ip", "netns", "exec", self.lab.lan] if self.lab is not None else []
        process = EventProcess(
            [part.format(**fields) for part in argv],
            name=name,
            prefix=prefix,
            log_dir=self.workdir / name,
        )
        self.services.append(process)
        return process.start(ready, self.start_timeout)

    def in_client(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` where test clients live (host ``c1``, or here on loopback)."""
        if self.lab is None:
            return fn(*args)
        return run_in_netns(self.lab["c1"].netns, fn, *args)

    def in_zookeeper_net(self, fn: Callable[..., T], *args: Any) -> T:
        """Call ``fn(*args)`` where ZooKeeper is reachable (the bridge, or here)."""
        if self.lab is None:
            return fn(*args)
        return run_in_netns(self.lab.lan, fn, *args)

    def coordinator(self, **kwargs: Any) -> Coordinator:
        """A started operator coordinator on the cluster (stop it yourself).

        In namespaces its threads are started on the bridge, so they reach
        ZooKeeper for its whole life.
        """
        kwargs.setdefault("credentials", self.operator)
        kwargs.setdefault("session_timeout", 2.0)

        def make() -> Coordinator:
            return Coordinator(hosts=self.zk, cluster=self.cluster, **kwargs).start()

        return self.in_zookeeper_net(make)

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL), ZooKeeper and the lab. Idempotent."""
        for process in [*self.members.values(), *self.services]:
            process.terminate()
        if self.zookeeper is not None:
            self.zookeeper.stop()
        if self.lab is not None:
            self.lab.close()

    def __enter__(self) -> SimulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
