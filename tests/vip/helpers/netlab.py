"""The VIP namespace lab: agents, client and address monitor (root; on pytest's pythonpath).

Three nodes and a client on a bridge (198.18.0.0/24, 2001:db8::/64), and a
ZooKeeper on the bridge. A monitor follows every node's address
notifications (RTM_NEWADDR/RTM_DELADDR) from outside the agents; the
one-owner invariant is checked on that record: no two network-attached
nodes ever hold a VIP at the same time. The client never touches its
neighbour cache: it reaches a new owner only through the announcement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pyroute2 import IPRoute

from mhafail.testing import EventProcess, Host, NetnsLab, ZooKeeperServer

V4 = "198.18.0.200"
V6 = "2001:db8::200"
PORT = 2525
TIMEOUT = 1.0  # session timeout (s)
HELPERS = Path(__file__).parent


class AddressMonitor:
    """Records, per node, when each VIP appeared and disappeared (netlink events)."""

    def __init__(self, lab: NetnsLab, names: list[str]) -> None:
        self.events: list[tuple[float, str, str, str]] = []  # (t, node, "add"/"del", address)
        self.detached: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        self._lock = threading.Lock()
        self._sockets: list[IPRoute] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._watch, args=(n, lab[n].netns), daemon=True) for n in names
        ]
        for t in self._threads:
            t.start()

    def _watch(self, node: str, netns: str) -> None:
        # Blocking reads: pyroute2 buffers messages, so select() on its
        # socket can miss notifications that are already read.
        ipr = IPRoute(netns=netns)
        with self._lock:
            self._sockets.append(ipr)
        try:
            ipr.bind()
            for a in ipr.get_addr():
                self._record(node, "add", str(a.get_attr("IFA_ADDRESS")))
            while not self._stop.is_set():
                for msg in ipr.get():
                    kind = msg.get("event")
                    if kind in ("RTM_NEWADDR", "RTM_DELADDR"):
                        op = "add" if kind == "RTM_NEWADDR" else "del"
                        self._record(node, op, str(msg.get_attr("IFA_ADDRESS")))
        except OSError:
            if not self._stop.is_set():
                raise

    def _record(self, node: str, op: str, address: str) -> None:
        if address in (V4, V6):
            with self._lock:
                self.events.append((time.monotonic(), node, op, address))

    def detach(self, node: str, start: float, end: float = float("inf")) -> None:
        """Mark ``node`` as cut off the network (link down) in [start, end)."""
        self.detached[node].append((start, end))

    def holders(self, address: str) -> set[str]:
        held: set[str] = set()
        with self._lock:
            for _, node, op, a in self.events:
                if a == address:
                    (held.add if op == "add" else held.discard)(node)
        return held

    def overlaps(self, address: str) -> list[tuple[float, set[str]]]:
        """Moments when two or more attached nodes held ``address``."""
        with self._lock:
            events = sorted(e for e in self.events if e[3] == address)
        cuts = sorted({t for spans in self.detached.values() for s in spans for t in s})
        held: set[str] = set()
        bad = []
        points = sorted(
            [(t, "e", e) for t, *_ in events for e in [None]] + [(c, "c", None) for c in cuts]
        )
        index = 0
        for t, _, _ in points:
            while index < len(events) and events[index][0] <= t:
                _, node, op, _ = events[index]
                (held.add if op == "add" else held.discard)(node)
                index += 1
            attached = {n for n in held if not any(s <= t < e for s, e in self.detached[n])}
            if len(attached) > 1:
                bad.append((t, attached))
        return bad

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sockets = list(self._sockets)
        for ipr in sockets:
            ipr.close()
        for t in self._threads:
            t.join(2)


def agent(
    host: Host, zk: str, timeout: float = TIMEOUT, extra: tuple[str, ...] = ()
) -> EventProcess:
    """An `mhafail agent` in ``host``'s namespace with both VIPs."""
    argv = [
        sys.executable, "-m", "mhafail", "agent", "--zk", zk, "--cluster", "lab",
        "--node", host.name, "--vip", f"{V4}/24@eth0", "--vip", f"{V6}/64@eth0",
        "--session-timeout", str(timeout), "--claim-step", "0.05", "--events", *extra,
    ]  # fmt: skip
    return EventProcess(argv, name=host.name, prefix=["ip", "netns", "exec", host.netns])


class Client:
    """The prober in the client namespace."""

    def __init__(self, host: Host) -> None:
        self.records: list[dict[str, object]] = []
        self.proc = host.spawn(
            [sys.executable, str(HELPERS / "probe.py"), str(PORT), V4, V6],
            stdout=subprocess.PIPE,
        )
        self._stdin = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.records.append(json.loads(line))
        self.proc.stdout.close()

    def answers(self, target: str, since: float) -> list[tuple[float, str | None]]:
        return [
            (float(r["t"]), r["node"])  # type: ignore[arg-type]
            for r in list(self.records)
            if r.get("target") == target and float(r["t"]) >= since  # type: ignore[arg-type]
        ]

    def arp_requests(self, target: str, since: float) -> list[float]:
        return [
            float(r["t"])  # type: ignore[arg-type]
            for r in list(self.records)
            if r.get("arp_request") == target and float(r["t"]) >= since  # type: ignore[arg-type]
        ]


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


class Lab:
    """Three agents (``h1``-``h3``) with a banner server each, a client, a monitor."""

    def __init__(
        self,
        lab: NetnsLab,
        zk: ZooKeeperServer,
        timeout: float = TIMEOUT,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.lab = lab
        self.zk = zk
        self.timeout = timeout
        self.names = ["h1", "h2", "h3"]
        for name in self.names:
            lab[name].spawn([sys.executable, str(HELPERS / "banner.py"), name, str(PORT)])
        self.monitor = AddressMonitor(lab, self.names)
        self.agents = {n: agent(lab[n], zk.address, timeout, extra).start() for n in self.names}
        self.client = Client(lab["c1"])

    def fence_pid(self, name: str) -> int:
        """The pid of ``name``'s fence process (the agent's only child)."""
        pid = self.agents[name].pid
        assert pid is not None

        def child() -> int | None:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    kids = f.read().split()
                if kids:
                    return int(kids[0])
            return None

        wait_for(lambda: child() is not None, 10)
        found = child()
        assert found is not None
        return found

    def owner(self, address: str) -> str:
        wait_for(lambda: len(self.monitor.holders(address)) == 1)
        return next(iter(self.monitor.holders(address)))

    def new_owner(self, address: str, old: str, timeout: float = 20.0) -> str:
        wait_for(lambda: self.monitor.holders(address) - {old}, timeout)
        return next(iter(self.monitor.holders(address) - {old}))

    def client_reaches(self, target: str, node: str, since: float) -> float:
        wait_for(lambda: any(n == node for _, n in self.client.answers(target, since)), 20)
        return min(t for t, n in self.client.answers(target, since) if n == node)

    def assert_one_owner(self) -> None:
        for address in (V4, V6):
            assert self.monitor.overlaps(address) == [], f"two owners of {address}"
