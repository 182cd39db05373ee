"""Fakes for unit and integration tests of the logic around the kernel."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence

import attrs

from mhafail.errors import PlumbingError
from mhafail.vip import Vip


@attrs.define
class FakeNetwork:
    """A shared record of which fake host holds which address, and when.

    With ``path``, every change is also appended to that file (one line per
    change, ``O_APPEND``), so several processes can share one record;
    :meth:`load` reads it back.

    ``history`` lists ``(monotonic time, host, "add"|"remove", address)``;
    :meth:`max_holders` replays it to find the most hosts that ever held
    one address at once (the one-owner invariant says 1).
    """

    path: str | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    _holders: dict[str, set[str]] = attrs.field(factory=dict)
    history: list[tuple[float, str, str, str]] = attrs.field(factory=list)
    announcements: list[tuple[float, str, str]] = attrs.field(factory=list)

    def record(self, host: str, op: str, address: str) -> None:
        """Record a change (called by FakePlumber)."""
        with self._lock:
            holders = self._holders.setdefault(address, set())
            if op == "add":
                holders.add(host)
            else:
                holders.discard(host)
            now = time.monotonic()
            self.history.append((now, host, op, address))
            if self.path is not None:
                with open(self.path, "a") as f:
                    f.write(f"{now:.6f} {host} {op} {address}\n")

    @classmethod
    def load(cls, path: str) -> FakeNetwork:
        """Rebuild a network's record from the file several processes appended to."""
        network = cls()
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            t, host, op, address = line.split()
            network.history.append((float(t), host, op, address))
            holders = network._holders.setdefault(address, set())
            (holders.add if op == "add" else holders.discard)(host)
        return network

    def holders(self, address: str) -> frozenset[str]:
        """Hosts that hold ``address`` now."""
        with self._lock:
            return frozenset(self._holders.get(address, ()))

    def max_holders(self, address: str) -> int:
        """The most hosts that held ``address`` at the same time, ever."""
        current: set[str] = set()
        most = 0
        with self._lock:
            events = [e for e in self.history if e[3] == address]
        for _, host, op, _ in events:
            if op == "add":
                current.add(host)
            else:
                current.discard(host)
            most = max(most, len(current))
        return most


class FakePlumber:
    """A :class:`mhafail.vip.Plumber` that keeps addresses in memory.

    Args:
        network: the shared record of all fake hosts.
        host: this host's name in the record.
        interfaces: interface -> the host's own addresses (``addr/prefix``).
    """

    def __init__(
        self,
        network: FakeNetwork,
        host: str,
        interfaces: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.network = network
        self.host = host
        self._own = {k: list(v) for k, v in (interfaces or {"eth0": ["198.18.0.1/24"]}).items()}
        self._vips: dict[str, set[str]] = {k: set() for k in self._own}
        self._lock = threading.Lock()

    def _iface(self, name: str) -> set[str]:
        if name not in self._vips:
            raise PlumbingError(f"interface {name!r} does not exist")
        return self._vips[name]

    def ensure_present(self, vip: Vip) -> bool:
        """Add ``vip`` to its interface's set."""
        with self._lock:
            addrs = self._iface(vip.interface)
            if vip.key in addrs:
                return False
            addrs.add(vip.key)
            self.network.record(self.host, "add", vip.key)
            return True

    def ensure_absent(self, vip: Vip) -> bool:
        """Remove ``vip`` from its interface's set."""
        with self._lock:
            addrs = self._vips.get(vip.interface, set())
            if vip.key not in addrs:
                return False
            addrs.discard(vip.key)
            self.network.record(self.host, "remove", vip.key)
            return True

    def announce(self, vip: Vip) -> None:
        """Record an announcement."""
        with self._lock:
            if vip.key not in self._iface(vip.interface):
                raise PlumbingError(f"announce {vip.key}: not plumbed")
        self.network.announcements.append((time.monotonic(), self.host, vip.key))

    def addresses(self, interface: str) -> frozenset[str]:
        """The interface's own addresses plus the plumbed VIPs."""
        with self._lock:
            own = {a.split("/")[0] for a in self._own.get(interface, [])}
            return frozenset(own | self._iface(interface))

    def interfaces(self) -> dict[str, list[str]]:
        """The host's own addresses per interface (VIPs not included)."""
        return {k: list(v) for k, v in self._own.items()}

    def inject(self, interface: str, address: str) -> None:
        """Put an address on the interface behind the manager's back (a stray)."""
        with self._lock:
            self._iface(interface).add(address)
            self.network.record(self.host, "add", address)
