"""``mhafail members``: list the live members of a cluster."""

from __future__ import annotations

import argparse
import time
from typing import Any

import attrs

from mhafail.cli._output import add_json_flag, emit

# Re-exported: other command modules import it from here.
from mhafail.cli._zkargs import add_zk_flags as add_zk_flags  # noqa: PLC0414
from mhafail.cli._zkargs import coordinator_for


def register(subparsers: Any) -> None:
    """Add ``members``."""
    parser = subparsers.add_parser("members", help="list the live members of a cluster")
    add_zk_flags(parser)
    add_json_flag(parser)
    parser.set_defaults(func=_members)


def _members(args: argparse.Namespace) -> int:
    from mhafail.coordination import NodeInfo
    from mhafail.errors import InvalidArgument

    with coordinator_for(args) as coordinator:
        names = coordinator.znodes.children("members") or []
        members = []
        for name in names:
            node = coordinator.znodes.get(f"members/{name}")
            if node is None:
                continue
            try:
                info = attrs.asdict(NodeInfo.from_json(node.data))
            except InvalidArgument:
                info = {"name": name, "error": "malformed member info"}
            info["session"] = f"{node.ephemeral_owner:#x}"
            members.append(info)
    emit(args, {"cluster": args.cluster, "members": members}, _text)
    return 0


def _text(data: dict[str, Any]) -> str:
    if not data["members"]:
        return f"cluster {data['cluster']}: no live members"
    now = time.time()
    lines = [f"{'NODE':<16} {'HOST':<16} {'PID':>7} {'UP':>8}  ROLES  ADDRESSES"]
    for m in data["members"]:
        up = f"{now - m['started_at']:.0f}s" if m.get("started_at") else "-"
        lines.append(
            f"{m['name']:<16} {m.get('host', ''):<16} {m.get('pid', 0):>7} {up:>8}  "
            f"{','.join(m.get('roles', [])) or '-'}  {','.join(m.get('addresses', [])) or '-'}"
        )
    return "\n".join(lines)
