"""The storage side of the fence: the lock file and its token.

A spool directory holds a file ``lock`` recording who may change the spool
and with which fencing token (``{"holder", "token", "purpose", ...}``).
Whoever takes the spool (its node, or a survivor taking it over) writes
its record under an *exclusive* OFD lock, and only with a token higher
than the one there. Every state change runs inside :meth:`FileFence.section`:
a *shared* OFD lock, the record read back, the token compared with ours
and the lease checked. So once a newer holder has written its token, no
older holder can change anything, whatever its clock says, and a change
that had already begun finishes before the newer holder starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import attrs

from mhafail._json import decode_object
from mhafail.errors import MalformedData, SpoolFenced
from mhafail.spool._files import OfdLock

logger = logging.getLogger(__name__)

LOCK_FILE = "lock"


class Fence(Protocol):
    """What a :class:`~mhafail.spool.Spool` needs to know it may change its directory."""

    @property
    def token(self) -> int:
        """The fencing token this process holds the spool with."""
        ...

    def section(self) -> contextlib.AbstractContextManager[None]:
        """Hold the right to change the spool for one state change.

        Raises:
            SpoolFenced: on entry, when the lease is not valid or the lock
                file names a newer token.
        """
        ...

    def valid(self) -> bool:
        """True while the lease is valid and the fence was not revoked (cheap)."""
        ...


@attrs.frozen
class LockRecord:
    """The lock file's contents: who holds the spool, with which token."""

    holder: str
    token: int
    purpose: str = "own"
    host: str = ""
    pid: int = 0
    since: float = 0.0

    def to_json(self) -> bytes:
        """Serialise for the lock file."""
        return json.dumps(attrs.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes, *, what: str) -> LockRecord | None:
        """Parse a lock file (None when empty).

        Raises:
            MalformedData: the file breaks the schema.
        """
        if not raw:
            return None
        doc = decode_object(raw, what=what, max_bytes=4096, max_depth=1)
        holder, token = doc.get("holder"), doc.get("token")
        if not isinstance(holder, str) or isinstance(token, bool) or not isinstance(token, int):
            raise MalformedData(f"malformed {what}: holder and integer token are required")
        purpose, host, pid = doc.get("purpose", "own"), doc.get("host", ""), doc.get("pid", 0)
        since = doc.get("since", 0.0)
        if not isinstance(purpose, str) or not isinstance(host, str) or not isinstance(pid, int):
            raise MalformedData(f"malformed {what}: bad purpose, host or pid")
        if not isinstance(since, int | float):
            raise MalformedData(f"malformed {what}: bad since")
        return cls(holder, token, purpose, host, pid, float(since))


def read_record(directory: Path) -> LockRecord | None:
    """The lock record of the spool in ``directory`` (no lock taken; for status).

    Raises:
        MalformedData: the lock file is malformed.
    """
    try:
        raw = (directory / LOCK_FILE).read_bytes()[:4096]
    except FileNotFoundError:
        return None
    return LockRecord.from_json(raw, what=f"lock file of {directory}")


