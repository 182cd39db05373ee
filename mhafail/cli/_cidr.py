"""``mhafail cidr``: CIDR queries over as_logger snapshots (Momentum's cidr_cli and cidr_server).

* ``mhafail cidr --dir D show count for 198.18.0.0/15 in conn``: one query.
* ``mhafail cidr --dir D``: an interactive ``cidr>`` shell (also reads
  queries piped on stdin, one per line).
* ``mhafail cidr --dir D --serve [--host H] [--port P] [--idle-timeout S]
  [--max-connections N]``: the HTTP server.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mhafail.cli._output import add_json_flag, emit
from mhafail.errors import AuditInvalidArgument, MhafailError, QuerySyntaxError


def register(subparsers: Any) -> None:
    """Add ``cidr``."""
    parser = subparsers.add_parser(
        "cidr",
        help="query audit series snapshots (one-shot, shell or HTTP server)",
        description="Answer cidr_cli queries over as_logger snapshot files. "
        "With a query: answer it and exit. Without: read queries from a cidr> shell.",
    )
    parser.add_argument("--dir", required=True, type=Path, help="the as_logger snapshot directory")
    parser.add_argument("--serve", action="store_true", help="run the HTTP CIDR server instead")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=9000, help="port to serve on (default 9000)")
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=10.0,
        help="seconds an idle HTTP connection stays open (default 10)",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=64,
        help="open HTTP connections at most; idle ones are closed first (default 64)",
    )
    add_json_flag(parser)
    parser.add_argument(
        "query", nargs="*", help="a query, e.g. show count for 198.18.0.0/15 in conn"
    )
    parser.set_defaults(func=_cidr)


def _engine(directory: Path) -> Any:
    from mhafail.audit import QueryEngine, SnapshotStore

    if not directory.is_dir():
        raise AuditInvalidArgument(f"snapshot directory {directory} does not exist")
    return QueryEngine(store=SnapshotStore(root=directory))


def _cidr(args: argparse.Namespace) -> int:
    engine = _engine(args.dir)
    if args.serve:
        from mhafail.audit import CidrServer
        from mhafail.cli._signals import stop_on_signals

        stop = stop_on_signals()
        server = CidrServer(
            engine=engine,
            host=args.host,
            port=args.port,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
        )
        server.start()
        try:
            print(f"serving CIDR queries on {server.url}", file=sys.stderr, flush=True)
            stop.wait()
        finally:
            server.stop()
        return 0
    if args.query:
        text = " ".join(args.query)
        try:
            result = engine.run(text)
        except QuerySyntaxError as exc:
            _show_position(text, exc)
            raise
        emit(args, result.to_json(), lambda _data: result.to_text())
        return 0
    return _shell(engine, args.json)


def _show_position(text: str, exc: QuerySyntaxError) -> None:
    print(f"  {text}\n  {' ' * exc.position}^", file=sys.stderr)


def _shell(engine: Any, as_json: bool) -> int:
    interactive = sys.stdin.isatty()
    failures = 0
    while True:
        if interactive:
            sys.stdout.write("cidr> ")
            sys.stdout.flush()
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.lower() in ("quit", "exit"):
            break
        try:
            result = engine.run(text)
        except MhafailError as exc:
            failures += 1
            if isinstance(exc, QuerySyntaxError):
                _show_position(text, exc)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            continue
        if as_json:
            sys.stdout.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
        else:
            sys.stdout.write(result.to_text())
        sys.stdout.flush()
    if interactive:
        sys.stdout.write("\n")
    # Piped input is a script: report failure like a one-shot query would.
    return 2 if failures and not interactive else 0
