"""``mhafail jlog``: jlogctl-like tooling for jlog directories.

* ``create PATH``, ``meta PATH``, ``data PATH``: make a jlog, show its metastore and segments.
* ``subscriber (list|add|remove|set) PATH ...``: manage subscribers and checkpoints.
* ``write PATH``: append payloads read from stdin (one per line, or u32-length-prefixed).
* ``read PATH --subscriber S [--no-commit]``: print what S has not read, then checkpoint it.
* ``tail PATH [--follow]``: follow the log without a checkpoint (holds no data back).
* ``inspect PATH``, ``repair PATH``: find and fix damage.
"""

from __future__ import annotations

import argparse
import base64
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from mhafail.cli._output import add_json_flag, emit
from mhafail.errors import JlogInvalidArgument

_LENGTH = struct.Struct("<I")


def register(subparsers: Any) -> None:
    """Add ``jlog`` and its actions."""
    parser = subparsers.add_parser(
        "jlog",
        help="create, inspect, write and read jlog journals (like jlogctl)",
        description="Operate libjlog-compatible journals: subscribers, data, repair.",
    )
    actions = parser.add_subparsers(dest="jlog_action", metavar="ACTION", required=True)

    p = actions.add_parser("create", help="create an empty jlog directory")
    p.add_argument("path", type=Path)
    p.add_argument("--unit-limit", type=int, default=4 * 1024 * 1024, help="segment size in bytes")
    p.add_argument("--safety", choices=["unsafe", "almost_safe", "safe"], default="almost_safe")
    p.add_argument("--compress", action="store_true", help="store records as LZ4 blocks")
    add_json_flag(p)
    p.set_defaults(func=_create)

    p = actions.add_parser("meta", help="show the metastore")
    p.add_argument("path", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_meta)

    p = actions.add_parser("data", help="list segments with sizes and record counts")
    p.add_argument("path", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_data)

    _register_subscriber(actions)

    p = actions.add_parser("write", help="append payloads read from stdin")
    p.add_argument("path", type=Path)
    p.add_argument(
        "--length-prefixed",
        action="store_true",
        help="stdin holds u32 little-endian lengths each followed by a payload",
    )
    p.add_argument("--fsync", action="store_true", help="fdatasync before returning")
    add_json_flag(p)
    p.set_defaults(func=_write)

    p = actions.add_parser("read", help="print a subscriber's unread messages, then checkpoint")
    p.add_argument("path", type=Path)
    p.add_argument("--subscriber", "-s", required=True)
    p.add_argument("--no-commit", action="store_true", help="do not move the checkpoint")
    p.add_argument("--max", type=int, default=None, help="read at most this many messages")
    add_json_flag(p)
    p.set_defaults(func=_read)

    p = actions.add_parser("tail", help="print messages without a checkpoint (holds nothing back)")
    p.add_argument("path", type=Path)
    p.add_argument("--begin", action="store_true", help="start at the oldest data, not the end")
    p.add_argument("-n", type=int, default=0, help="also print up to N of the newest messages")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new messages")
    p.add_argument("--poll", type=float, default=0.2, help="seconds between polls with --follow")
    add_json_flag(p)
    p.set_defaults(func=_tail)

    p = actions.add_parser("inspect", help="report damage without changing anything")
    p.add_argument("path", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_inspect)

    p = actions.add_parser("repair", help="fix damage; never skips unread data")
    p.add_argument("path", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_repair)


def _register_subscriber(actions: Any) -> None:
    parser = actions.add_parser("subscriber", help="list, add, remove or set subscribers")
    sub = parser.add_subparsers(dest="subscriber_action", metavar="ACTION", required=True)

    p = sub.add_parser("list", help="subscribers with checkpoint and pending count")
    p.add_argument("path", type=Path)
    add_json_flag(p)
    p.set_defaults(func=_sub_list)

    p = sub.add_parser("add", help="add a subscriber at the oldest data (or --end)")
    p.add_argument("path", type=Path)
    p.add_argument("name")
    p.add_argument("--end", action="store_true", help="start at the current end")
    add_json_flag(p)
    p.set_defaults(func=_sub_add)

    p = sub.add_parser("remove", help="remove a subscriber and free what only it held")
    p.add_argument("path", type=Path)
    p.add_argument("name")
    add_json_flag(p)
    p.set_defaults(func=_sub_remove)

    p = sub.add_parser("set", help="set (or rewind) a checkpoint to LOG:MARKER")
    p.add_argument("path", type=Path)
    p.add_argument("name")
    p.add_argument("position", help="the last message consumed, e.g. 00000000:00000002")
    add_json_flag(p)
    p.set_defaults(func=_sub_set)


