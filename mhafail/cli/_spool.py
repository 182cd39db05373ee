"""``mhafail spool status|list|show|import|drain``: per-node spools on shared storage."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from mhafail.cli._output import add_json_flag, emit
from mhafail.cli._zkargs import add_zk_flags, coordinator_for


def register(subparsers: Any) -> None:
    """Add ``spool status|list|show|import|drain``."""
    spool = subparsers.add_parser("spool", help="per-node spools: status, messages, takeovers")
    sub = spool.add_subparsers(dest="spool_command", metavar="ACTION", required=True)

    status = sub.add_parser("status", help="every node's spool: lock, token, takeover, order")
    add_zk_flags(status)
    status.add_argument("--root", type=Path, help="the shared root, to count messages on disk")
    add_json_flag(status)
    status.set_defaults(func=_status)

    lister = sub.add_parser("list", help="the messages in a node's spool (reads the disk)")
    lister.add_argument("node")
    lister.add_argument("--root", type=Path, required=True, help="the shared root")
    lister.add_argument("--cluster", required=True)
    lister.add_argument("--limit", type=int, default=None)
    add_json_flag(lister)
    lister.set_defaults(func=_list)

    show = sub.add_parser("show", help="one message of a node's spool")
    show.add_argument("node")
    show.add_argument("id")
    show.add_argument("--root", type=Path, required=True, help="the shared root")
    show.add_argument("--cluster", required=True)
    add_json_flag(show)
    show.set_defaults(func=_show)

    imp = sub.add_parser("import", help="import a dead node's spool now (no grace period)")
    add_zk_flags(imp)
    imp.add_argument("node")
    imp.add_argument("--to", help="the survivor that should import it (default: placement)")
    imp.add_argument("--wait", type=float, default=0.0, help="wait up to S seconds for it")
    add_json_flag(imp)
    imp.set_defaults(func=_import)

    drain = sub.add_parser("drain", help="move a live node's spool to the others (maintenance)")
    add_zk_flags(drain)
    drain.add_argument("node")
    drain.add_argument("--to", help="the node that should import it (default: placement)")
    drain.add_argument("--clear", action="store_true", help="end the drain: the node takes mail")
    drain.add_argument("--wait", type=float, default=0.0, help="wait up to S seconds for it")
    add_json_flag(drain)
    drain.set_defaults(func=_drain)


def _when(value: float | None) -> str:
    if not value:
        return "-"
    return datetime.datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


def _status(args: argparse.Namespace) -> int:
    from mhafail.spool import spool_status

    with coordinator_for(args) as c:
        rows = [s.to_dict() for s in spool_status(c, args.root)]
    emit(args, {"cluster": args.cluster, "spools": rows}, _status_text)
    return 0


def _status_text(data: dict[str, Any]) -> str:
    if not data["spools"]:
        return f"cluster {data['cluster']}: no spools"
    lines = [f"{'NODE':<16} {'LIVE':<5} {'HELD BY':<16} {'TOKEN':<14} {'MSGS':>6}  TAKEOVER/ORDER"]
    for s in data["spools"]:
        held = "-" if s["holder"] is None else f"{s['holder']}({s['purpose']})"
        token = "-" if s["token"] is None else f"{s['token']:#x}"
        msgs = "-" if s["messages"] is None else str(s["messages"])
        notes = []
        if s["takeover"]:
            t = s["takeover"]
            notes.append(f"{t['state']} by {t['by']}: {t['moved']} moved, {_when(t['finished'])}")
        if s["order"]:
            o = s["order"]
            notes.append(f"order {o['action']}" + (f" to {o['to']}" if o["to"] else ""))
        if not s["journal_complete"]:
            notes.append(f"import interrupted after {s['journal_moved']}")
        notes += s["problems"]
        lines.append(
            f"{s['node']:<16} {'yes' if s['live'] else 'no':<5} {held:<16} {token:<14} "
            f"{msgs:>6}  {'; '.join(notes) or '-'}"
        )
    return "\n".join(lines)


def _list(args: argparse.Namespace) -> int:
    from mhafail.spool import list_messages

    messages, problems = list_messages(args.root, args.cluster, args.node, limit=args.limit)
    data = {"node": args.node, "messages": [m.to_dict() for m in messages], "problems": problems}
    emit(args, data, _list_text)
    return 0


def _list_text(data: dict[str, Any]) -> str:
    lines = [f"{'ID':<26} {'CREATED':<19} {'SIZE':>8} {'TRIES':>5} {'PENDING':>7} SENDER"]
    for m in data["messages"]:
        pending = sum(1 for r in m["recipients"] if r["state"] == "pending")
        lines.append(
            f"{m['id']:<26} {_when(m['created']):<19} {m['size']:>8} {m['attempts']:>5} "
            f"{pending:>7} {m['sender'] or '<>'}"
        )
    lines += [f"problem: {p}" for p in data["problems"]]
    lines.append(f"{len(data['messages'])} message(s) in the spool of {data['node']}")
    return "\n".join(lines)


def _show(args: argparse.Namespace) -> int:
    from mhafail.spool import show_message

    message = show_message(args.root, args.cluster, args.node, args.id)
    emit(args, message.to_dict(), _show_text)
    return 0


def _show_text(m: dict[str, Any]) -> str:
    lines = [
        f"id:        {m['id']}",
        f"origin:    {m['origin']}",
        f"created:   {_when(m['created'])}",
        f"size:      {m['size']}",
        f"sender:    {m['sender'] or '<>'}",
        f"attempts:  {m['attempts']}  next try: {_when(m['next_try'])}",
    ]
    if m["reason"]:
        lines.append(f"reason:    {m['reason']}")
    for r in m["recipients"]:
        lines.append(f"rcpt:      {r['address']}  {r['state']}  {r['reason']}".rstrip())
    return "\n".join(lines)


def _import(args: argparse.Namespace) -> int:
    from mhafail.spool import order_import, wait_imported

    with coordinator_for(args) as c:
        zxid = order_import(c, args.node, to=args.to)
        record = wait_imported(c, args.node, order=zxid, timeout=args.wait) if args.wait else None
    return _report(args, "import", record)


def _drain(args: argparse.Namespace) -> int:
    from mhafail.spool import order_drain, wait_imported

    with coordinator_for(args) as c:
        changed = order_drain(c, args.node, to=args.to, clear=args.clear)
        if args.clear:
            emit(args, {"node": args.node, "cleared": changed}, _cleared_text)
            return 0
        record = wait_imported(c, args.node, timeout=args.wait) if args.wait else None
    return _report(args, "drain", record)


def _cleared_text(data: dict[str, Any]) -> str:
    if data["cleared"]:
        return f"drain of {data['node']} cleared"
    return f"{data['node']} was not drained"


def _report(args: argparse.Namespace, action: str, record: Any) -> int:
    data: dict[str, Any] = {"node": args.node, "action": action, "ordered": True}
    if record is not None:
        data["takeover"] = {"by": record.by, "moved": record.moved, "token": record.token}
    elif args.wait:
        data["timed_out"] = True

    def text(d: dict[str, Any]) -> str:
        if "takeover" in d:
            t = d["takeover"]
            return f"{action} of {d['node']}: {t['moved']} message(s) moved to {t['by']}"
        if d.get("timed_out"):
            return f"{action} of {d['node']} ordered; not complete within {args.wait:g} s"
        return f"{action} of {d['node']} ordered"

    emit(args, data, text)
    return 1 if data.get("timed_out") else 0
