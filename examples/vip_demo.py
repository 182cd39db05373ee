"""DuraVIP demo: three nodes, one VIP, a client, a crash, a survivor answers.

As root it runs in network namespaces with real addresses, netlink and
gratuitous ARP: ``mhafail agent`` on three hosts, a banner service on each,
a client on the same bridge that connects to the VIP. Otherwise it runs on
loopback with the fake plumber: the same agents and election, and the
client asks ZooKeeper who owns the VIP and connects to that node's
loopback address. Everything it starts is stopped when it ends.

It runs with ZooKeeper credentials, as a deployment does: an operator
identity creates the cluster and asks who owns the VIP, the agents run
with the node identity ($MHAFAIL_ZK_AUTH), and nobody else may touch it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mhafail.coordination import Coordinator, Credentials, Role, write_credentials_pair
from mhafail.testing import NetnsLab, ZooKeeperServer, run_in_netns
from mhafail.vip import show

VIP = "198.18.0.200"
PORT = 2525
START = time.monotonic()
BANNER = (
    "import socket,sys\n"
    "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind((sys.argv[2], int(sys.argv[3]))); s.listen(64)\n"
    "while True:\n"
    "    c,_=s.accept(); c.sendall(('220 '+sys.argv[1]+' ready\\r\\n').encode()); c.close()\n"
)


def operator_credentials() -> Credentials:
    """Make an operator and a node credentials file; agents get the node's via the environment."""
    if "MHAFAIL_ZK_AUTH" in os.environ and "MHAFAIL_DEMO_OPERATOR" in os.environ:
        return Credentials.from_file(os.environ["MHAFAIL_DEMO_OPERATOR"])
    files = write_credentials_pair(tempfile.mkdtemp(prefix="mha-demo-auth-"))
    os.environ["MHAFAIL_ZK_AUTH"] = str(files[Role.NODE])
    os.environ["MHAFAIL_DEMO_OPERATOR"] = str(files[Role.OPERATOR])
    os.environ.pop("MHAFAIL_ZK_OPEN", None)
    return Credentials.from_file(files[Role.OPERATOR])


OPERATOR = operator_credentials()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.2f}s] {text}", flush=True)


def ask(address: str) -> str:
    """Connect to address:PORT and return the node named in its banner (or '-')."""
    try:
        with socket.create_connection((address, PORT), timeout=0.3) as s:
            return s.recv(64).decode().split()[1]
    except OSError:
        return "-"


class Agents:
    """Three `mhafail agent` processes (and their banner services)."""

    def __init__(self, zk: str, prefix: dict[str, list[str]], plumber: str) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.zk, self.prefix, self.plumber = zk, prefix, plumber

    def start(self, node: str) -> None:
        argv = [
            *self.prefix[node], sys.executable, "-m", "mhafail", "agent", "--zk", self.zk,
            "--cluster", "vipdemo", "--node", node, "--vip", f"{VIP}/24@eth0",
            "--session-timeout", "1.5", "--rebalance", "never", "--plumber", self.plumber,
        ]  # fmt: skip
        self.procs[node] = subprocess.Popen(argv, start_new_session=True)

    def kill(self, node: str) -> None:
        os.killpg(self.procs[node].pid, signal.SIGKILL)
        self.procs[node].wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def owner(zk: str) -> str | None:
    with Coordinator(hosts=zk, cluster="vipdemo", credentials=OPERATOR) as c:
        rows = [s for s in show(c) if s.address == VIP]
    return rows[0].owner if rows else None


def wait_owner(zk: str, not_node: str | None = None, timeout: float = 30) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        node = owner(zk)
        if node is not None and node != not_node:
            return node
        time.sleep(0.1)
    raise SystemExit("no owner elected in time")


def in_namespaces() -> None:
    say("root: three hosts and a client in network namespaces, real addresses")
    with NetnsLab(hosts=3, client=True, bridge_address="198.18.0.1/24") as lab:
        zk_dir = Path(tempfile.mkdtemp(prefix="mha-demo-zk-"))
        with ZooKeeperServer(host="198.18.0.1", netns=lab.lan, workdir=zk_dir) as zk:
            nodes = ["h1", "h2", "h3"]
            for node in nodes:
                lab[node].spawn([sys.executable, "-c", BANNER, node, "0.0.0.0", str(PORT)])  # noqa: S104 - inside the lab namespace
            prefixes = {n: ["ip", "netns", "exec", lab[n].netns] for n in nodes}
            agents = Agents(zk.address, prefixes, "netlink")
            run_in_netns(lab.lan, owner, zk.address)  # the operator creates the cluster
            try:
                for node in nodes:
                    agents.start(node)
                first = run_in_netns(lab.lan, wait_owner, zk.address)
                say(f"{VIP} is owned by {first}")
                client = lab["c1"].netns
                say(f"client 198.18.0.100 -> {VIP}:{PORT}: {run_in_netns(client, ask, VIP)}")
                say(f"crash: SIGKILL the agent on {first} and cut its link")
                agents.kill(first)
                lab[first].link_down()
                killed = time.monotonic()
                survivor = run_in_netns(lab.lan, wait_owner, zk.address, first)
                while run_in_netns(client, ask, VIP) != survivor:
                    time.sleep(0.05)
                took = time.monotonic() - killed
                say(
                    f"client reaches {survivor} via {VIP} after {took:.2f} s (learnt from the GARP)"
                )
            finally:
                agents.stop_all()


def on_loopback() -> None:
    say("not root: agents on loopback with the fake plumber (no real addresses)")
    record = Path(tempfile.mkdtemp(prefix="mha-demo-")) / "addresses"
    banners = []
    with ZooKeeperServer() as zk:
        nodes = {"n1": "127.0.0.11", "n2": "127.0.0.12", "n3": "127.0.0.13"}
        for node, addr in nodes.items():
            banners.append(subprocess.Popen([sys.executable, "-c", BANNER, node, addr, str(PORT)]))
        agents = Agents(zk.address, {n: [] for n in nodes}, f"fake:{record}")
        owner(zk.address)  # the operator creates the cluster (as `mhafail init` does)
        try:
            for node in nodes:
                agents.start(node)
            first = wait_owner(zk.address)
            say(f"{VIP} is owned by {first}; the client connects to it: {ask(nodes[first])}")
            say(f"crash: SIGKILL the agent on {first}")
            agents.kill(first)
            killed = time.monotonic()
            survivor = wait_owner(zk.address, first)
            took = time.monotonic() - killed
            say(f"{survivor} took {VIP} after {took:.2f} s; client reaches {ask(nodes[survivor])}")
        finally:
            agents.stop_all()
            for proc in banners:
                proc.kill()
                proc.wait()


def main() -> int:
    if os.geteuid() == 0:
        in_namespaces()
    else:
        on_loopback()
    say("VIP demo done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