def _open(path: Path) -> Any:
    from mhafail.jlog import Jlog

    return Jlog.open(path)


def _meta_dict(meta: Any) -> dict[str, Any]:
    return {
        "storage_log": f"{meta.storage_log:08x}",
        "unit_limit": meta.unit_limit,
        "safety": meta.safety.name.lower(),
        "hdr_magic": f"{meta.hdr_magic:#010x}",
        "compressed": meta.compressed,
    }


def _meta_text(data: dict[str, Any]) -> str:
    return "\n".join(f"{key:12} {value}" for key, value in data.items())


def _create(args: argparse.Namespace) -> int:
    from mhafail.jlog import Jlog, Safety

    jlog = Jlog.create(
        args.path,
        unit_limit=args.unit_limit,
        safety=Safety[args.safety.upper()],
        compress=args.compress,
    )
    data = {"path": str(jlog.path), **_meta_dict(jlog.meta)}
    emit(args, data, lambda d: f"created jlog {d['path']}")
    return 0


def _meta(args: argparse.Namespace) -> int:
    emit(args, _meta_dict(_open(args.path).read_meta()), _meta_text)
    return 0


def _data(args: argparse.Namespace) -> int:
    rows = [
        {"log": f"{s.log:08x}", "size": s.size, "records": s.records, "closed": s.closed}
        for s in _open(args.path).segments()
    ]
    emit(
        args,
        rows,
        lambda rs: "\n".join(
            f"{r['log']}  {r['size']:>10} bytes  {r['records']:>8} records"
            f"{'  closed' if r['closed'] else ''}"
            for r in rs
        ),
    )
    return 0


def _sub_list(args: argparse.Namespace) -> int:
    rows = [
        {"name": s.name, "checkpoint": str(s.position), "pending": s.pending}
        for s in _open(args.path).subscribers()
    ]
    emit(
        args,
        rows,
        lambda rs: "\n".join(f"{r['name']}\t{r['checkpoint']}\t{r['pending']} pending" for r in rs),
    )
    return 0


def _sub_add(args: argparse.Namespace) -> int:
    from mhafail.jlog import Whence

    position = _open(args.path).add_subscriber(args.name, Whence.END if args.end else Whence.BEGIN)
    data = {"name": args.name, "checkpoint": str(position)}
    emit(args, data, lambda d: f"added {d['name']} at {d['checkpoint']}")
    return 0


def _sub_remove(args: argparse.Namespace) -> int:
    freed = _open(args.path).remove_subscriber(args.name)
    data = {"name": args.name, "segments_deleted": [f"{s:08x}" for s in freed]}
    emit(args, data, lambda d: f"removed {d['name']}; deleted {len(freed)} segments")
    return 0


def _sub_set(args: argparse.Namespace) -> int:
    from mhafail.jlog import MessageId

    position = MessageId.parse(args.position)
    freed = _open(args.path).set_checkpoint(args.name, position)
    data = {
        "name": args.name,
        "checkpoint": str(position),
        "segments_deleted": [f"{s:08x}" for s in freed],
    }
    emit(args, data, lambda d: f"{d['name']} checkpoint set to {d['checkpoint']}")
    return 0


def _payloads(stream: BinaryIO, length_prefixed: bool) -> Iterator[bytes]:
    """Yield the payloads on ``stream`` without reading it all into memory."""
    if not length_prefixed:
        for line in stream:
            yield line[:-1] if line.endswith(b"\n") else line
        return
    offset = 0
    while True:
        prefix = stream.read(_LENGTH.size)
        if not prefix:
            return
        if len(prefix) < _LENGTH.size:
            raise JlogInvalidArgument(f"stdin ends inside a length prefix at byte {offset}")
        (length,) = _LENGTH.unpack(prefix)
        payload = stream.read(length)
        offset += _LENGTH.size
        if len(payload) < length:
            raise JlogInvalidArgument(f"stdin ends inside a {length}-byte payload at byte {offset}")
        offset += length
        yield payload


