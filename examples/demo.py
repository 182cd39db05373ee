"""The mhafail demo: membership with a crash and a rejoin, then VIP failover.

Run it with ``bash scripts/bootstrap demo`` (or ``python examples/demo.py``
once mhafail is installed). It needs nothing running: it starts its own
ZooKeeper from Debian's package and stops everything it started.

Everything runs with ZooKeeper credentials (docs/security.md): the
observer is the operator and creates the cluster, the members run with the
node identity (their $MHAFAIL_ZK_AUTH file).
"""

from __future__ import annotations

import os
import socket
import sys
import time

from vip_demo import OPERATOR

from mhafail.console import Console, Users
from mhafail.coordination import ClusterView, Coordinator, Membership, NodeInfo
from mhafail.errors import MhafailError
from mhafail.testing import NodeProcess, ZooKeeperServer

CLUSTER = "demo"
SESSION_TIMEOUT = 1.5
START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.2f}s] {text}", flush=True)


def main() -> int:
    say("starting a local ZooKeeper (Debian's zookeeper.jar, run directly with java)")
    with ZooKeeperServer(tick_time=100) as zk:
        say(f"ZooKeeper serving on {zk.address}")
        nodes = [
            NodeProcess(zk=zk.address, cluster=CLUSTER, node=name, session_timeout=SESSION_TIMEOUT)
            for name in ("mta1", "mta2", "mta3")
        ]
        with Coordinator(hosts=zk.address, cluster=CLUSTER, credentials=OPERATOR) as coordinator:
            observer = Membership(
                coordinator=coordinator,
                info=NodeInfo(
                    name="observer", roles=("manager",), host=socket.gethostname(), pid=os.getpid()
                ),
            )

            def show(view: ClusterView) -> None:
                say(f"view {view.generation}: {', '.join(view.names)}")

            observer.add_listener(show)
            observer.start()
            # The cluster console (docs/console.md): log in as the operator.
            console = Console(
                coordinator=coordinator, users=Users.from_credentials(OPERATOR),
                name="demo-console", port=0, sample_period=2.0,
            ).start()  # fmt: skip
            auth = os.environ.get("MHAFAIL_DEMO_OPERATOR", "operator.auth")
            say(f"console: {console.url} (user {OPERATOR.user}, password in {auth})")
            try:
                for node in nodes:
                    node.start()
                    say(f"started {node.node} (pid {node.pid})")
                everyone = ("mta1", "mta2", "mta3", "observer")
                observer.wait_for(lambda v: v.names == everyone, 20)

                victim = nodes[2]
                say(
                    f"SIGKILL {victim.node}: its session lingers until the timeout "
                    f"({SESSION_TIMEOUT:g} s), then it leaves every view"
                )
                killed = time.monotonic()
                victim.kill()
                observer.wait_for(lambda v: victim.node not in v, 20)
                say(f"{victim.node} left after {time.monotonic() - killed:.2f} s")
                for node in nodes[:2]:
                    node.wait_view(["mta1", "mta2", "observer"], 10)
                say("the survivors agree: mta1, mta2, observer")

                say(f"restarting {victim.node}")
                victim.start()
                observer.wait_for(lambda v: v.names == everyone, 20)
                for node in nodes:
                    node.wait_view(list(everyone), 10)
                say("every node sees all four members again")
                if sys.stdin.isatty():
                    input(f"console still at {console.url}; press Enter to go on ")
            finally:
                console.stop()
                for node in nodes:
                    node.terminate()
                observer.stop()
    say("membership demo done")
    from vip_demo import main as vip_main

    return vip_main()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MhafailError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
