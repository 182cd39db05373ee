"""The cluster manager of the demo: logs, as_logger, the CIDR server and the console.

* a ``LogAggregator`` pulls every node's mainlog and rejectlog (jlogs) into
  ``<base>/logs/%Y/%m/%d/<log>/<cluster>/<node>``, each record exactly once;
* a ``ClusterAudit`` receiver gets every node's connection counts, so this
  process's ``conn`` series is the cluster-wide one; an ``ASLogger`` writes
  it to snapshot files every ``--log-interval`` seconds;
* a ``CidrServer`` answers cidr_cli queries over those files on
  ``--cidr-port`` (``/query?q=show+count+for+198.18.0.0/24+in+conn``);
* with ``--console-port``, the web ``Console`` beside it (members, VIPs,
  config, logs, CIDR queries over the same snapshots) and, through it,
  command delegation to one node, a subcluster or all (docs/console.md,
  docs/commands.md); users log in with ZooKeeper identities (this
  manager's operator credentials among them).

It runs with the operator identity (managers register ``managers/<name>``,
which nodes may not). Prints ``{"event": "ready", ...}`` once it serves and
stops within seconds of SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

from mhafail.audit import (
    ASLogger,
    AuditSeries,
    CidrServer,
    ClusterAudit,
    QueryEngine,
    SnapshotStore,
)
from mhafail.channel import read_secret_file
from mhafail.console import Console, Users
from mhafail.coordination import Coordinator, Credentials, Membership, NodeInfo
from mhafail.logs import LogAggregator


def main() -> None:
    """Run the manager until SIGTERM or SIGINT."""
    p = argparse.ArgumentParser(description="mhafail demo cluster manager")
    p.add_argument("--zk", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--zk-auth", required=True, help="operator credentials")
    p.add_argument("--secret-file", required=True, help="cluster secret for logs and audit")
    p.add_argument("--name", default="mgr1", help="manager name (its jlog subscriber)")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on")
    p.add_argument("--base", required=True, help="where logs and audit snapshots go")
    p.add_argument("--cidr-port", type=int, default=0, help="CIDR server port (0: any)")
    p.add_argument("--log-interval", type=float, default=60.0)
    p.add_argument("--console-port", type=int, help="serve the console on this port (0: any)")
    args = p.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    secret = read_secret_file(args.secret_file)
    base = Path(args.base)
    credentials = Credentials.from_file(args.zk_auth)
    coordinator = Coordinator(
        hosts=args.zk, cluster=args.cluster, session_timeout=3.0, credentials=credentials
    ).start()
    conn = AuditSeries(
        "conn", window_seconds=60, windows=5, export_increments=True, track_intervals=True
    )
    audit = ClusterAudit(
        node=args.name, series=[conn], listen=f"{args.address}:0", secret=secret
    ).start()
    info = NodeInfo(name=args.name, roles=("manager",), endpoints=audit.endpoints())
    membership = Membership(coordinator=coordinator, info=info).start()
    audit.follow(membership)
    aggregator = LogAggregator(
        coordinator=coordinator, membership=membership, name=args.name,
        base=base / "logs", secret=secret,
    ).start()  # fmt: skip
    store = SnapshotStore(root=base / "audit")
    as_logger = ASLogger(store=store, series=[conn], log_interval=args.log_interval)
    as_logger.start()
    cidr = CidrServer(engine=QueryEngine(store=store), host=args.address, port=args.cidr_port)
    cidr.start()
    console = None
    if args.console_port is not None:
        console = Console(
            coordinator=coordinator, users=Users.from_credentials(credentials),
            name=args.name, host=args.address, port=args.console_port,
            audit=QueryEngine(store=store),
        ).start()  # fmt: skip
    ready = {"event": "ready", "t": time.monotonic(), "name": args.name, "cidr": cidr.url,
             "console": console.url if console is not None else None}  # fmt: skip
    print(json.dumps(ready), flush=True)
    stop.wait()
    if console is not None:
        console.stop()
    cidr.stop()
    as_logger.stop()
    aggregator.stop()
    membership.stop()
    audit.stop(flush_timeout=0.5)
    coordinator.stop()
    print(json.dumps({"event": "stopped", "t": time.monotonic()}), flush=True)


if __name__ == "__main__":
    main()
