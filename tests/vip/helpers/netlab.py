"""The VIP namespace lab: agents, client and address monitor (root; on pytest's pythonpath).

Three nodes and a client on a bridge (198.18.0.0/24, 2001:db8::/64), and a
ZooKeeper on the bridge. The nemesis kit's monitor follows every node's
address notifications in kernel order on one netlink socket, and its ARP
observer probes the VIPs from the client every 15 ms; the one-owner
invariant is checked on both: no two network-attached nodes ever hold a
VIP, and no two MACs ever answer one probe. The client never touches its
neighbour cache: it reaches a new owner only through the announcement.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mhafail.testing import EventProcess, Host, NetnsLab, ZooKeeperServer
from mhafail.testing.nemesis import ArpObserver, OverlapMonitor

V4 = "198.18.0.200"
V6 = "2001:db8::200"
PORT = 2525
TIMEOUT = 1.0  # session timeout (s)
ZK = "198.18.0.1"  # the ZooKeeper on the bridge
HELPERS = Path(__file__).parent


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
        # Kernel-ordered, across every namespace, on one netlink socket; a
        # node whose bridge port is down counts as detached (not an owner).
        self.monitor = OverlapMonitor.for_lab(lab, self.names, [V4, V6])
        # Two MACs answering one ARP/ND probe is two owners as clients see it.
        macs = {f"02:18:00:00:00:{10 + i:02x}": f"h{i}" for i in (1, 2, 3)}
        self.observer = ArpObserver(lab["c1"], [V4, V6], macs=macs)
        self.agents = {n: agent(lab[n], zk.address, timeout, extra).start() for n in self.names}
        self.client = Client(lab["c1"])

    def fence_pid(self, name: str) -> int:
        """The pid of ``name``'s fence process (the agent's only child)."""
        pid = self.agents[name].pid
        assert pid is not None

        def child() -> int | None:
            for task in os.listdir(f"/proc/{pid}/task"):
                try:
                    with open(f"/proc/{pid}/task/{task}/children") as f:
                        kids = f.read().split()
                except FileNotFoundError:
                    continue  # the thread ended after the listing
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
            overlaps = self.monitor.overlaps(address)
            if overlaps:
                trail = [e for e in self.monitor.events if e.address in ("", address)]
                raise AssertionError(f"two owners of {address}: {overlaps}; events: {trail}")
        assert self.observer.conflicts == [], f"two MACs answered: {self.observer.conflicts}"
        assert self.monitor.lost is None, self.monitor.lost

    def close(self) -> None:
        """Stop the monitor and the observer."""
        self.observer.close()
        self.monitor.close()


def cut_from_zookeeper(lab: Lab, name: str) -> Callable[[], None]:
    """Blackhole ZooKeeper for ``name`` (clients still reach it); returns the undo."""
    host = lab.lab[name]
    host.run(["ip", "route", "add", "blackhole", f"{ZK}/32"])
    return lambda: host.run(["ip", "route", "del", "blackhole", f"{ZK}/32"], check=False)
