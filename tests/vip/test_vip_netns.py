"""DuraVIP with real agents, real addresses and a real client, in network namespaces (root).

Three nodes and a client on a bridge (198.18.0.0/24, 2001:db8::/64), and a
ZooKeeper on the bridge. A monitor follows every node's address
notifications (RTM_NEWADDR/RTM_DELADDR) from outside the agents; the
one-owner invariant is checked on that record: no two network-attached
nodes ever hold a VIP at the same time. The client never touches its
neighbour cache: it reaches a new owner only through the announcement.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute

from mhafail.testing import EventProcess, Host, NetnsLab, ZooKeeperServer

pytestmark = [pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

V4 = "198.18.0.200"
V6 = "2001:db8::200"
PORT = 2525
TIMEOUT = 1.0  # session timeout (s)
HELPERS = Path(__file__).parent / "helpers"


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


def agent(host: Host, zk: str) -> EventProcess:
    """An `mhafail agent` in ``host``'s namespace with both VIPs."""
    argv = [
        sys.executable, "-m", "mhafail", "agent", "--zk", zk, "--cluster", "lab",
        "--node", host.name, "--vip", f"{V4}/24@eth0", "--vip", f"{V6}/64@eth0",
        "--session-timeout", str(TIMEOUT), "--claim-step", "0.05", "--events",
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
    def __init__(self, lab: NetnsLab, zk: ZooKeeperServer) -> None:
        self.lab = lab
        self.zk = zk
        self.names = ["h1", "h2", "h3"]
        for name in self.names:
            lab[name].spawn([sys.executable, str(HELPERS / "banner.py"), name, str(PORT)])
        self.monitor = AddressMonitor(lab, self.names)
        self.agents = {n: agent(lab[n], zk.address).start() for n in self.names}
        self.client = Client(lab["c1"])

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


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    with NetnsLab(hosts=3, client=True, bridge_address="198.18.0.1/24") as netns:
        zk = ZooKeeperServer(
            tick_time=100, host="198.18.0.1", netns=netns.lan, workdir=tmp_path / "zk"
        )
        with zk:
            lab = Lab(netns, zk)
            try:
                yield lab
            finally:
                lab.monitor.close()
                for proc in lab.agents.values():
                    proc.kill()


def test_crash_fails_over_through_the_announcement_alone(lab: Lab) -> None:
    """SIGKILL plus link down: a survivor takes both VIPs; the client follows its GARP/NA."""
    old = lab.owner(V4)
    assert lab.owner(V6) in lab.names
    lab.client_reaches(V4, old, 0)
    fault = time.monotonic()
    lab.agents[old].kill()
    lab.lab[old].link_down()
    lab.monitor.detach(old, fault)
    new = lab.new_owner(V4, old)
    first = lab.client_reaches(V4, new, fault)
    lab.client_reaches(V6, lab.new_owner(V6, old), fault)
    # The client learnt the new MAC from the gratuitous ARP: it never asked.
    assert (
        lab.client.arp_requests(V4, fault) == [] or min(lab.client.arp_requests(V4, fault)) > first
    )
    lab.assert_one_owner()


def test_paused_owner_is_fenced_before_its_session_expires(lab: Lab) -> None:
    """An agent paused past the session timeout is fenced before anyone else adds its VIPs."""
    old = lab.owner(V4)
    fault = time.monotonic()
    lab.agents[old].pause()
    try:
        new = lab.new_owner(V4, old)
        time.sleep(TIMEOUT)
    finally:
        lab.agents[old].resume()
    lab.client_reaches(V4, new, fault)
    time.sleep(2 * TIMEOUT)  # the resumed agent must not take anything back wrongly
    lab.assert_one_owner()
    assert len(lab.monitor.holders(V4)) == 1


def test_owner_cut_off_from_zookeeper_but_not_from_clients(lab: Lab) -> None:
    """An owner that loses ZooKeeper (clients still reach it) gives the VIP up in time."""
    old = lab.owner(V4)
    host = lab.lab[old]
    fault = time.monotonic()
    host.run(["ip", "route", "add", "blackhole", "198.18.0.1/32"])
    try:
        new = lab.new_owner(V4, old)
        lab.client_reaches(V4, new, fault)
    finally:
        host.run(["ip", "route", "del", "blackhole", "198.18.0.1/32"])
    time.sleep(2 * TIMEOUT)
    lab.assert_one_owner()


def test_planned_move_and_rejoin_keep_one_owner(lab: Lab) -> None:
    """`mhafail vip move` hands over without overlap; a restarted node rejoins cleanly."""
    old = lab.owner(V4)
    target = next(n for n in lab.names if n != old)
    start = time.monotonic()
    subprocess.run(
        ["ip", "netns", "exec", lab.lab.lan, sys.executable, "-m", "mhafail", "vip", "move",
         "--zk", lab.zk.address, "--cluster", "lab", V4, target, "--wait", "10"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert lab.owner(V4) == target
    lab.client_reaches(V4, target, start)
    lab.agents[old].terminate()
    lab.agents[old].start()
    time.sleep(2 * TIMEOUT)
    lab.assert_one_owner()
    status = subprocess.run(
        ["ip", "netns", "exec", lab.lab.lan, sys.executable, "-m", "mhafail", "vip", "show",
         "--zk", lab.zk.address, "--cluster", "lab", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = {r["address"]: r for r in json.loads(status)["vips"]}
    assert rows[V4]["owner"] == target and rows[V4]["state"] == "owned"
    assert set(rows[V6]["declared_by"]) == set(lab.names)
