"""A full cluster node for the console tests: VIPs, config, a served jlog and commands.

Run: ``python console_node.py --zk HOSTS --cluster C --node N --state-dir D``
(an open cluster). It joins with roles ``mta`` and ``dc=<--dc>``, declares
``--vip`` addresses on a FakePlumber, replicates the config repository
``mta`` (git daemon on loopback), serves a jlog ``mail`` holding
``--records`` unread records for the subscribers ``mgr-a`` and ``mgr-b``,
and runs a CommandAgent with every built-in. One JSON event per line on
stdout (``ready``, ``acquire``, ``release``, ``stopped``); SIGTERM stops it.
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
from pathlib import Path
from typing import Any

from mhafail.commands import Arg, CommandAgent, CommandContext, register_builtins
from mhafail.config import ConfigAgent, ConfigRepository, GitDaemon
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.logs import JlogService, ensure_log
from mhafail.testing import FakeNetwork, FakePlumber
from mhafail.vip import RebalancePolicy, VipManager, parse_vip

REPO = "mta"
MANAGERS = ("mgr-a", "mgr-b")


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event line."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def main() -> int:
    """Serve until SIGTERM."""
    parser = argparse.ArgumentParser()
    for flag in ("--zk", "--cluster", "--node", "--state-dir", "--net"):
        parser.add_argument(flag, required=True)
    parser.add_argument("--vip", action="append", default=[])
    parser.add_argument("--dc", default="east")
    parser.add_argument("--records", type=int, default=0)
    parser.add_argument("--session-timeout", type=float, default=1.0)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    state = Path(args.state_dir)
    state.mkdir(parents=True, exist_ok=True)

    coordinator = Coordinator(
        hosts=args.zk, cluster=args.cluster, open_acl=True,
        session_timeout=args.session_timeout, request_timeout=1.0,
    ).start()  # fmt: skip
    repository = ConfigRepository(
        name=REPO, base=state / "config", node=args.node, coordinator=coordinator
    ).init()
    daemon = GitDaemon(base=state / "config", host="127.0.0.1", port=0).start()
    jlog = ensure_log(state / "jlog" / "mail", MANAGERS)
    if args.records:
        writer = jlog.writer()
        writer.write_many([f"record {i}".encode() for i in range(args.records)])
        writer.close()
    service = JlogService(
        node=args.node, logs={"mail": state / "jlog" / "mail"}, managers=MANAGERS,
        allow_unauthenticated=True,
    ).start()  # fmt: skip
    vips = [parse_vip(v) for v in args.vip]
    info = NodeInfo(
        name=args.node,
        addresses=["127.0.0.1"],
        interfaces=sorted({v.interface for v in vips}),
        roles=("mta", f"dc={args.dc}"),
        version="1.0-test",
        started_at=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
        endpoints={"git": daemon.endpoint, "jlog": service.endpoint},
    )
    membership = Membership(coordinator=coordinator, info=info).start()
    config = ConfigAgent(repository=repository, membership=membership).start()
    ifaces = {v.interface: [f"{v.network.network_address}/{v.network.prefixlen}"] for v in vips}
    manager = VipManager(
        coordinator=coordinator,
        membership=membership,
        plumber=FakePlumber(FakeNetwork(path=args.net), args.node, ifaces),
        vips=vips,
        rebalance=RebalancePolicy.parse("never"),
        validate_host=False,
    )
    manager.on_acquire(lambda v: emit("acquire", address=v.key))
    manager.on_release(lambda v: emit("release", address=v.key))
    manager.start()
    agent = CommandAgent(
        coordinator=coordinator, node=args.node, state_dir=state / "commands", period=0.5
    )
    register_builtins(agent, membership=membership, config_agents=[config], jlog_service=service)

    # What the console's rollback needs; the application registers it (docs/console.md).
    @agent.command(
        "config.rollback",
        [Arg("repo", pattern=r"[A-Za-z0-9_.-]{1,64}"), Arg("sha", pattern=r"[0-9a-f]{40}")],
    )
    def rollback(ctx: CommandContext, a: dict[str, Any]) -> Any:
        if a["repo"] != REPO:
            raise LookupError(f"no config repository {a['repo']!r} on {args.node}")
        who = ctx.request.requester.manager or ctx.request.requester.user
        commit = repository.rollback(a["sha"], author=f"{who} <console@mhafail.invalid>")
        return {"sha": commit.sha, "parent": commit.parent}

    agent.start()
    emit("ready", node=args.node, pid=os.getpid())
    stop.wait()
    agent.stop()
    manager.stop(release=True)
    config.stop()
    membership.stop()
    service.stop()
    daemon.stop()
    coordinator.stop()
    emit("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
