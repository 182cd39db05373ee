"""A node process for the command tests: built-ins plus ``test.slow``, JSON events on stdout.

``test.slow seconds=S`` appends the request id to ``--count-file`` (fsynced)
before it waits, so a test can count executions across crashes.
``test.big size=N`` answers a string of N characters; with ``--secret-file``
the node serves outputs over 64 KiB on its reply channel (``--channel-listen``).
Run: ``python cmd_node.py --zk HOSTS --cluster C --node N --state-dir D --count-file F``
(an open cluster; the tests set MHAFAIL_ZK_OPEN).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from typing import Any

from mhafail.channel import ChannelSecurity, read_secret_file
from mhafail.commands import Arg, ArgKind, CommandAgent, CommandContext, register_builtins
from mhafail.coordination import Coordinator, LeaseState, Membership, NodeInfo


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event line."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def main() -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser()
    for flag in ("--zk", "--cluster", "--node", "--state-dir", "--count-file"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--session-timeout", type=float, default=1.0)
    parser.add_argument("--secret-file")
    parser.add_argument("--channel-listen", default="127.0.0.1:0")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    coordinator = Coordinator(
        hosts=args.zk, cluster=args.cluster, open_acl=True,
        session_timeout=args.session_timeout, request_timeout=1.0,
    ).start()  # fmt: skip
    coordinator.add_lease_listener(lambda s: emit("lease", state=s.value))
    membership = Membership(coordinator=coordinator, info=NodeInfo(name=args.node)).start()
    channel = None
    if args.secret_file:
        channel = ChannelSecurity(secret=read_secret_file(args.secret_file))
    agent = CommandAgent(
        coordinator=coordinator,
        node=args.node,
        state_dir=args.state_dir,
        period=0.5,
        channel=channel,
        channel_listen=args.channel_listen,
    )
    register_builtins(agent, membership=membership)

    @agent.command("test.slow", [Arg("seconds", ArgKind.FLOAT)])
    def slow(ctx: CommandContext, a: dict[str, Any]) -> Any:
        fd = os.open(args.count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, ctx.request.id.encode() + b"\n")
        os.fsync(fd)
        os.close(fd)
        emit("started", id=ctx.request.id)
        ctx.cancelled.wait(a["seconds"])
        return "slept"

    @agent.command("test.big", [Arg("size", ArgKind.INT, maximum=64 * 1024 * 1024)])
    def big(ctx: CommandContext, a: dict[str, Any]) -> Any:
        return "x" * a["size"]

    agent.add_listener(lambda r: emit("reply", id=r.id, status=r.status.value))
    agent.start()
    emit("ready", lease=LeaseState.VALID.value, channel=agent.channel_endpoint)
    stop.wait()
    began = time.monotonic()
    agent.stop()
    membership.stop()
    coordinator.stop()
    emit("stopped", took=time.monotonic() - began)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
