"""Fakes for unit and integration tests of the logic around the kernel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import attrs

from mhafail.errors import PlumbingError
from mhafail.vip import Vip
from mhafail.vip._plumber import kernel_lifetime


@attrs.define
class FakeNetwork:
    """A shared record of which fake host holds which address, and when.

    With ``path``, every change is also appended to that file (one line per
    change, ``O_APPEND``), so several processes can share one record;
    :meth:`load` reads it back.

    ``history`` lists ``(monotonic time, host, "add"|"remove", address)``;
    ``lifetimes`` lists ``(monotonic time, host, address, until)`` for every
    lifetime set on an address. An address whose lifetime ran out counts as
    gone from then on, as the fence and the kernel would remove it: a
    SIGKILLed agent's addresses leave the record when its lease ends.
    :meth:`max_holders` replays both to find the most hosts that ever held
    one address at once (the one-owner invariant says 1).
    """

    path: str | None = None
    _lock: threading.Lock = attrs.field(factory=threading.Lock)
    history: list[tuple[float, str, str, str]] = attrs.field(factory=list)
    lifetimes: list[tuple[float, str, str, float]] = attrs.field(factory=list)
    announcements: list[tuple[float, str, str]] = attrs.field(factory=list)

    def record(self, host: str, op: str, address: str, until: float | None = None) -> None:
        """Record a change (called by FakePlumber); ``until`` sets its lifetime."""
        with self._lock:
            now = time.monotonic()
            lines = []
            if op in ("add", "remove"):
                self.history.append((now, host, op, address))
                lines.append(f"{now:.6f} {host} {op} {address}")
            if until is not None and op != "remove":
                self.lifetimes.append((now, host, address, until))
                lines.append(f"{now:.6f} {host} until {address} {until:.6f}")
            if self.path is not None and lines:
                with open(self.path, "a") as f:
                    f.write("".join(line + "\n" for line in lines))

    def spans(self, address: str) -> list[tuple[float, float, str]]:
        """``(start, end, host)`` for every span a host held ``address``."""
        with self._lock:
            events = [(t, 0, h, op, 0.0) for t, h, op, a in self.history if a == address]
            events += [(t, 1, h, "until", u) for t, h, a, u in self.lifetimes if a == address]
        spans = []
        held: dict[str, tuple[float, float]] = {}  # host -> (start, until)
        for t, _, host, op, until in sorted(events):
            current = held.get(host)
            if current is not None and current[1] <= t:
                spans.append((current[0], current[1], host))  # it ran out before now
                current = None
                del held[host]
            if op == "add" and current is None:
                held[host] = (t, float("inf"))
            elif op == "remove" and current is not None:
                spans.append((current[0], t, host))
                del held[host]
            elif op == "until":
                # A renewal of an address that ran out re-adds it (netlink replace).
                held[host] = (current[0] if current else t, until)
        spans += [(start, until, host) for host, (start, until) in held.items()]
        return spans

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
            fields = line.split()
            if len(fields) == 5 and fields[2] == "until":
                network.lifetimes.append((float(fields[0]), fields[1], fields[3], float(fields[4])))
            elif len(fields) == 4:
                network.history.append((float(fields[0]), fields[1], fields[2], fields[3]))
        return network

    def holders(self, address: str) -> frozenset[str]:
        """Hosts that hold ``address`` now."""
        now = time.monotonic()
        return frozenset(h for start, end, h in self.spans(address) if start <= now < end)

    def max_holders(self, address: str) -> int:
        """The most hosts that held ``address`` at the same time, ever."""
        points = []
        for start, end, _ in self.spans(address):
            if end > start:
                points += [(start, 1), (end, -1)]
        most = current = 0
        for _, delta in sorted(points):  # at equal times an end comes before a start
            current += delta
            most = max(most, current)
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
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def _iface(self, name: str) -> set[str]:
        if name not in self._vips:
            raise PlumbingError(f"interface {name!r} does not exist")
        return self._vips[name]

    def ensure_present(self, vip: Vip, valid_for: float | None = None) -> bool:
        """Add ``vip`` to its interface's set (with a lifetime, like the kernel)."""
        until = None if valid_for is None else time.monotonic() + kernel_lifetime(valid_for)
        with self._lock:
            addrs = self._iface(vip.interface)
            self._expire(vip.interface)
            if vip.key in addrs:
                if until is not None:
                    self._until[vip.key] = until
                    self.network.record(self.host, "until", vip.key, until)
                return False
            addrs.add(vip.key)
            if until is not None:
                self._until[vip.key] = until
            self.network.record(self.host, "add", vip.key, until)
            return True

    def renew(self, vip: Vip, valid_for: float) -> None:
        """Extend the lifetime of ``vip`` (re-adding it if it ran out, as netlink would)."""
        until = time.monotonic() + kernel_lifetime(valid_for)
        with self._lock:
            addrs = self._iface(vip.interface)
            self._expire(vip.interface)
            self._until[vip.key] = until
            if vip.key in addrs:
                self.network.record(self.host, "until", vip.key, until)
            else:
                addrs.add(vip.key)
                self.network.record(self.host, "add", vip.key, until)

    def _expire(self, _interface: str) -> None:
        """Drop addresses whose lifetime ran out (lock held)."""
        now = time.monotonic()
        for key in [k for k, u in self._until.items() if u <= now]:
            del self._until[key]
            for addrs in self._vips.values():
                addrs.discard(key)

    def ensure_absent(self, vip: Vip) -> bool:
        """Remove ``vip`` from its interface's set."""
        with self._lock:
            addrs = self._vips.get(vip.interface, set())
            self._expire(vip.interface)
            self._until.pop(vip.key, None)
            if vip.key not in addrs:
                return False
            addrs.discard(vip.key)
            self.network.record(self.host, "remove", vip.key)
            return True

    def ensure_present_many(
        self, vips: Sequence[Vip], valid_for: float | None = None
    ) -> frozenset[str]:
        """Add ``vips`` like :meth:`ensure_present`, all or nothing, like the netlink plumber.

        Every interface is checked before anything changes; if an add fails
        the ones this call added are removed again and the error is raised.
        """
        with self._lock:
            for vip in vips:
                self._iface(vip.interface)
        added: list[Vip] = []
        try:
            for vip in vips:
                # Through the single-address method, so that subclasses that
                # stall or fail there (tests) do so in batches too.
                if self.ensure_present(vip, valid_for):
                    added.append(vip)
        except PlumbingError:
            for vip in added:
                self.ensure_absent(vip)
            raise
        return frozenset(v.key for v in added)

    def ensure_absent_many(self, vips: Sequence[Vip]) -> frozenset[str]:
        """Remove ``vips`` like :meth:`ensure_absent`; return the ones removed now."""
        return frozenset(v.key for v in vips if self.ensure_absent(v))

    def announce(self, vip: Vip) -> None:
        """Record an announcement."""
        with self._lock:
            self._expire(vip.interface)
            if vip.key not in self._iface(vip.interface):
                raise PlumbingError(f"announce {vip.key}: not plumbed")
        self.network.announcements.append((time.monotonic(), self.host, vip.key))

    def announce_many(
        self, vips: Sequence[Vip], still_valid: Callable[[], bool] = lambda: True
    ) -> None:
        """Record announcements in order, asking ``still_valid()`` before each."""
        failed = []
        for vip in vips:
            if not still_valid():
                break
            try:
                self.announce(vip)
            except PlumbingError as exc:
                failed.append(str(exc))
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise PlumbingError(f"{failed[0]}{more}")

    def addresses(self, interface: str) -> frozenset[str]:
        """The interface's own addresses plus the plumbed VIPs."""
        with self._lock:
            self._expire(interface)
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
