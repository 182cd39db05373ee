"""Network-namespace test hosts on one bridge (root only).

Layout for ``NetnsLab(hosts=3)`` with id ``X``::

    netns mha-X-lan: bridge br0 (up), ports h1 h2 h3 (veth peers)
    netns mha-X-h1:  eth0  198.18.0.11/24  2001:db8::11/64   lo up
    netns mha-X-h2:  eth0  198.18.0.12/24  2001:db8::12/64
    ...

Addresses come from the benchmarking range 198.18.0.0/15 and the IPv6
documentation range; no namespace has a default route, so nothing leaves.
Every name starts with ``mha-``; :meth:`NetnsLab.close` (also run by the
context manager and at interpreter exit) kills what runs inside and
deletes the namespaces, which removes the links with them.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, TypeVar

import attrs

from mhafail.errors import TestingError
from mhafail.testing._children import reap, spawn
from mhafail.testing._ports import unique_suffix

_open_labs: list[NetnsLab] = []
T = TypeVar("T")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise TestingError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@attrs.define(eq=False)
class Host:
    """One test host: a network namespace with ``eth0`` on the lab bridge.

    Attributes:
        name: short name (``h1``).
        netns: the namespace name (``mha-X-h1``).
        ipv4: the host's own IPv4 address (no prefix).
        ipv6: the host's own IPv6 address (no prefix).
        lab: the lab it belongs to.
    """

    name: str
    netns: str
    ipv4: str
    ipv6: str
    lab: NetnsLab
    _procs: list[subprocess.Popen[bytes]] = attrs.field(factory=list)

    def run(self, argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace and wait; raise on failure with ``check``."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv], capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise TestingError(f"{self.name}: {' '.join(argv)} failed: {proc.stderr.strip()}")
        return proc

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` inside the namespace; it is killed when the lab closes."""
        proc = spawn(
            ["ip", "netns", "exec", self.netns, *argv], stdout=stdout, stderr=stderr, env=env
        )
        self._procs.append(proc)
        return proc

    def addresses(self, dev: str = "eth0") -> list[str]:
        """The addresses on ``dev`` as ``addr/prefix`` strings."""
        out = self.run(["ip", "-o", "addr", "show", "dev", dev]).stdout
        return [line.split()[3] for line in out.splitlines() if " inet" in line]

    def link_down(self) -> None:
        """Take this host's bridge port down: the host vanishes from the LAN."""
        _ip("-n", self.lab.lan, "link", "set", self.name, "down")

    def link_up(self) -> None:
        """Bring this host's bridge port back up."""
        _ip("-n", self.lab.lan, "link", "set", self.name, "up")

    def stop_processes(self) -> None:
        """Terminate every process started with :meth:`spawn`."""
        for proc in self._procs:
            reap(proc, timeout=5)
        self._procs.clear()


