"""``mhafail cmd``: send commands to nodes and read their replies; serve them on a node.

* ``send [--all | --node N | --select SEL] NAME [KEY=VALUE | KEY:=JSON ...] [--wait S]``
* ``get ID [--wait S] [--collect]``: any manager reads any request's replies.
* ``output ID NODE --secret-file F``: a node's whole output, also one too
  large for ZooKeeper (fetched from the node's reply channel).
* ``list``: the requests in the cache.
* ``cancel ID``.
* ``serve --node N --state-dir DIR``: a node that registers and runs the
  built-in commands (for tests, demos and nodes without an application).

Exit status of ``send`` and ``get``: 0 when every node asked answered
``ok``, 1 otherwise (some failed, refused or did not answer in time).
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
from typing import Any

from mhafail.cli._output import add_json_flag, emit
from mhafail.cli._zkargs import add_zk_flags, coordinator_for


def register(subparsers: Any) -> None:
    """Add ``cmd`` and its actions."""
    parser = subparsers.add_parser(
        "cmd",
        help="send commands to one node, a subcluster or all, and read the replies",
        description="Command delegation (docs/commands.md). Only operators may send.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = actions.add_parser("send", help="send a command; print the replies")
    add_zk_flags(p)
    add_json_flag(p)
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--all", action="store_true", help="every live member")
    target.add_argument("--node", metavar="N", help="one node")
    target.add_argument("--select", metavar="SEL", help="e.g. 'role=mta,dc=east' or 'mta-*'")
    p.add_argument("name", metavar="NAME", help="command name, e.g. ping or vip.show")
    p.add_argument("args", nargs="*", metavar="ARG", help="KEY=VALUE (text) or KEY:=JSON")
    p.add_argument("--wait", type=float, default=10.0, metavar="S", help="seconds to wait (0: no)")
    p.add_argument("--ttl", type=float, default=60.0, help="seconds a node may still start it")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a handler may run")
    p.add_argument("--manager", default="", help="manager name recorded in the request")
    p.add_argument(
        "--max-output", type=int, default=64 * 1024, metavar="BYTES",
        help="largest output per node; above 64 KiB it waits on the node's reply channel",
    )  # fmt: skip
    p.set_defaults(func=_send)

    p = actions.add_parser("get", help="print a request's replies (any manager)")
    add_zk_flags(p)
    add_json_flag(p)
    p.add_argument("id", metavar="ID")
    p.add_argument("--wait", type=float, default=0.0, metavar="S", help="wait for all replies")
    p.add_argument("--collect", action="store_true", help="delete the request after reading")
    p.set_defaults(func=_get)

    _register_output(actions)

    p = actions.add_parser("list", help="list cached requests")
    add_zk_flags(p)
    add_json_flag(p)
    p.set_defaults(func=_list)

    p = actions.add_parser("cancel", help="cancel a request")
    add_zk_flags(p)
    add_json_flag(p)
    p.add_argument("id", metavar="ID")
    p.set_defaults(func=_cancel)

    p = actions.add_parser("serve", help="node side: run the built-in commands until SIGTERM")
    add_zk_flags(p)
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--state-dir", required=True, help="run-once markers and the audit jlog")
    p.add_argument("--role", action="append", default=[], help="role or LABEL=VALUE (repeat)")
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.add_argument("--events", action="store_true", help="print JSON events on stdout")
    p.add_argument("--secret-file", help="serve large outputs on a reply channel with this secret")
    p.add_argument("--channel-listen", default="127.0.0.1:0", metavar="HOST:PORT")
    p.set_defaults(func=_serve)


def _register_output(actions: Any) -> None:
    p = actions.add_parser("output", help="print one node's whole output (any manager)")
    add_zk_flags(p)
    add_json_flag(p)
    p.add_argument("id", metavar="ID")
    p.add_argument("node", metavar="NODE")
    p.add_argument("--secret-file", help="the cluster's shared secret (mode 0600)")
    p.add_argument("--max-size", type=int, default=64 * 1024 * 1024, metavar="BYTES")
    p.set_defaults(func=_output)


def _coordinator(args: argparse.Namespace, **extra: Any) -> Any:

    return coordinator_for(args, **extra)


def _send(args: argparse.Namespace) -> int:
    from mhafail.commands import CommandClient, parse_cli_args

    payload = parse_cli_args(args.args)
    with _coordinator(args) as coordinator:
        client = CommandClient(coordinator=coordinator, name=args.manager)
        opts = {"ttl": args.ttl, "timeout": args.timeout, "max_output": args.max_output}
        if args.all:
            rid = client.broadcast(args.name, payload, **opts)
        elif args.node:
            rid = client.unicast(args.node, args.name, payload, **opts)
        else:
            rid = client.subcluster(args.select, args.name, payload, **opts)
        if args.wait <= 0:
            emit(args, {"id": rid}, lambda d: d["id"])
            return 0
        if not getattr(args, "json", False):
            print(f"request {rid}", file=sys.stderr, flush=True)
        result = client.wait(rid, args.wait)
    emit(args, result.to_dict(), _text)
    return _status(result)


def _get(args: argparse.Namespace) -> int:
    from mhafail.commands import CommandClient

    with _coordinator(args) as coordinator:
        client = CommandClient(coordinator=coordinator)
        result = client.wait(args.id, args.wait) if args.wait > 0 else client.get(args.id)
        if args.collect:
            client.delete(args.id)
    emit(args, result.to_dict(), _text)
    return _status(result)


def _output(args: argparse.Namespace) -> int:
    from mhafail.channel import ChannelSecurity, read_secret_file
    from mhafail.commands import CommandClient

    channel = None
    if args.secret_file is not None:
        channel = ChannelSecurity(secret=read_secret_file(args.secret_file))
    with _coordinator(args) as coordinator:
        client = CommandClient(coordinator=coordinator, channel=channel)
        value = client.fetch_output(args.id, args.node, max_size=args.max_size)
    emit(
        args, {"id": args.id, "node": args.node, "output": value}, lambda d: json.dumps(d["output"])
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    from mhafail.commands import CommandClient

    with _coordinator(args) as coordinator:
        summaries = CommandClient(coordinator=coordinator).list_requests()
    emit(args, {"requests": [s.to_dict() for s in summaries]}, _list_text)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from mhafail.commands import CommandClient

    with _coordinator(args) as coordinator:
        found = CommandClient(coordinator=coordinator).cancel(args.id)
    emit(args, {"id": args.id, "cancelled": found}, lambda d: f"cancelled {d['id']}")
    return 0 if found else 1


def _status(result: Any) -> int:
    ok = result.complete and all(r.status.value == "ok" for r in result.replies.values())
    return 0 if ok else 1


def _text(data: dict[str, Any]) -> str:
    lines = [f"request {data['id']}: {data['request']['command']}"]
    for node, reply in data["replies"].items():
        detail = reply["error"] if reply["status"] != "ok" else json.dumps(reply["output"])
        if reply.get("blob"):
            size = reply["blob"]["size"]
            detail = f"{size} bytes on the reply channel: mhafail cmd output {data['id']} {node}"
        cut = " (truncated)" if reply["truncated"] else ""
        lines.append(f"  {node:<16} {reply['status']:<9} {detail}{cut}")
    for node in data["running"]:
        lines.append(f"  {node:<16} running")
    for node in data["pending"]:
        lines.append(f"  {node:<16} no answer")
    for node in data["malformed"]:
        lines.append(f"  {node:<16} malformed reply (skipped)")
    return "\n".join(lines)


def _list_text(data: dict[str, Any]) -> str:
    if not data["requests"]:
        return "no cached requests"
    lines = [f"{'ID':<27} {'COMMAND':<16} {'REPLIES':>7}  {'BY':<12} AGE"]
    now = time.time()
    for r in data["requests"]:
        flag = " (cancelled)" if r["cancelled"] else ""
        lines.append(
            f"{r['id']:<27} {r['command']:<16} {r['replies']:>3}/{r['nodes']:<3}  "
            f"{r['requester']:<12} {now - r['created']:.0f}s{flag}"
        )
    return "\n".join(lines)


def _serve(args: argparse.Namespace) -> int:
    from mhafail.commands import CommandAgent, register_builtins
    from mhafail.coordination import Membership, NodeInfo

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    def event(name: str, **fields: Any) -> None:
        if args.events:
            line = json.dumps({"event": name, "t": time.monotonic(), **fields}, sort_keys=True)
            print(line, flush=True)

    coordinator = _coordinator(args, session_timeout=args.session_timeout).start()
    info = NodeInfo(
        name=args.node,
        roles=tuple(args.role),
        host=socket.gethostname(),
        pid=os.getpid(),
        started_at=time.time(),
    )
    membership = Membership(coordinator=coordinator, info=info).start()
    channel = None
    if args.secret_file is not None:
        from mhafail.channel import ChannelSecurity, read_secret_file

        channel = ChannelSecurity(secret=read_secret_file(args.secret_file))
    agent = CommandAgent(
        coordinator=coordinator,
        node=args.node,
        state_dir=args.state_dir,
        channel=channel,
        channel_listen=args.channel_listen,
    )
    register_builtins(agent, membership=membership)
    agent.add_listener(lambda r: event("reply", id=r.id, status=r.status.value))
    agent.start()
    event("ready", node=args.node)
    try:
        stop.wait()
    finally:
        # Each stop is bounded, so SIGTERM ends the process in seconds even
        # with ZooKeeper unreachable.
        agent.stop()
        membership.stop()
        coordinator.stop()
        event("stopped")
    return 0
