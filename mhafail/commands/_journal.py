"""A node's local memory of commands: run-once markers and the audit jlog.

The marker of a request is its id, appended to a segment file and
``fdatasync``ed *before* the handler runs (:class:`Markers`); a request
whose marker exists is never run again by this node, whatever ZooKeeper
says: the marker survives a crash, a restart, and a lost or rewritten
claim znode. One sync covers every request a pass takes.

Every execution appends JSON records to a local jlog (``started`` before
the handler runs, then the outcome), which a ``JlogService`` serves to log
managers like any other log. The records are written before the reply
(so they survive a crash of the process) and synced within 0.2 s by a
group commit (a power loss may lose the last 0.2 s of records, never a
marker).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from pathlib import Path
from typing import Any

from mhafail._fs import fsync_dir
from mhafail.commands._model import ID_RE as _ID_RE
from mhafail.commands._model import check_request_id
from mhafail.errors import CommandError, JlogError
from mhafail.jlog import Durability, Jlog, JlogWriter

logger = logging.getLogger(__name__)


class Markers:
    """Run-once markers: request ids appended to fsynced segment files.

    A request is marked once its id's line is on disk: :meth:`take_many`
    appends every id of a batch with one ``write`` and one ``fdatasync``
    (a group commit: a broadcast burst costs one sync, not one per
    request, and no directory sync, since the segment file already exists).
    Each process writes its own segment (``<ms>-<pid>-<random>.ids``, created and
    fsynced with its directory before the first id), and starts a new one
    every ``segment_age`` seconds so old ones can be deleted whole. A torn
    last line (a crash mid-append) is never appended to: that write had
    not returned, so its request had not run. Files named like a request
    id are markers of the earlier one-file-per-request layout and are
    honoured too.

    Thread safety: all methods may be called from any thread.
    """

    SUFFIX = ".ids"

    def __init__(self, directory: Path, *, segment_age: float = 3600.0) -> None:
        self.directory = directory
        self.segment_age = segment_age
        self._lock = threading.Lock()
        self._ids: dict[str, str] = {}  # request id -> the file that marks it
        self._fd = -1
        self._segment = ""
        self._opened = 0.0
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise CommandError(f"cannot use the marker directory {directory}: {exc}") from exc
        for entry in entries:
            if entry.name.endswith(self.SUFFIX):
                self._load(entry.name)
            elif _ID_RE.fullmatch(entry.name):
                self._ids[entry.name] = entry.name

    def _load(self, name: str) -> None:
        try:
            text = (self.directory / name).read_bytes().decode("ascii", errors="replace")
        except OSError as exc:
            # Not knowing what ran is not a reason to run it again: refuse to start.
            raise CommandError(f"cannot read the run-once markers {name}: {exc}") from exc
        for line in text.split("\n"):
            rid = line.partition(" ")[0]
            if _ID_RE.fullmatch(rid):
                self._ids[rid] = name

    def exists(self, rid: str) -> bool:
        """True when this node has taken the request before."""
        with self._lock:
            return check_request_id(rid) in self._ids

    def take(self, rid: str) -> bool:
        """Mark one request durably; False when it was marked before (never run it then).

        Raises:
            CommandError: the marker could not be written (do not run then).
        """
        return rid in self.take_many([rid])

    def take_many(self, rids: list[str]) -> set[str]:
        """Mark requests durably (one append, one ``fdatasync``); returns the ids newly marked.

        Ids marked before are left out of the result: never run those.

        Raises:
            CommandError: the markers could not be written or synced: run
                none of them (a later take may try again).
        """
        for rid in rids:
            check_request_id(rid)
        with self._lock:
            fresh = [r for r in dict.fromkeys(rids) if r not in self._ids]
            if not fresh:
                return set()
            now = time.time()
            lines = "".join(f"{rid} {now:.3f}\n" for rid in fresh).encode()
            try:
                fd = self._segment_fd(now)
                _write_all(fd, lines)
                os.fdatasync(fd)
            except OSError as exc:
                # A failed append may leave a torn line: start a new segment.
                # Nothing ran, so taking these ids again later is safe.
                self._close_segment()
                raise CommandError(f"cannot write run-once markers: {exc}") from exc
            for rid in fresh:
                self._ids[rid] = self._segment
            return set(fresh)

    def _segment_fd(self, now: float) -> int:
        if self._fd >= 0 and now - self._opened < self.segment_age:
            return self._fd
        self._close_segment()
        name = f"{int(now * 1000):013d}-{os.getpid()}-{secrets.token_hex(4)}{self.SUFFIX}"
        fd = os.open(
            self.directory / name,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.fsync(fd)
            fsync_dir(self.directory)  # the file must outlive a crash before any id in it
        except OSError:
            os.close(fd)
            raise
        self._fd, self._segment, self._opened = fd, name, now
        return fd

    def _close_segment(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._segment = -1, ""

    def close(self) -> None:
        """Close the open segment; idempotent (the markers stay on disk)."""
        with self._lock:
            self._close_segment()

    def prune(self, live: set[str], older_than: float) -> int:
        """Delete marker files untouched for ``older_than`` s whose requests are all gone.

        Returns:
            How many files were deleted.
        """
        cutoff = time.time() - older_than
        with self._lock:
            by_file: dict[str, list[str]] = {}
            for rid, name in self._ids.items():
                by_file.setdefault(name, []).append(rid)
            removed = 0
            for name, ids in by_file.items():
                if name == self._segment or any(rid in live for rid in ids):
                    continue
                path = self.directory / name
                with contextlib.suppress(OSError):
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        for rid in ids:
                            del self._ids[rid]
                        removed += 1
            return removed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class AuditJournal:
    """Appends one JSON record per event to a jlog (group commit: synced within 0.2 s)."""

    def __init__(self, path: Path) -> None:
        try:
            jlog = Jlog.open(path) if path.exists() else Jlog.create(path)
            self._writer: JlogWriter | None = jlog.writer(
                durability=Durability.group(max_delay=0.2)
            )
        except (JlogError, OSError) as exc:
            raise CommandError(f"cannot open the command audit jlog {path}: {exc}") from exc
        self.path = path
        self._lock = threading.Lock()

    def append(self, record: dict[str, Any]) -> None:
        """Append ``record``; a failure is logged, never raised (the command's fate is set)."""
        data = json.dumps(record, sort_keys=True, default=str).encode()
        with self._lock:
            if self._writer is None:
                return
            try:
                self._writer.write(data)
            except (JlogError, OSError):
                logger.exception("cannot append to the command audit jlog %s", self.path)

    def close(self) -> None:
        """Close the writer; idempotent."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(JlogError, OSError):
                writer.close()