@attrs.define(eq=False)
class NetnsLab:
    """N hosts (and optionally a client) on a bridge, in network namespaces.

    Args:
        hosts: how many hosts (``h1``...).
        client: also create a host ``c1`` (address .100) for clients.
        ipv6: add IPv6 addresses (without duplicate address detection).
        bridge_address: an address for the bridge itself (``198.18.0.1/24``),
            where lab-wide services such as ZooKeeper can listen
            (``ZooKeeperServer(netns=lab.lan, host="198.18.0.1")``).
    """

    hosts: int = 3
    client: bool = False
    ipv6: bool = True
    bridge_address: str | None = None
    id: str = attrs.field(factory=unique_suffix)
    members: dict[str, Host] = attrs.field(init=False, factory=dict)
    _closed: bool = attrs.field(init=False, default=False)

    @property
    def lan(self) -> str:
        """The namespace that holds the bridge."""
        return f"mha-{self.id}-lan"

    def __getitem__(self, name: str) -> Host:
        return self.members[name]

    def start(self) -> NetnsLab:
        """Create the namespaces, bridge and links.

        Raises:
            TestingError: not root, or ``ip`` failed (everything made so far is removed).
        """
        if os.geteuid() != 0:
            raise TestingError("network namespaces need root")
        _open_labs.append(self)
        try:
            _ip("netns", "add", self.lan)
            _ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.lan, "link", "set", "br0", "up")
            _ip("-n", self.lan, "link", "set", "lo", "up")
            if self.bridge_address:
                _ip("-n", self.lan, "addr", "add", self.bridge_address, "dev", "br0")
            names = [(f"h{i}", 10 + i) for i in range(1, self.hosts + 1)]
            if self.client:
                names.append(("c1", 100))
            for name, octet in names:
                self.members[name] = self._add_host(name, octet)
        except Exception:
            self.close()
            raise
        return self

    def _add_host(self, name: str, octet: int) -> Host:
        ns = f"mha-{self.id}-{name}"
        _ip("netns", "add", ns)
        _ip(
            "link",
            "add",
            "eth0",
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            name,
            "netns",
            self.lan,
        )
        _ip("-n", self.lan, "link", "set", name, "master", "br0")
        _ip("-n", self.lan, "link", "set", name, "up")
        mac = f"02:18:00:00:00:{octet:02x}"
        _ip("-n", ns, "link", "set", "eth0", "address", mac)
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "addr", "add", f"198.18.0.{octet}/24", "dev", "eth0")
        host = Host(name=name, netns=ns, ipv4=f"198.18.0.{octet}", ipv6="", lab=self)
        if self.ipv6:
            host.ipv6 = f"2001:db8::{octet:x}"
            _ip("-n", ns, "addr", "add", f"{host.ipv6}/64", "dev", "eth0", "nodad")
        _ip("-n", ns, "link", "set", "eth0", "up")
        return host

    def close(self) -> None:
        """Kill everything inside the namespaces and delete them. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for host in self.members.values():
            host.stop_processes()
        for ns in [*(h.netns for h in self.members.values()), self.lan]:
            pids = _ip("netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _ip("netns", "del", ns, check=False)
        with contextlib.suppress(ValueError):
            _open_labs.remove(self)

    def __enter__(self) -> NetnsLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


_CLONE_NEWNET = 0x40000000


def run_in_netns(netns: str, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` on a thread that has entered network namespace ``netns``.

    Sockets opened by ``fn`` live in that namespace; the rest of the
    process is unaffected (``setns`` changes only the calling thread).
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
        try:
            if libc.setns(fd, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err))
        finally:
            os.close(fd)
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:  # handed back to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]


def _in_use(name: str) -> bool:
    """True if a process runs inside ``name`` or the run that made it is alive.

    Lab names are ``mha-<pid mod 100000, 5 digits><counter>-...``, so the
    maker's pid is known up to that modulus; a live process with a
    matching pid counts as the owner (erring on the side of keeping).
    """
    if _ip("netns", "pids", name, check=False).stdout.strip():
        return True
    parts = name.split("-")
    ident = parts[1] if len(parts) > 2 else ""
    if len(ident) < 6 or not ident[:5].isdigit():
        return False
    maker = int(ident[:5])
    return any(int(pid) % 100000 == maker for pid in os.listdir("/proc") if pid.isdigit())


def remove_stale_namespaces(prefix: str = "mha-", *, force: bool = False) -> list[str]:
    """Delete leftover namespaces whose names start with ``prefix``; return their names.

    For clean-up after a killed run on a developer machine. A namespace
    that is in use is kept: a process runs inside it, or the process that
    made it (named in its lab id) is still alive, as for another test run
    in progress on the same machine. ``force=True`` deletes those too.
    """
    out = _ip("netns", "list", check=False).stdout
    removed = []
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        if name.startswith(prefix) and (force or not _in_use(name)):
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@atexit.register
def _close_open_labs() -> None:
    for lab in list(_open_labs):
        lab.close()