class FileFence:
    """This process's claim on one spool directory, checked on every change.

    Args:
        directory: the spool directory.
        holder: the name written as holder (this node).
        token: the fencing token (a ZooKeeper zxid: higher is newer).
        lease_valid: the coordinator's ``lease_valid``.
        purpose: ``"own"`` (the node's own spool) or ``"takeover"``.
        lock_timeout: the longest a section waits for the shared lock.
    """

    def __init__(
        self,
        directory: Path,
        *,
        holder: str,
        token: int,
        lease_valid: Callable[[], bool],
        purpose: str = "own",
        lock_timeout: float = 2.0,
    ) -> None:
        self.directory = directory
        self.holder = holder
        self._token = token
        self._lease_valid = lease_valid
        self.purpose = purpose
        self.lock_timeout = lock_timeout
        self._revoked = False
        self._opened: list[OfdLock] = []  # every lock file descriptor, for close
        self._free: list[OfdLock] = []  # those not in a section now
        self._guard = threading.Lock()

    @property
    def token(self) -> int:
        """The fencing token."""
        return self._token

    @property
    def path(self) -> Path:
        """The lock file."""
        return self.directory / LOCK_FILE

    def claim(self, *, timeout: float = 5.0) -> LockRecord | None:
        """Write our record, fencing every older holder; return the record replaced.

        Raises:
            SpoolFenced: the lease is not valid, the file already names a
                newer or equal token of someone else, or the exclusive lock
                stayed busy for ``timeout`` seconds (an older holder frozen
                inside a change: try again later).
        """
        lock = OfdLock(self.path)
        try:
            if not lock.lock(timeout=timeout):
                raise SpoolFenced(f"{self.path}: the lock file stayed busy for {timeout:g} s")
            try:
                old = LockRecord.from_json(lock.read(), what=f"lock file {self.path}")
            except MalformedData as exc:
                logger.warning("%s; overwriting it with our record", exc)
                old = None
            ours = old is not None and old.token == self._token and old.holder == self.holder
            if old is not None and old.token >= self._token and not ours:
                raise SpoolFenced(
                    f"{self.path} names token {old.token} of {old.holder}, "
                    f"not older than ours ({self._token})"
                )
            if not self._lease_valid():
                raise SpoolFenced(f"{self.path}: the lease ran out before the claim")
            record = LockRecord(
                holder=self.holder,
                token=self._token,
                purpose=self.purpose,
                host=socket.gethostname(),
                pid=os.getpid(),
                since=time.time(),
            )
            lock.write(record.to_json())
            return old
        finally:
            lock.close()

    def revoke(self) -> None:
        """Refuse every further change (the lease ran out or the lock was released)."""
        self._revoked = True

    def valid(self) -> bool:
        """True while not revoked and the lease is valid."""
        return not self._revoked and self._lease_valid()

    def _lock(self) -> OfdLock:
        # One descriptor per section in progress, reused: an OFD lock belongs
        # to its open file description, so two sections at once need two
        # (one thread's unlock would drop the other's lock), but a
        # descriptor per thread would grow with every thread that ever
        # wrote (group commit's leaders are the callers' threads).
        with self._guard:
            if self._free:
                return self._free.pop()
        lock = OfdLock(self.path)
        with self._guard:
            self._opened.append(lock)
        return lock

    @contextlib.contextmanager
    def section(self) -> Iterator[None]:
        """Hold the shared lock with our token verified and the lease valid.

        Raises:
            SpoolFenced: revoked, lease not valid, the lock file names
                another token, or the shared lock stayed busy.
        """
        if not self.valid():
            raise SpoolFenced(f"spool {self.directory}: the fence was revoked or the lease ran out")
        try:
            lock = self._lock()
        except OSError as exc:
            raise SpoolFenced(f"spool {self.directory}: cannot open the lock file: {exc}") from exc
        if lock.fd < 0:  # closed by close() meanwhile
            raise SpoolFenced(f"spool {self.directory}: the fence was closed")
        if not lock.lock(shared=True, timeout=self.lock_timeout):
            with self._guard:
                self._free.append(lock)
            raise SpoolFenced(f"spool {self.directory}: the lock file is held by a takeover")
        try:
            self._verify(lock)
            yield
        finally:
            with self._guard:
                if lock.fd >= 0:  # else closed by close() meanwhile: the lock went with it
                    lock.unlock()
                    self._free.append(lock)

    def _verify(self, lock: OfdLock) -> None:
        try:
            record = LockRecord.from_json(lock.read(), what=f"lock file {self.path}")
        except MalformedData as exc:
            raise SpoolFenced(f"cannot verify the fence: {exc}") from exc
        if record is None or record.token != self._token or record.holder != self.holder:
            self._revoked = True
            found = "nothing" if record is None else f"token {record.token} of {record.holder}"
            raise SpoolFenced(
                f"spool {self.directory} was taken: the lock file names {found}, "
                f"ours is {self._token}"
            )
        if not self._lease_valid():
            raise SpoolFenced(f"spool {self.directory}: the lease ran out")

    def close(self) -> None:
        """Revoke and close every lock file descriptor this fence opened."""
        self._revoked = True
        with self._guard:  # a section's end returns its lock under the guard too
            opened, self._opened = self._opened, []
            self._free.clear()
            for lock in opened:
                lock.close()


def status(record: LockRecord | None) -> dict[str, Any]:
    """A lock record as a JSON-ready dict (for the CLI)."""
    return {} if record is None else attrs.asdict(record)