def _write(args: argparse.Namespace) -> int:
    from mhafail.jlog import Durability

    jlog = _open(args.path)
    durability = Durability.fsync() if args.fsync else Durability.none()
    written = 0
    with jlog.writer(durability=durability) as writer:
        batch: list[bytes] = []
        try:
            for payload in _payloads(sys.stdin.buffer, args.length_prefixed):
                batch.append(payload)
                if len(batch) == 4096:
                    writer.write_many(batch)
                    written += len(batch)
                    batch = []
        finally:
            # Whole payloads read before bad input are still written.
            writer.write_many(batch)
            written += len(batch)
    emit(args, {"written": written}, lambda _d: "")
    return 0


def _message_json(message: Any) -> dict[str, Any]:
    try:
        text: str | None = message.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "id": str(message.id),
        "time": message.time,
        "payload": text,
        "payload_base64": base64.b64encode(message.payload).decode("ascii"),
    }


def _print_messages(args: argparse.Namespace, messages: list[Any]) -> None:
    if args.json:
        emit(args, [_message_json(m) for m in messages], lambda _d: "")
        return
    out = sys.stdout.buffer
    for message in messages:
        out.write(message.payload + b"\n")
    out.flush()


def _read(args: argparse.Namespace) -> int:
    limit = args.max
    collected: list[Any] = []
    read = 0
    with _open(args.path).reader(args.subscriber) as reader:
        while limit is None or read < limit:
            batch = reader.read_batch(4096 if limit is None else min(4096, limit - read))
            if not batch:
                break
            read += len(batch)
            if args.json:
                collected.extend(batch)
                continue
            # Print first, checkpoint after: a crash in between re-delivers
            # (at-least-once), it never loses.
            _print_messages(args, batch)
            if not args.no_commit:
                reader.checkpoint(batch[-1].id)
        if args.json:
            _print_messages(args, collected)
            if collected and not args.no_commit:
                reader.checkpoint(collected[-1].id)
    return 0


def _tail(args: argparse.Namespace) -> int:
    from mhafail.jlog import Whence

    jlog = _open(args.path)
    with jlog.tail(start=Whence.BEGIN if args.begin else Whence.END, back=args.n) as tail:
        _print_messages(args, list(tail))
        try:
            while args.follow:
                batch = tail.read_batch()
                if batch:
                    _print_messages(args, batch)
                else:
                    time.sleep(args.poll)
        except KeyboardInterrupt:
            return 0
    return 0


def _problems(problems: list[Any]) -> list[dict[str, str]]:
    return [{"kind": p.kind.value, "file": p.file, "detail": p.detail} for p in problems]


def _problems_text(problems: list[dict[str, str]]) -> str:
    return "\n".join(f"{p['kind']}: {p['file']}: {p['detail']}" for p in problems)


def _inspect(args: argparse.Namespace) -> int:
    from mhafail.jlog import inspect

    report = inspect(args.path)
    data = {
        "ok": report.ok,
        "meta": _meta_dict(report.meta) if report.meta is not None else None,
        "segments": {f"{log:08x}": count for log, count in report.segments.items()},
        "problems": _problems(report.problems),
    }
    emit(args, data, lambda d: _problems_text(d["problems"]) or "ok")
    return 0 if report.ok else 1


def _repair(args: argparse.Namespace) -> int:
    from mhafail.jlog import repair

    report = repair(args.path)
    data = {
        "found": _problems(report.found),
        "cuts": [
            {"log": f"{c.log:08x}", "offset": c.offset, "length": c.length} for c in report.cuts
        ],
        "checkpoints": [
            {"subscriber": m.subscriber, "old": str(m.old) if m.old else None, "new": str(m.new)}
            for m in report.checkpoints
        ],
        "pre_commit_records": report.pre_commit_records,
        "remaining": _problems(report.remaining),
    }

    def text(d: dict[str, Any]) -> str:
        lines = [f"found {p['kind']}: {p['file']}: {p['detail']}" for p in d["found"]]
        lines += [
            f"cut {c['length']} bytes from {c['log']} at offset {c['offset']}" for c in d["cuts"]
        ]
        lines += [
            f"checkpoint {m['subscriber']}: {m['old']} -> {m['new']}" for m in d["checkpoints"]
        ]
        if d["pre_commit_records"]:
            lines.append(f"flushed {d['pre_commit_records']} records from pre_commit")
        lines += [f"remaining {p['kind']}: {p['file']}: {p['detail']}" for p in d["remaining"]]
        return "\n".join(lines) or "nothing to repair"

    emit(args, data, text)
    return 0 if not report.remaining else 1
