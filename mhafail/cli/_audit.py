"""``mhafail audit node``: run one node of cluster-wide audit series.

The node joins the cluster (ZooKeeper membership), shares its series with
:class:`~mhafail.audit.ClusterAudit` and, with ``--listen``, receives the
other nodes' increments (a manager, or an MTA node with peer sharing). With
``--log-dir`` it also writes as_logger snapshots of its series, which
``mhafail cidr --dir`` answers queries over: that is a cluster-wide audit
manager in one command.

It reads commands on stdin, one per line, and answers each with one JSON
line on stdout (every line carries ``event`` and ``t``, a
``time.monotonic()`` reading; ``line`` is the command's line number)::

    add SERIES KEY [N]        count KEY N times (default 1)       -> "added"
                              (words split like a shell's: quote a key
                              with spaces, 'add who "a b" 2')
    count SERIES TARGET [K]   sum over all windows (or K newest)  -> "count" with "count"
    flush [TIMEOUT]           send now, wait for every receiver   -> "flushed" with "ok"
    stats                     ClusterAudit.stats()                -> "stats"

A bad command answers ``{"event": "error", "error": "..."}`` and the node
goes on. End of input does not stop the node; SIGTERM or SIGINT does
(``{"event": "stopped"}``). It first prints ``{"event": "ready", "endpoint":
..., "incarnation": ..., "pid": ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

from mhafail.cli._signals import STOP_CLOSE, STOP_ZK_TIMEOUT, stop_on_signals
from mhafail.cli._zkargs import add_zk_flags, coordinator_for
from mhafail.errors import AuditInvalidArgument, MhafailError


def register(subparsers: Any) -> None:
    """Add ``audit`` and its ``node`` subcommand."""
    parser = subparsers.add_parser(
        "audit", help="cluster-wide audit series", description="Cluster-wide audit series."
    )
    sub = parser.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", required=True)
    node = sub.add_parser(
        "node",
        help="run a node of cluster-wide audit series (commands on stdin)",
        description="Join the cluster and share audit series with the other nodes; with "
        "--listen also receive theirs. Commands on stdin, one per line: 'add SERIES KEY [N]', "
        "'count SERIES TARGET [K]', 'flush [TIMEOUT]', 'stats'; answers are JSON lines.",
    )
    add_zk_flags(node)
    node.add_argument("--node", required=True, help="this node's name")
    node.add_argument(
        "--series",
        action="append",
        required=True,
        metavar="NAME[:FAMILY[:WINDOW_SECONDS[:WINDOWS]]]",
        help="a series to share (repeatable); defaults ipv4, 300 s, 6 windows",
    )
    node.add_argument(
        "--listen", metavar="HOST:PORT", help="receive the other nodes' increments here"
    )
    node.add_argument("--advertise", metavar="HOST:PORT", help="address others connect to")
    node.add_argument(
        "--secret-file", help="the cluster's shared secret, proved by every peer (mode 0600)"
    )
    node.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="receive without a secret: loopback --listen only (any local user may push)",
    )
    node.add_argument(
        "--role", action="append", default=[], help="a role to publish, e.g. manager (repeatable)"
    )
    node.add_argument("--interval", type=float, default=0.5, help="seconds between batches")
    node.add_argument(
        "--timeout", type=float, default=5.0, help="seconds a push may take before a retry"
    )
    node.add_argument(
        "--session-timeout", type=float, default=10.0, help="ZooKeeper session timeout (s)"
    )
    node.add_argument("--log-dir", type=Path, help="also write as_logger snapshots here")
    node.add_argument("--log-interval", type=float, default=60.0, help="seconds between snapshots")
    node.set_defaults(func=_node)


def parse_series_spec(spec: str, *, track_intervals: bool = False) -> Any:
    """Build an ``AuditSeries`` from ``NAME[:FAMILY[:WINDOW_SECONDS[:WINDOWS]]]``.

    Raises:
        AuditInvalidArgument: a part is malformed.
    """
    from mhafail.audit import AuditSeries

    parts = spec.split(":")
    if len(parts) > 4:
        raise AuditInvalidArgument(
            f"series {spec!r} must be NAME[:FAMILY[:WINDOW_SECONDS[:WINDOWS]]]"
        )
    name = parts[0]
    family = parts[1] if len(parts) > 1 else "ipv4"
    numbers = []
    for text, what in zip(parts[2:], ("WINDOW_SECONDS", "WINDOWS"), strict=False):
        if not text.isdigit():
            raise AuditInvalidArgument(f"series {spec!r}: {what} {text!r} is not a number")
        numbers.append(int(text))
    window_seconds = numbers[0] if numbers else 300
    windows = numbers[1] if len(numbers) > 1 else 6
    return AuditSeries(
        name,
        window_seconds=window_seconds,
        windows=windows,
        family=family,
        export_increments=True,
        track_intervals=track_intervals,
    )


_out_lock = threading.Lock()


def _emit(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "t": time.monotonic(), **fields}, default=str)
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def _node(args: argparse.Namespace) -> int:
    from mhafail.audit import ASLogger, ClusterAudit, SnapshotStore
    from mhafail.channel import read_secret_file
    from mhafail.coordination import Membership, NodeInfo

    series = [
        parse_series_spec(spec, track_intervals=args.log_dir is not None) for spec in args.series
    ]
    audit = ClusterAudit(
        node=args.node,
        series=series,
        listen=args.listen,
        advertise=args.advertise,
        interval=args.interval,
        timeout=args.timeout,
        secret=None if args.secret_file is None else read_secret_file(args.secret_file),
        allow_unauthenticated=args.allow_unauthenticated,
    )
    stop = stop_on_signals()
    logger = None
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        logger = ASLogger(
            store=SnapshotStore(root=args.log_dir),
            series=series,
            include=["^"],
            log_interval=args.log_interval,
        )
    audit.start()
    coordinator = None
    membership = None
    try:
        coordinator = coordinator_for(
            args, session_timeout=args.session_timeout, close_timeout=STOP_CLOSE
        ).start()
        info = NodeInfo(
            name=args.node,
            roles=args.role,
            endpoints=audit.endpoints(),
            started_at=time.time(),
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        membership = Membership(
            coordinator=coordinator, info=info, stop_timeout=STOP_ZK_TIMEOUT
        ).start()
        audit.follow(membership)
        if logger is not None:
            logger.start()
        by_name = {s.name: s for s in series}
        _emit(
            "ready",
            node=args.node,
            endpoint=audit.endpoints().get("audit"),
            incarnation=audit.incarnation,
            pid=os.getpid(),
        )
        reader = threading.Thread(
            target=_read_commands, args=(audit, by_name), name="mhafail-audit-stdin", daemon=True
        )
        reader.start()
        stop.wait()
    finally:
        if logger is not None:
            logger.stop()
        # Leave the view first, so that senders stop pushing here before we close.
        if membership is not None:
            membership.stop()
        audit.stop()
        if coordinator is not None:
            coordinator.stop()
    _emit("stopped", node=args.node)
    return 0


def _read_commands(audit: Any, by_name: dict[str, Any]) -> None:
    for number, raw in enumerate(sys.stdin, start=1):
        try:
            # Shell-style words: a string key with spaces is quoted ("a b" or 'a b').
            words = shlex.split(raw)
            if not words:
                continue
            _command(audit, by_name, words, number)
        except (MhafailError, ValueError) as exc:
            _emit("error", line=number, error=str(exc))


def _series(by_name: dict[str, Any], name: str) -> Any:
    try:
        return by_name[name]
    except KeyError:
        known = ", ".join(sorted(by_name))
        raise AuditInvalidArgument(f"no series {name!r} (this node has {known})") from None


def _command(audit: Any, by_name: dict[str, Any], words: list[str], number: int) -> None:
    verb, rest = words[0].lower(), words[1:]
    if verb == "add" and len(rest) in (2, 3):
        n = _int(rest[2], "N") if len(rest) == 3 else 1
        _series(by_name, rest[0]).add(rest[1], n)
        _emit("added", line=number, series=rest[0], key=rest[1], n=n)
    elif verb == "count" and len(rest) in (2, 3):
        windows = _int(rest[2], "K") if len(rest) == 3 else None
        total = _series(by_name, rest[0]).count(rest[1], windows)
        _emit("count", line=number, series=rest[0], target=rest[1], count=total)
    elif verb == "flush" and len(rest) <= 1:
        timeout = float(rest[0]) if rest else 5.0
        _emit("flushed", line=number, ok=audit.flush(timeout))
    elif verb == "stats" and not rest:
        _emit("stats", line=number, **attrs.asdict(audit.stats()))
    else:
        raise AuditInvalidArgument(
            f"unknown command {' '.join(words)!r}; use 'add SERIES KEY [N]', "
            "'count SERIES TARGET [K]', 'flush [TIMEOUT]' or 'stats'"
        )


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise AuditInvalidArgument(f"{what} must be an integer, not {text!r}") from None
