"""The import journal of a takeover: what was moved where, resumable.

A takeover of spool D by node S appends to ``D/import.journal`` (JSON
lines, fsynced before the step they announce)::

    {"op": "begin", "by": S, "token": T, "t": ...}
    {"op": "log", "to": S, "count": c}                its commit log renamed into S's
    {"op": "batch", "n": k, "to": S, "ids": [...]}     before moving batch k
    {"op": "moved", "n": k, "count": c}               after msg/ of both fsynced
    {"op": "complete", "by": S, "token": T, "moved": total}

Messages move by rename, so each is in exactly one spool at every instant;
only a copy across file systems can leave one in both (copied, not yet
removed from D). Whoever holds D next (another survivor resuming, or D
itself returning) resolves the last unfinished batch first: an id present
in D and in its target's ``msg/`` is removed from D. Then it continues.
The journal is shared data: a malformed line is skipped and reported.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from mhafail._fs import fsync_dir
from mhafail._json import decode_object
from mhafail.errors import MalformedData
from mhafail.spool._files import FILE_MODE, write_failed
from mhafail.spool._message import check_id

logger = logging.getLogger(__name__)

JOURNAL = "import.journal"
LAST = "import.journal.last"


@attrs.frozen
class JournalView:
    """What a journal says: every valid entry, the problems, the open batch."""

    entries: tuple[dict[str, Any], ...]
    problems: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when the last takeover recorded its completion."""
        return bool(self.entries) and self.entries[-1].get("op") == "complete"

    def open_batch(self) -> dict[str, Any] | None:
        """The last ``batch`` entry without its ``moved``/``resolved``, if any."""
        finished = {e.get("n") for e in self.entries if e.get("op") in ("moved", "resolved")}
        batches = [e for e in self.entries if e.get("op") == "batch"]
        if batches and batches[-1].get("n") not in finished:
            return batches[-1]
        return None

    def moved(self) -> int:
        """Messages moved by all batches recorded."""
        return sum(int(e.get("count", 0)) for e in self.entries if e.get("op") in ("moved", "log"))


def read_journal(spool: Path, name: str = JOURNAL) -> JournalView:
    """Read and validate a journal (missing: empty)."""
    try:
        raw = (spool / name).read_bytes()
    except FileNotFoundError:
        return JournalView((), ())
    entries: list[dict[str, Any]] = []
    problems: list[str] = []
    for number, line in enumerate(raw.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            entry = decode_object(line, what=f"{name} line {number}", max_depth=2)
            _check(entry)
        except MalformedData as exc:
            problems.append(str(exc))
            continue
        entries.append(entry)
    for problem in problems:
        logger.warning("spool %s: %s (skipped)", spool, problem)
    return JournalView(tuple(entries), tuple(problems))


def _check(entry: dict[str, Any]) -> None:
    op = entry.get("op")
    if op not in ("begin", "log", "batch", "moved", "resolved", "complete"):
        raise MalformedData(f"malformed journal entry: unknown op {op!r}")
    count = entry.get("count")
    bad = isinstance(count, bool) or not isinstance(count, int) or count < 0
    if op in ("moved", "log") and bad:
        raise MalformedData(f"malformed journal entry: {op!r} needs a count >= 0")
    if op == "batch":
        ids, to = entry.get("ids"), entry.get("to")
        if (
            not isinstance(ids, list)
            or not isinstance(to, str)
            or not isinstance(entry.get("n"), int)
        ):
            raise MalformedData("malformed journal entry: a batch needs n, to and ids")
        try:
            for mid in ids:
                check_id(mid)
        except ValueError as exc:
            raise MalformedData(f"malformed journal entry: {exc}") from exc


class Journal:
    """Appends to one spool's journal, fsyncing each entry."""

    def __init__(self, spool: Path) -> None:
        self.path = spool / JOURNAL
        try:
            self._fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE
            )
        except OSError as exc:
            raise write_failed(f"cannot open {self.path}", exc) from exc

    def append(self, op: str, **fields: Any) -> None:
        """Append one entry durably.

        Raises:
            SpoolWriteFailed: it could not be written.
        """
        self.extend([(op, fields)])

    def extend(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Append entries ``(op, fields)`` durably with one write and one fsync.

        For entries that may become durable together: one that records a
        step done (``moved``) and one that announces the next (``batch``).
        A crash before the fsync returns may keep any of them, or a torn
        line (skipped when read): the next step had not begun.

        Raises:
            SpoolWriteFailed: they could not be written.
        """
        now = time.time()
        lines = [
            json.dumps({"op": op, "t": now, **fields}, separators=(",", ":")).encode() + b"\n"
            for op, fields in entries
        ]
        try:
            os.write(self._fd, b"".join(lines))
            os.fsync(self._fd)
        except OSError as exc:
            raise write_failed(f"cannot append to {self.path}", exc) from exc

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def resolve(spool: Path, nodes_dir: Path, view: JournalView) -> int:
    """Finish the open batch of an interrupted takeover; return copies removed from ``spool``.

    Call only while holding ``spool`` (its ZooKeeper lock and lock file).
    """
    batch = view.open_batch()
    if batch is None:
        return 0
    target = nodes_dir / batch["to"] / "spool" / "msg"
    removed = 0
    for mid in batch["ids"]:
        if (target / mid).exists() and (spool / "msg" / mid).exists():
            (spool / "msg" / mid).unlink()
            removed += 1
    if removed:
        fsync_dir(spool / "msg")
    journal = Journal(spool)
    try:
        journal.append("resolved", n=batch["n"], removed=removed)
    finally:
        journal.close()
    return removed


def retire(spool: Path) -> None:
    """Keep a completed journal as ``import.journal.last`` (owner at acquire)."""
    path = spool / JOURNAL
    if path.exists():
        os.replace(path, spool / LAST)
        fsync_dir(spool)


def moved_ids(entries: Iterable[dict[str, Any]]) -> int:
    """Total of ``moved`` counts (for status)."""
    return sum(int(e.get("count", 0)) for e in entries if e.get("op") in ("moved", "log"))
