"""Start real ZooKeeper servers with java: standalone or a 3-server ensemble.

No systemd, no Debian service: each server is a ``java`` child process with
its own temporary directory, on free loopback ports, killed with us if we
die. Debian's ``zookeeper`` package provides the jar (``/usr/share/java``);
its manifest names the libraries it needs. We keep the NIO connection
factory: Debian's jar does not put netty-codec on its class path, so the
netty factory hangs clients (docs/architecture.md, "Testing strategy").
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import attrs

from mhafail.errors import TestingError, ZooKeeperNotInstalled
from mhafail.testing._children import reap, spawn
from mhafail.testing._ports import free_port

DEBIAN_JARS = ("/usr/share/java/zookeeper.jar",)
# Optional: gives the server a log; without it SLF4J falls back to no-op.
DEBIAN_LOG_JAR = "/usr/share/java/slf4j-simple.jar"
CLASSPATH_ENV = "MHAFAIL_ZOOKEEPER_CLASSPATH"
INSTALL_HINT = (
    "ZooKeeper is not installed: run `sudo apt-get install -y zookeeper` (Debian/Ubuntu), "
    f"or set {CLASSPATH_ENV} to a class path holding zookeeper.jar and its libraries"
)


def find_classpath() -> str:
    """Return the java class path for a ZooKeeper server.

    ``$MHAFAIL_ZOOKEEPER_CLASSPATH`` wins; otherwise Debian's layout.

    Raises:
        ZooKeeperNotInstalled: neither is there (the message says what to install).
    """
    explicit = os.environ.get(CLASSPATH_ENV)
    if explicit:
        return explicit
    if shutil.which("java") is None or not all(Path(j).exists() for j in DEBIAN_JARS):
        raise ZooKeeperNotInstalled(INSTALL_HINT)
    jars = list(DEBIAN_JARS)
    if Path(DEBIAN_LOG_JAR).exists():
        jars.append(DEBIAN_LOG_JAR)
    return ":".join(jars)


def zookeeper_available() -> bool:
    """True when :func:`find_classpath` would succeed."""
    try:
        find_classpath()
    except ZooKeeperNotInstalled:
        return False
    return True


def four_letter(host: str, port: int, word: str, timeout: float = 1.0) -> str:
    """Send a four-letter command (``srvr``, ``ruok``...) and return the answer."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(word.encode())
        chunks = []
        while chunk := sock.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@attrs.define(kw_only=True, eq=False)
