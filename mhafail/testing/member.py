"""A minimal cluster member process, for tests, the demo and benchmarks.

``python -m mhafail.testing.member --zk HOSTS --cluster C --node N`` joins
the cluster and prints one JSON object per line on stdout for every event:
``ready``, ``view`` (members, generation), ``state``, ``lease``, ``session``
and finally ``stopped``. Every event carries ``t``, a ``time.monotonic()``
reading, which all processes on one Linux host share, so tests can order
events across processes. SIGTERM leaves the cluster cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from mhafail.coordination import (
    ClusterView,
    ConnectionState,
    Coordinator,
    Credentials,
    LeaseState,
    Membership,
    NodeInfo,
)

_out_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Print one event line (thread-safe) and flush it."""
    line = json.dumps({"event": event, "t": time.monotonic(), **fields}, sort_keys=True)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a member until SIGTERM or SIGINT; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m mhafail.testing.member")
    parser.add_argument("--zk", required=True, help="ZooKeeper hosts")
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--session-timeout", type=float, default=2.0)
    parser.add_argument("--role", action="append", default=[])
    parser.add_argument(
        "--zk-auth",
        default=os.environ.get("MHAFAIL_ZK_AUTH"),
        help="credentials file (default $MHAFAIL_ZK_AUTH; without it: an open cluster)",
    )
    args = parser.parse_args(argv)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    coordinator = Coordinator(
        hosts=args.zk,
        cluster=args.cluster,
        session_timeout=args.session_timeout,
        credentials=Credentials.from_file(args.zk_auth) if args.zk_auth else None,
        open_acl=not args.zk_auth,
    )
    coordinator.add_state_listener(lambda s: emit("state", state=ConnectionState(s).value))
    coordinator.add_lease_listener(lambda s: emit("lease", state=LeaseState(s).value))
    coordinator.add_session_listener(lambda sid: emit("session", session=sid))
    coordinator.start()
    info = NodeInfo(
        name=args.node,
        roles=args.role,
        started_at=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    membership = Membership(coordinator=coordinator, info=info)

    def on_view(view: ClusterView) -> None:
        emit("view", members=list(view.names), generation=view.generation)

    membership.add_listener(on_view)
    membership.start()
    emit("ready", node=args.node, session=coordinator.session_id, pid=os.getpid())
    stop.wait()
    membership.stop()
    coordinator.stop()
    emit("stopped", node=args.node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
