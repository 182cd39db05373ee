"""``mhafail zk serve``: a local standalone ZooKeeper for development and demos."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mhafail.cli._signals import stop_on_signals
from mhafail.errors import InvalidArgument


def register(subparsers: Any) -> None:
    """Add ``zk serve``."""
    zk = subparsers.add_parser("zk", help="run a local ZooKeeper")
    sub = zk.add_subparsers(dest="zk_command", metavar="ACTION", required=True)
    serve = sub.add_parser(
        "serve",
        help="run a standalone ZooKeeper in the foreground until SIGTERM or Ctrl-C",
        description="Run a standalone ZooKeeper (Debian's zookeeper package) in the "
        "foreground. Prints its address, stops cleanly on SIGTERM or Ctrl-C.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    serve.add_argument(
        "--tick-time", type=int, default=200, help="tickTime in ms; sessions may last 2-20 ticks"
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from mhafail.testing import ZooKeeperServer, free_port

    if args.port is not None and not 0 < args.port < 65536:
        raise InvalidArgument(f"--port {args.port}: not in 1-65535")
    if not 2 <= args.tick_time <= 60000:
        raise InvalidArgument(f"--tick-time {args.tick_time}: use 2 to 60000 ms")
    stop = stop_on_signals()
    server = ZooKeeperServer(
        tick_time=args.tick_time, host=args.host, port=args.port or free_port(args.host)
    )
    try:
        server.start()
        print(f"zookeeper serving on {server.address} (tickTime {args.tick_time} ms)", flush=True)
        while not stop.wait(0.5):
            if not server.running:
                print(f"zookeeper exited:\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.cleanup()
    print("zookeeper stopped", flush=True)
    return 0