class ZooKeeperServer:
    """One ZooKeeper server process.

    Args:
        tick_time: ZooKeeper's ``tickTime`` in ms; sessions may last 2 to
            20 ticks, so use a small tick for sub-second session tests.
        host: loopback address to listen on.
        port: client port (default: a free one).
        workdir: where data, config and log go (default: a new temp dir,
            removed by :meth:`cleanup`).
        server_id, peers, peer_hosts: set by :class:`ZooKeeperEnsemble`
            (``peer_hosts`` maps a server id to its address when the servers
            do not share one).
        netns: run inside this network namespace (root; e.g. a lab's bridge
            namespace, with ``host`` the bridge address).
        sasl_users: user name -> password: start the server with a JAAS
            ``Server`` section (DigestLoginModule) holding these users and
            the SASL authentication provider, so clients can log in with
            SASL DIGEST-MD5 and ACLs can name ``sasl:<user>``.
    """

    tick_time: int = 100
    host: str = "127.0.0.1"
    port: int = attrs.field(factory=free_port)
    workdir: Path = attrs.field(factory=lambda: Path(tempfile.mkdtemp(prefix="mha-zk-")))
    server_id: int = 0
    peers: tuple[tuple[int, int, int], ...] = ()  # (id, quorum port, election port)
    peer_hosts: dict[int, str] = attrs.field(factory=dict)
    netns: str | None = None
    sasl_users: dict[str, str] = attrs.field(factory=dict, repr=False)
    _proc: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)
    _owns_workdir: bool = attrs.field(init=False, default=True)

    @property
    def address(self) -> str:
        """``host:port`` for clients."""
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The server's combined stdout/stderr log."""
        return self.workdir / "server.log"

    @property
    def pid(self) -> int | None:
        """The java process id while it runs."""
        return self._proc.pid if self.running else None  # type: ignore[union-attr]

    @property
    def running(self) -> bool:
        """True while the java process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self.tick_time}",
            f"dataDir={data}",
            f"clientPort={self.port}",
            f"clientPortAddress={self.host}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=srvr,ruok,stat,mntr,cons",
            f"maxSessionTimeout={self.tick_time * 20}",
            "maxClientCnxns=0",
            # Snapshots and logs are tiny in tests; keep fsync off the hot path.
            "forceSync=no",
        ]
        if self.sasl_users:
            lines.append(
                "authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider"
            )
        if self.peers:
            lines += [
                f"initLimit={max(10, 5000 // self.tick_time)}",
                f"syncLimit={max(5, 2000 // self.tick_time)}",
            ]
            lines += [
                f"server.{i}={self.peer_hosts.get(i, self.host)}:{q}:{e}" for i, q, e in self.peers
            ]
            (data / "myid").write_text(f"{self.server_id}\n")
        cfg = self.workdir / "zoo.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self, wait: bool = True, timeout: float = 30.0) -> ZooKeeperServer:
        """Start the server; with ``wait``, block until it serves clients."""
        if self.running:
            return self
        cfg = self._write_config()
        jaas: list[str] = []
        if self.sasl_users:
            from mhafail.coordination._auth import jaas_server_section

            path = self.workdir / "jaas.conf"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(jaas_server_section(self.sasl_users))
            jaas = [f"-Djava.security.auth.login.config={path}"]
        argv = [
            "java",
            "-Xmx256m",
            *jaas,
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dorg.slf4j.simpleLogger.showDateTime=true",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            find_classpath(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(cfg),
        ]
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        with self.log_path.open("ab") as log:
            self._proc = spawn(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(self.workdir))
        if wait:
            self.wait_ready(timeout)
        return self

    def mode(self) -> str | None:
        """``standalone``, ``leader`` or ``follower``; None when not serving."""
        try:
            if self.netns is None:
                answer = four_letter(self.host, self.port, "srvr")
            else:
                from mhafail.testing._netns import run_in_netns

                answer = run_in_netns(self.netns, four_letter, self.host, self.port, "srvr")
        except OSError:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server answers ``srvr`` with a serving mode.

        Raises:
            TestingError: it exited or did not get ready in time (with its log tail).
        """
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self.running:
                raise TestingError(f"ZooKeeper {self.address} exited:\n{self.log_tail()}")
            if self.mode() in ("standalone", "leader", "follower"):
                return
            time.sleep(0.05)
        raise TestingError(f"ZooKeeper {self.address} not ready in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the server with SIGTERM (SIGKILL after 10 s)."""
        if self._proc is not None:
            reap(self._proc)
            self._proc = None

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would."""
        if self._proc is not None:
            import signal

            reap(self._proc, signal.SIGKILL)
            self._proc = None

    def restart(self, wait: bool = True) -> None:
        """Stop and start again on the same port and data."""
        self.stop()
        self.start(wait=wait)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ZooKeeperServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


@attrs.define(kw_only=True, eq=False)
class ZooKeeperEnsemble:
    """A quorum of ``size`` ZooKeeper servers (default 3), on loopback by default.

    Args:
        size: how many servers.
        tick_time: ``tickTime`` in ms for every server.
        host: the address every server listens on (each on its own ports).
        netns: run the servers inside this network namespace (root; e.g. a
            lab's bridge namespace with ``host`` the bridge address).
        placement: instead of ``host``/``netns``, one ``(netns, address)``
            per server, to run each in a namespace of its own (``NetnsLab``
            hosts), so that a test can cut one server off from its peers
            while clients still reach it.
    """

    size: int = 3
    tick_time: int = 100
    host: str = "127.0.0.1"
    netns: str | None = None
    placement: tuple[tuple[str | None, str], ...] = ()
    servers: list[ZooKeeperServer] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        if self.placement and len(self.placement) != self.size:
            raise TestingError(f"placement names {len(self.placement)} servers, not {self.size}")
        base = Path(tempfile.mkdtemp(prefix="mha-zk-ensemble-"))
        peers = tuple((i, free_port(), free_port()) for i in range(1, self.size + 1))
        where = self.placement or tuple((self.netns, self.host) for _ in peers)
        hosts = {i: where[i - 1][1] for i, _, _ in peers}
        self.servers = [
            ZooKeeperServer(
                tick_time=self.tick_time,
                workdir=base / f"s{i}",
                server_id=i,
                peers=peers,
                peer_hosts=hosts,
                host=hosts[i],
                netns=where[i - 1][0],
            )
            for i, _, _ in peers
        ]

    @property
    def hosts(self) -> str:
        """The connection string naming every server."""
        return ",".join(s.address for s in self.servers)

    def start(self, timeout: float = 60.0) -> ZooKeeperEnsemble:
        """Start every server and wait until a quorum serves."""
        for server in self.servers:
            server.start(wait=False)
        for server in self.servers:
            server.wait_ready(timeout)
        return self

    def leader(self) -> ZooKeeperServer | None:
        """The server that is leader now, if any."""
        for server in self.servers:
            if server.running and server.mode() == "leader":
                return server
        return None

    def wait_leader(self, timeout: float = 30.0) -> ZooKeeperServer:
        """Block until some server is leader and return it."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            leader = self.leader()
            if leader is not None:
                return leader
            time.sleep(0.05)
        raise TestingError("no ZooKeeper leader elected in time")

    def cleanup(self) -> None:
        """Stop every server and remove their directories."""
        for server in self.servers:
            server.cleanup()
        if self.servers:
            shutil.rmtree(self.servers[0].workdir.parent, ignore_errors=True)

    def __enter__(self) -> ZooKeeperEnsemble:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
