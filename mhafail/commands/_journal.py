"""A node's local memory of commands: run-once markers and the audit jlog.

The marker of a request is a file created (``O_EXCL``) and fsynced, with
its directory, *before* the handler runs. A request whose marker exists
is never run again by this node, whatever ZooKeeper says: the marker
survives a crash, a restart, and a lost or rewritten claim znode.

Every execution appends JSON records to a local jlog (``started`` before
the handler runs, then the outcome), which a ``JlogService`` serves to log
managers like any other log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from mhafail.commands._model import check_request_id
from mhafail.errors import CommandError, JlogError
from mhafail.jlog import Durability, Jlog, JlogWriter

logger = logging.getLogger(__name__)


class Markers:
    """Run-once markers in a directory (one empty-ish file per request id)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CommandError(f"cannot create the marker directory {directory}: {exc}") from exc

    def exists(self, rid: str) -> bool:
        """True when this node has taken the request before."""
        return (self.directory / check_request_id(rid)).exists()

    def take(self, rid: str) -> bool:
        """Create the marker durably; False when it already exists (never run it then).

        Raises:
            CommandError: the marker could not be written (do not run then).
        """
        path = self.directory / check_request_id(rid)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            raise CommandError(f"cannot write the run-once marker {path}: {exc}") from exc
        try:
            os.write(fd, json.dumps({"id": rid, "taken": time.time()}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return True

    def prune(self, live: set[str], older_than: float) -> int:
        """Delete markers of requests no longer in ZooKeeper and older than ``older_than`` s."""
        removed = 0
        cutoff = time.time() - older_than
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name in live:
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
        return removed


class AuditJournal:
    """Appends one JSON record per event to a jlog (fsynced: it is an audit trail)."""

    def __init__(self, path: Path) -> None:
        try:
            jlog = Jlog.open(path) if path.exists() else Jlog.create(path)
            self._writer: JlogWriter | None = jlog.writer(durability=Durability.fsync())
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
