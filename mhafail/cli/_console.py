"""``mhafail console``: the web UI and JSON API beside a manager (docs/console.md).

Runs in the foreground until SIGTERM or Ctrl-C, then stops within a few
seconds (bounded, even with ZooKeeper unreachable). With ``--json`` it
prints one ``{"event": "ready", "url": ...}`` line when serving, for tests
and scripts.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mhafail.cli._output import add_json_flag
from mhafail.cli._zkargs import add_zk_flags, zk_security
from mhafail.errors import ConsoleInvalidArgument

# mhafail.console.DEFAULT_PORT (a test keeps them equal). Not imported: that
# loads the whole console (vip, commands, config, git) for every command.
DEFAULT_PORT = 8480


def register(subparsers: Any) -> None:
    """Add ``console``."""
    p = subparsers.add_parser(
        "console",
        help="serve the cluster console (web UI and JSON API) beside a manager",
        description="Serve the cluster console for one cluster: members, VIPs, config "
        "drift, log lag, CIDR queries and commands, over a versioned JSON API and "
        "pages. Users log in with the cluster's ZooKeeper identities (operators act, "
        "node identities and --users readers only look). Binds 127.0.0.1 by default.",
    )
    add_zk_flags(p)
    add_json_flag(p)
    p.add_argument(
        "--listen",
        default=f"127.0.0.1:{DEFAULT_PORT}",
        metavar="ADDR:PORT",
        help=f"where to serve (default 127.0.0.1:{DEFAULT_PORT}; port 0: a free one)",
    )
    p.add_argument("--name", help="console (manager) name; default console-HOST-PORT")
    p.add_argument(
        "--users", metavar="FILE", help="extra users: 'operators = IDS', 'readers = IDS'"
    )
    p.add_argument("--audit-dir", type=Path, help="audit snapshot directory for CIDR queries")
    p.add_argument("--sample-period", type=float, default=15.0, help="seconds between samples")
    p.add_argument("--tls-cert", metavar="FILE", help="HTTPS certificate chain (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="HTTPS private key (PEM, mode 0600)")
    p.add_argument(
        "--plain-http",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (behind a TLS proxy only)",
    )
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.set_defaults(func=_console)


def _listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConsoleInvalidArgument(f"--listen {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:8480")
    return host, int(port)


def _console(args: argparse.Namespace) -> int:
    from mhafail.audit import QueryEngine, SnapshotStore
    from mhafail.console import Console, Users
    from mhafail.console._auth import users_for
    from mhafail.coordination import Coordinator

    host, port = _listen(args.listen)
    security = zk_security(args)
    extra = [Users.from_file(args.users)] if args.users else []
    users = users_for(security.get("credentials"), extra)
    name = (
        args.name or re.sub(r"[^A-Za-z0-9_.-]", "-", f"console-{socket.gethostname()}-{port}")[:63]
    )
    audit = None
    if args.audit_dir is not None:
        if not args.audit_dir.is_dir():
            raise ConsoleInvalidArgument(f"--audit-dir {args.audit_dir}: not a directory")
        audit = QueryEngine(store=SnapshotStore(root=args.audit_dir))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    coordinator = Coordinator(
        hosts=args.zk,
        cluster=args.cluster,
        connect_timeout=args.connect_timeout,
        session_timeout=args.session_timeout,
        **security,
    ).start()
    console = None
    try:
        console = Console(
            coordinator=coordinator,
            users=users,
            name=name,
            host=host,
            port=port,
            audit=audit,
            sample_period=args.sample_period,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            allow_plain_http=args.plain_http,
        ).start()
        if args.json:
            line = {"event": "ready", "url": console.url, "name": name, "t": time.monotonic()}
            print(json.dumps(line), flush=True)
        else:
            print(f"console {name} serving on {console.url}", flush=True)
        stop.wait()
    finally:
        # Each stop is bounded, so SIGTERM ends the process in seconds even
        # with ZooKeeper unreachable.
        if console is not None:
            console.stop()
        coordinator.stop()
    if args.json:
        print(json.dumps({"event": "stopped", "t": time.monotonic()}), flush=True)
    else:
        print("console stopped", file=sys.stderr, flush=True)
    return 0
