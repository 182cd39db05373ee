"""The overlap monitor: address changes of every node, in kernel order, on one socket.

A monitor per namespace (one thread and one socket each) cannot say which
of two changes in different namespaces came first: each thread reads its
own queue when the scheduler lets it. The kernel serialises every address
and link change under one lock (rtnl), and a netlink socket with
``NETLINK_LISTEN_ALL_NSID`` receives the notifications of every namespace
that has an id in its own, tagged with that id, in that order. So one
socket gives one total order, and the one-owner invariant is checked on
it: at no point of the order may two *attached* nodes hold a watched VIP.

A node is detached while its bridge port is administratively down (a
partition made with :meth:`Host.link_down`; those link changes come in the
same order) or inside a span given to :meth:`OverlapMonitor.detach` (for
cuts the kernel does not report, such as netem loss).
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import attrs

from mhafail.errors import TestingError
from mhafail.testing._netns import NetnsLab, run_in_netns
from mhafail.testing.nemesis import _netlink as nl
from mhafail.testing.nemesis._reader import SocketWatcher

ADD, DELETE, DETACH, ATTACH = "add", "del", "detach", "attach"


@attrs.frozen
class NetEvent:
    """One change, in kernel order.

    Attributes:
        seq: position in the total order (0, 1, ...; the initial snapshot comes first).
        t: ``time.monotonic()`` when the monitor read it (reading lags the change
            by microseconds to milliseconds; the order, not this clock, is exact).
        node: the node whose namespace changed.
        op: ``add`` / ``del`` (an address), ``detach`` / ``attach`` (the node's link).
        address: the watched address, or ``""`` for link changes.
        slot: which copy of the address (interface index, prefix length); a node
            can hold one address on two interfaces.
    """

    seq: int
    t: float
    node: str
    op: str
    address: str = ""
    slot: tuple[int, int] = (0, 0)


@attrs.frozen
class Overlap:
    """A stretch of the order during which two or more attached nodes held ``address``.

    ``end_seq`` / ``end`` are None if it lasted to the end of the record.
    """

    address: str
    nodes: tuple[str, ...]
    start_seq: int
    start: float
    end_seq: int | None
    end: float | None

    @property
    def duration(self) -> float | None:
        """Seconds between the monitor reading its first and last event (None: open)."""
        return None if self.end is None else self.end - self.start


def find_overlaps(events: Iterable[NetEvent], address: str) -> list[Overlap]:
    """Every stretch of ``events`` (in ``seq`` order) with two attached holders of ``address``.

    A pure function of the record, so it is tested on made-up records too.
    A change of the set of attached holders while two or more hold it
    (a third node joins) starts a new overlap.
    """
    held: dict[str, set[tuple[int, int]]] = {}
    detached: set[str] = set()
    out: list[Overlap] = []
    current: tuple[tuple[str, ...], NetEvent] | None = None
    for event in sorted(events, key=lambda e: e.seq):
        if event.op == DETACH:
            detached.add(event.node)
        elif event.op == ATTACH:
            detached.discard(event.node)
        elif event.address == address and event.op == ADD:
            held.setdefault(event.node, set()).add(event.slot)
        elif event.address == address and event.op == DELETE:
            held.get(event.node, set()).discard(event.slot)
        else:
            continue
        attached = tuple(sorted(n for n, slots in held.items() if slots and n not in detached))
        if current is not None and attached != current[0]:
            nodes, first = current
            out.append(Overlap(address, nodes, first.seq, first.t, event.seq, event.t))
            current = None
        if current is None and len(attached) > 1:
            current = (attached, event)
    if current is not None:
        nodes, first = current
        out.append(Overlap(address, nodes, first.seq, first.t, None, None))
    return out


def find_gaps(events: Iterable[NetEvent], address: str) -> list[tuple[float, float | None]]:
    """Stretches (start, end or None) during which no attached node held ``address``.

    Only gaps after the first holder appeared count (start-up is not an outage).
    """
    held: dict[str, set[tuple[int, int]]] = {}
    detached: set[str] = set()
    out: list[tuple[float, float | None]] = []
    began: float | None = None
    seen_owner = False
    for event in sorted(events, key=lambda e: e.seq):
        if event.op == DETACH:
            detached.add(event.node)
        elif event.op == ATTACH:
            detached.discard(event.node)
        elif event.address == address:
            slots = held.setdefault(event.node, set())
            (slots.add if event.op == ADD else slots.discard)(event.slot)
        else:
            continue
        attached = [n for n, slots in held.items() if slots and n not in detached]
        if attached:
            seen_owner = True
            if began is not None:
                out.append((began, event.t))
                began = None
        elif seen_owner and began is None:
            began = event.t
    if began is not None:
        out.append((began, None))
    return out


def _normal(address: str) -> str:
    return str(ipaddress.ip_interface(address).ip)


class OverlapMonitor(SocketWatcher):
    """Watches ``addresses`` on ``nodes`` (name -> netns) in kernel order.

    Args:
        nodes: node name -> network namespace name.
        addresses: the watched VIPs (``198.18.0.200``, ``2001:db8::200``; a
            prefix or ``@iface`` suffix is ignored).
        ports: node name -> (namespace, interface) whose administrative state
            says whether the node is attached (its bridge port).

    Start it before the agents: it subscribes first, then snapshots every
    namespace, so nothing that happens afterwards is missed. Root only.
    Gives every namespace an nsid in the monitor's own (the root) namespace,
    as ``ip netns set NAME auto`` does; the ids go away with the namespaces.
    """

    def __init__(
        self,
        nodes: dict[str, str],
        addresses: Sequence[str],
        *,
        ports: dict[str, tuple[str, str]] | None = None,
    ) -> None:
        if os.geteuid() != 0:
            raise TestingError("the overlap monitor needs root (NETLINK_LISTEN_ALL_NSID)")
        self.addresses = tuple(_normal(a.split("@", 1)[0]) for a in addresses)
        self.nodes = dict(nodes)
        self._ports = dict(ports or {})
        self._events: list[NetEvent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.lost: str | None = None
        self._by_nsid: dict[int, str] = {}  # nsid -> node (address events)
        self._port_nsids: dict[int, dict[str, str]] = {}  # nsid -> {ifname: node}
        self._sock = nl.open_socket(listen=True)
        self._thread = threading.Thread(target=self._read, name="mhafail-overlap", daemon=True)
        try:
            self._setup()
        except BaseException:
            self._sock.close()
            raise

    @classmethod
    def for_lab(
        cls, lab: NetnsLab, names: Sequence[str], addresses: Sequence[str]
    ) -> OverlapMonitor:
        """A monitor of ``names`` in ``lab``, attached while their bridge port is up."""
        return cls(
            {n: lab[n].netns for n in names},
            addresses,
            ports={n: (lab.lan, n) for n in names},
        )

    def _setup(self) -> None:
        for node, netns in self.nodes.items():
            self._by_nsid[nl.ensure_nsid(netns)] = node
        for node, (netns, ifname) in self._ports.items():
            self._port_nsids.setdefault(nl.ensure_nsid(netns), {})[ifname] = node
        self._thread.start()
        # Subscribed first, then the snapshot: a change racing the snapshot
        # is seen twice at worst, never missed (set semantics absorb it).
        for node, netns in self.nodes.items():
            for message in run_in_netns(netns, self._dump):
                if isinstance(message, nl.AddrMessage):
                    self._address(node, message)
        for node, (netns, ifname) in self._ports.items():
            for message in run_in_netns(netns, self._dump):
                if isinstance(message, nl.LinkMessage) and message.name == ifname:
                    self._append(node, ATTACH if message.up else DETACH)

    @staticmethod
    def _dump() -> list[nl.Message]:
        with nl.open_socket(listen=False) as sock:
            return nl.dump(sock)

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self._sock], [], [], 0.1)
                if not ready:
                    continue
                data, cmsgs, _, _ = self._sock.recvmsg(1 << 16, socket.CMSG_SPACE(4))
            except OSError as exc:
                if self._stop.is_set():
                    return
                # ENOBUFS: the kernel dropped notifications; the record has a hole.
                self.lost = f"monitor socket failed: {exc}"
                continue
            nsid = nl.nsid_of(cmsgs)
            if nsid is None:
                continue
            try:
                messages = [m for _, m in nl.parse(data) if m is not None]
            except OSError:
                continue
            for message in messages:
                if isinstance(message, nl.AddrMessage) and nsid in self._by_nsid:
                    self._address(self._by_nsid[nsid], message)
                elif isinstance(message, nl.LinkMessage):
                    node = self._port_nsids.get(nsid, {}).get(message.name)
                    if node is not None:
                        self._append(node, ATTACH if message.up else DETACH)

    def _address(self, node: str, message: nl.AddrMessage) -> None:
        if message.address in self.addresses:
            op = ADD if message.added else DELETE
            self._append(node, op, message.address, (message.index, message.prefixlen))

    def _append(
        self, node: str, op: str, address: str = "", slot: tuple[int, int] = (0, 0)
    ) -> None:
        with self._lock:
            self._events.append(
                NetEvent(len(self._events), time.monotonic(), node, op, address, slot)
            )

    def detach(self, node: str) -> None:
        """Mark ``node`` cut off from now on (a cut the kernel does not report)."""
        self._append(node, DETACH)

    def attach(self, node: str) -> None:
        """End a cut marked with :meth:`detach`."""
        self._append(node, ATTACH)

    @property
    def events(self) -> list[NetEvent]:
        """A copy of the record so far, in kernel order."""
        with self._lock:
            return list(self._events)

    def holders(self, address: str, *, attached_only: bool = True) -> set[str]:
        """The nodes holding ``address`` now (by default only attached ones)."""
        address = _normal(address)
        held: dict[str, set[tuple[int, int]]] = {}
        detached: set[str] = set()
        for e in self.events:
            if e.op == DETACH:
                detached.add(e.node)
            elif e.op == ATTACH:
                detached.discard(e.node)
            elif e.address == address:
                slots = held.setdefault(e.node, set())
                (slots.add if e.op == ADD else slots.discard)(e.slot)
        return {n for n, s in held.items() if s and not (attached_only and n in detached)}

    def overlaps(self, address: str | None = None) -> list[Overlap]:
        """Overlaps of ``address`` (default: of every watched address)."""
        events = self.events
        wanted = [_normal(address)] if address else list(self.addresses)
        return [o for a in wanted for o in find_overlaps(events, a)]

    def gaps(self, address: str) -> list[tuple[float, float | None]]:
        """Stretches without an attached holder of ``address`` (see :func:`find_gaps`)."""
        return find_gaps(self.events, _normal(address))

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate()`` every 10 ms for up to ``timeout`` s; True once it holds."""
        end = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
