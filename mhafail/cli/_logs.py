"""``mhafail logs``: serve a node's jlogs, run a manager, watch the backlog, tail a log.

* ``serve``: node side, a :class:`~mhafail.logs.JlogService` registered as a member.
* ``manager``: manager side, a :class:`~mhafail.logs.LogAggregator` from flags or a TOML file.
* ``status``: every node's subscribers with backlog and lag, and the live managers.
* ``tail``: follow one node's log live (a ghost reader on the node; holds nothing back).
* ``decommission``: remove a manager's subscriber from local jlogs, releasing its retention.

Long-running commands print one JSON line ``{"event": "ready", ...}`` once
serving and stop cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mhafail.cli._output import add_json_flag, emit
from mhafail.cli._signals import STOP_CLOSE, STOP_ZK_TIMEOUT, stop_on_signals
from mhafail.cli._zkargs import add_zk_flags, add_zk_security_flags, coordinator_for, zk_security
from mhafail.errors import LogsInvalidArgument

#: Largest member znode read by ``logs status`` and ``logs tail`` (bytes).
MAX_MEMBER_INFO = 64 * 1024
#: Seconds the node service has to end its sessions when stopping.
STOP_SERVICE = 1.5

# Manager settings a config file may hold, with their types and defaults.
_MANAGER_KEYS: dict[str, tuple[type, Any]] = {
    "zk": (str, None),
    "cluster": (str, None),
    "name": (str, None),
    "base": (str, None),
    "pattern": (str, "%Y/%m/%d/{log}/{cluster}/{node}"),
    "state_dir": (str, None),
    "logs": (list, None),
    "secret_file": (str, None),
    "file_mode": (str, "0640"),
    "dir_mode": (str, "0750"),
    "max_open_files": (int, 256),
    "idle_close": (float, 60.0),
    "commit_records": (int, 16384),
    "commit_delay": (float, 0.05),
    "heartbeat": (float, 1.0),
    "retry": (float, 0.5),
    "session_timeout": (float, 10.0),
    "member_name": (str, None),
    "max_frame": (int, 4 * 1024 * 1024),
    "framing": (str, "escaped"),
}


def register(subparsers: Any) -> None:
    """Add ``logs`` and its actions."""
    parser = subparsers.add_parser(
        "logs",
        help="central log aggregation: serve jlogs, run a manager, status, tail",
        description="Nodes serve their jlogs; managers pull them into one tree, exactly once.",
    )
    actions = parser.add_subparsers(dest="logs_action", metavar="ACTION", required=True)

    _register_serve(actions)
    _register_manager(actions)
    _register_tools(actions)


def _register_serve(actions: Any) -> None:
    p = actions.add_parser("serve", help="node side: serve this node's jlogs to managers")
    add_zk_flags(p)
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    p.add_argument("--advertise", metavar="HOST:PORT", help="endpoint managers connect to")
    p.add_argument(
        "--log", action="append", default=[], metavar="NAME=PATH", help="a jlog to serve"
    )
    p.add_argument(
        "--manager", action="append", default=[], help="manager (subscriber) name to create"
    )
    p.add_argument("--secret-file", help="shared secret managers must prove (mode 0600)")
    p.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="serve without a secret: loopback --listen only (any local user may connect)",
    )
    p.add_argument("--session-timeout", type=float, default=10.0)
    p.add_argument("--heartbeat", type=float, default=1.0)
    p.add_argument("--poll-interval", type=float, default=0.05)
    p.add_argument("--busy-poll-interval", type=float, default=0.005)
    p.add_argument(
        "--max-frame",
        type=int,
        default=4 * 1024 * 1024,
        help="largest frame sent or accepted (bytes; bigger records go in parts)",
    )
    p.set_defaults(func=_serve)


def _register_manager(actions: Any) -> None:
    p = actions.add_parser("manager", help="manager side: pull every node's logs into files")
    p.add_argument("--config", type=Path, help="TOML file with the settings below")
    p.add_argument("--zk", metavar="HOSTS")
    p.add_argument("--cluster")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--name", help="manager name (its subscriber name on every node)")
    p.add_argument("--base", help="output directory")
    p.add_argument("--pattern", help="output path pattern under base")
    p.add_argument("--state-dir")
    p.add_argument("--log", dest="logs", action="append", help="pull only this log")
    p.add_argument("--secret-file")
    p.add_argument("--file-mode", help="octal, e.g. 0640")
    p.add_argument("--dir-mode", help="octal, e.g. 0750")
    p.add_argument("--max-open-files", type=int)
    p.add_argument("--idle-close", type=float)
    p.add_argument("--commit-records", type=int)
    p.add_argument("--commit-delay", type=float)
    p.add_argument("--heartbeat", type=float)
    p.add_argument("--retry", type=float)
    p.add_argument("--session-timeout", type=float)
    p.add_argument("--member-name", help="member name (default: the manager name)")
    p.add_argument(
        "--max-frame", type=int, help="largest frame accepted from a node (bytes; default 4 MiB)"
    )
    p.add_argument(
        "--framing",
        choices=["escaped", "length", "lines"],
        help="record layout in the files: escaped (default), length, or lines (ambiguous)",
    )
    add_zk_security_flags(p)
    p.set_defaults(func=_manager)


def _register_tools(actions: Any) -> None:
    p = actions.add_parser("status", help="backlog per node, log and subscriber; live managers")
    add_zk_flags(p)
    p.add_argument("--secret-file")
    add_json_flag(p)
    p.set_defaults(func=_status)

    p = actions.add_parser("tail", help="follow one node's log live (holds nothing back)")
    add_zk_flags(p)
    p.add_argument("--node", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("-n", type=int, default=0, help="also print up to N of the newest records")
    p.add_argument("--count", type=int, help="exit after printing this many records")
    p.add_argument(
        "--framing",
        choices=["escaped", "length", "lines"],
        default="escaped",
        help="record layout: escaped (default), length, or lines (ambiguous)",
    )
    p.add_argument("--secret-file")
    p.set_defaults(func=_tail)

    p = actions.add_parser(
        "decommission", help="remove a manager's subscriber from local jlogs (frees retention)"
    )
    p.add_argument("--manager", required=True)
    p.add_argument("paths", nargs="+", type=Path, metavar="JLOG")
    add_json_flag(p)
    p.set_defaults(func=_decommission)


def _ready(**fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": "ready", **fields}, sort_keys=True) + "\n")
    sys.stdout.flush()


def _secret(path: str | None) -> bytes | None:
    from mhafail.logs import read_secret_file

    return None if path is None else read_secret_file(path)


def _parse_logs(items: list[str]) -> dict[str, Path]:
    logs: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise LogsInvalidArgument(f"--log {item!r}: expected NAME=PATH")
        logs[name] = Path(path)
    if not logs:
        raise LogsInvalidArgument("give at least one --log NAME=PATH")
    return logs


@contextmanager
def _coordinator(
    zk: str, cluster: str, timeout: float, connect: float, *, security: dict[str, Any]
) -> Iterator[Any]:
    from mhafail.coordination import Coordinator

    coordinator = Coordinator(
        hosts=zk,
        cluster=cluster,
        session_timeout=timeout,
        connect_timeout=connect,
        close_timeout=STOP_CLOSE,
        **security,
    ).start()
    try:
        yield coordinator
    finally:
        coordinator.stop()  # bounded by close_timeout (issue 19)


def _membership(coordinator: Any, name: str, **info: Any) -> Any:
    from mhafail.coordination import Membership, NodeInfo

    node_info = NodeInfo(
        name=name, started_at=time.time(), host=socket.gethostname(), pid=os.getpid(), **info
    )
    return Membership(coordinator=coordinator, info=node_info, stop_timeout=STOP_ZK_TIMEOUT)


def _serve(args: argparse.Namespace) -> int:
    from mhafail.logs import JlogService
    from mhafail.logs._client import split_endpoint

    host, port = split_endpoint(args.listen, any_port=True)
    stop = stop_on_signals()
    service = JlogService(
        node=args.node,
        logs=_parse_logs(args.log),
        managers=args.manager,
        host=host,
        port=port,
        secret=_secret(args.secret_file),
        allow_unauthenticated=args.allow_unauthenticated,
        heartbeat=args.heartbeat,
        poll_interval=args.poll_interval,
        busy_poll_interval=args.busy_poll_interval,
        max_frame=args.max_frame,
    ).start()
    try:
        endpoint = args.advertise or service.endpoint
        split_endpoint(endpoint)
        with _coordinator(
            args.zk,
            args.cluster,
            args.session_timeout,
            args.connect_timeout,
            security=zk_security(args),
        ) as coordinator:
            info = {"addresses": [host], "roles": ["mta"], "endpoints": {"jlog": endpoint}}
            membership = _membership(coordinator, args.node, **info).start()
            try:
                _ready(
                    node=args.node, endpoint=service.endpoint, advertised=endpoint, pid=os.getpid()
                )
                stop.wait()
            finally:
                membership.stop()
    finally:
        service.stop(STOP_SERVICE)
    return 0


def manager_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merge a manager's TOML config file and flags (flags win) into checked settings.

    Raises:
        LogsInvalidArgument: unknown key, wrong type, or a required setting missing.
    """
    config: dict[str, Any] = {}
    if args.config is not None:
        try:
            config = tomllib.loads(args.config.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise LogsInvalidArgument(f"cannot read config {args.config}: {exc}") from None
    unknown = sorted(set(config) - set(_MANAGER_KEYS))
    if unknown:
        raise LogsInvalidArgument(f"config {args.config}: unknown keys {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for key, (kind, default) in _MANAGER_KEYS.items():
        value = getattr(args, key, None)
        if value is None:
            value = config.get(key, default)
        if value is not None and kind is float and isinstance(value, int):
            value = float(value)
        if value is not None and not isinstance(value, kind):
            raise LogsInvalidArgument(f"setting {key} must be a {kind.__name__}, not {value!r}")
        out[key] = value
    for key in ("zk", "cluster", "name", "base"):
        if out[key] is None:
            raise LogsInvalidArgument(f"the manager needs {key} (flag --{key} or config file)")
    from mhafail.logs import PathPattern

    PathPattern(out["pattern"], out["cluster"])  # refuse a bad pattern before connecting
    for key in ("file_mode", "dir_mode"):
        try:
            out[key] = int(out[key], 8)
        except ValueError:
            raise LogsInvalidArgument(f"{key} {out[key]!r} is not an octal mode") from None
    return out


def _manager(args: argparse.Namespace) -> int:
    from mhafail.logs import LogAggregator

    s = manager_settings(args)
    stop = stop_on_signals()
    with _coordinator(
        s["zk"],
        s["cluster"],
        s["session_timeout"],
        args.connect_timeout,
        security=zk_security(args),
    ) as coordinator:
        membership = _membership(coordinator, s["member_name"] or s["name"], roles=["logs-manager"])
        aggregator = LogAggregator(
            coordinator=coordinator,
            membership=membership,
            name=s["name"],
            base=Path(s["base"]),
            pattern=s["pattern"],
            state_dir=None if s["state_dir"] is None else Path(s["state_dir"]),
            logs=s["logs"],
            secret=_secret(s["secret_file"]),
            file_mode=s["file_mode"],
            dir_mode=s["dir_mode"],
            max_open_files=s["max_open_files"],
            idle_close=s["idle_close"],
            commit_records=s["commit_records"],
            commit_delay=s["commit_delay"],
            heartbeat=s["heartbeat"],
            retry=s["retry"],
            max_frame=s["max_frame"],
            framing=s["framing"],
        )
        # The manager name first: a second manager of the same name gets
        # ManagerNameTaken, not a clash of member names.
        aggregator.start()
        try:
            membership.start()
            try:
                _ready(manager=s["name"], base=s["base"], pid=os.getpid())
                stop.wait()
            finally:
                membership.stop()
        finally:
            aggregator.stop()
    return 0


def _endpoints(coordinator: Any) -> dict[str, str]:
    from mhafail.coordination import NodeInfo
    from mhafail.errors import InvalidArgument

    out = {}
    for name in coordinator.znodes.children("members") or []:
        znode = coordinator.znodes.get(f"members/{name}")
        # Shared data anyone with ZooKeeper access could have written: skip
        # what is oversized, malformed or nested to blow the stack.
        if znode is None or len(znode.data) > MAX_MEMBER_INFO:
            continue
        try:
            info = NodeInfo.from_json(znode.data)
        except (InvalidArgument, RecursionError):
            continue
        if "jlog" in info.endpoints:
            out[name] = info.endpoints["jlog"]
    return out


def _status(args: argparse.Namespace) -> int:
    from mhafail.errors import LogsError
    from mhafail.logs import query_status

    secret = _secret(args.secret_file)
    with coordinator_for(args) as coordinator:
        endpoints = _endpoints(coordinator)
        managers = coordinator.znodes.children("managers") or []
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for node, endpoint in sorted(endpoints.items()):
        try:
            rows.extend(st.to_json() for st in query_status(endpoint, secret=secret))
        except LogsError as exc:
            errors[node] = f"{_failure(exc)}: {exc}"
    data = {"cluster": args.cluster, "managers": managers, "subscribers": rows, "errors": errors}
    emit(args, data, _status_text)
    return 1 if errors else 0


def _failure(exc: Exception) -> str:
    """What kind of failure asking a node was (an auth refusal is not "unreachable")."""
    from mhafail.errors import AuthenticationFailed, ProtocolError, StreamRefused

    if isinstance(exc, AuthenticationFailed):
        return "authentication failed"
    if isinstance(exc, StreamRefused):
        return "refused"
    if isinstance(exc, ProtocolError):
        return "protocol error"
    return "unreachable"


def _status_text(data: dict[str, Any]) -> str:
    lines = [f"managers: {', '.join(data['managers']) or '-'}"]
    lines.append(
        f"{'NODE':<14} {'LOG':<12} {'SUBSCRIBER':<14} {'POSITION':<17} "
        f"{'PENDING':>9} {'BYTES':>11} {'LAG s':>8}"
    )
    for r in data["subscribers"]:
        lines.append(
            f"{r['node']:<14} {r['log']:<12} {r['subscriber']:<14} {r['position']:<17} "
            f"{r['pending_records']:>9} {r['pending_bytes']:>11} {r['lag_seconds']:>8.1f}"
        )
    for node, error in sorted(data["errors"].items()):
        lines.append(f"{node}: {error}")
    return "\n".join(lines)


def _tail(args: argparse.Namespace) -> int:
    from mhafail.errors import StreamRefused
    from mhafail.logs._client import open_request
    from mhafail.logs._framing import Framing, frame_records
    from mhafail.logs._protocol import FrameType, Reassembly, decode_records, encode_frame

    with coordinator_for(args) as coordinator:
        endpoint = _endpoints(coordinator).get(args.node)
    if endpoint is None:
        raise LogsInvalidArgument(f"node {args.node!r} is not live or serves no logs")
    opened = open_request(
        endpoint,
        {"op": "tail", "log": args.log, "back": max(0, args.n)},
        secret=_secret(args.secret_file),
    )
    conn = opened.conn
    framing = Framing.parse(args.framing)
    parts = Reassembly()
    printed = 0
    last_send = time.monotonic()
    out = sys.stdout.buffer
    try:
        while args.count is None or printed < args.count:
            for frame in conn.recv(0.5):
                if frame.type is FrameType.RECORDS:
                    payloads = decode_records(frame.body).payloads
                elif frame.type is FrameType.PART:
                    whole = parts.add(frame.body)
                    payloads = [] if whole is None else whole.payloads
                elif frame.type is FrameType.ERROR:
                    raise StreamRefused(conn.reason(frame))
                else:
                    continue
                if args.count is not None:
                    payloads = payloads[: args.count - printed]
                if payloads:
                    out.write(frame_records(payloads, framing))
                    out.flush()
                    printed += len(payloads)
            if time.monotonic() - last_send >= 0.5:
                conn.send(encode_frame(FrameType.HEARTBEAT), 5.0)
                last_send = time.monotonic()
    finally:
        conn.close()
    return 0


def _decommission(args: argparse.Namespace) -> int:
    from mhafail.jlog import Jlog

    freed: dict[str, list[int]] = {}
    for path in args.paths:
        freed[str(path)] = Jlog.open(path).remove_subscriber(args.manager)
    emit(
        args,
        {"manager": args.manager, "freed": freed},
        lambda d: "\n".join(f"{p}: freed {len(s)} segments" for p, s in d["freed"].items()),
    )
    return 0
