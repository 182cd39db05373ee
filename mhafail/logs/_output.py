"""Where a manager writes records: the path pattern and a pool of open files.

A pattern is a path relative to the output base, with strftime fields
(``%Y %m %d %H``, applied to each record's write time in local time) and
the placeholders ``{log}``, ``{cluster}`` and ``{node}``. The default,
``%Y/%m/%d/{log}/{cluster}/{node}``, is Momentum's tree. ``{log}`` and
``{node}`` are required: each (node, log) stream owns its files, which is
what lets a restarted manager cut a file back to its last durable offset.

Thread safety: :class:`OutputFiles` is shared by every stream of one
aggregator; its methods take its lock. A file is only ever written by the
stream that owns it.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from mhafail._fs import fsync_dir
from mhafail.errors import LogsInvalidArgument

DEFAULT_PATTERN = "%Y/%m/%d/{log}/{cluster}/{node}"
_FIELDS = re.compile(r"%(.)")
_ALLOWED = {"Y", "m", "d", "H", "%"}


@attrs.frozen
class PathPattern:
    """A validated output path pattern.

    Attributes:
        pattern: the pattern text.
        cluster: the cluster name substituted for ``{cluster}``.
    """

    pattern: str = DEFAULT_PATTERN
    cluster: str = ""

    def __attrs_post_init__(self) -> None:
        p = self.pattern
        bad = sorted({f for f in _FIELDS.findall(p) if f not in _ALLOWED})
        if bad:
            raise LogsInvalidArgument(
                f"output pattern {p!r} uses %{', %'.join(bad)}: only %Y %m %d %H and %% are allowed"
            )
        if "{log}" not in p or "{node}" not in p:
            raise LogsInvalidArgument(f"output pattern {p!r} must contain {{log}} and {{node}}")
        leftover = re.sub(r"\{(log|node|cluster)\}", "", p)
        if "{" in leftover or "}" in leftover:
            raise LogsInvalidArgument(
                f"output pattern {p!r}: only {{log}}, {{node}} and {{cluster}} are placeholders"
            )
        parts = p.split("/")
        if p.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise LogsInvalidArgument(
                f"output pattern {p!r} must be a relative path without empty, . or .. parts"
            )

    @property
    def hourly(self) -> bool:
        """True when the pattern names a new file every hour."""
        return "%H" in self.pattern

    def render(self, when: float, *, node: str, log: str) -> str:
        """Return the relative path for a record written at ``when``."""
        text = time.strftime(self.pattern, time.localtime(when))
        return text.replace("{log}", log).replace("{node}", node).replace("{cluster}", self.cluster)

    def period(self, when: float) -> tuple[float, float]:
        """Return the ``[start, end)`` interval of write times sharing ``when``'s file."""
        t = time.localtime(when)
        hour = t.tm_hour if self.hourly else 0
        start = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, hour, 0, 0, 0, 0, -1))
        if self.hourly:
            return start, start + 3600
        end = time.mktime((t.tm_year, t.tm_mon, t.tm_mday + 1, 0, 0, 0, 0, 0, -1))
        return start, end


class OutputFiles:
    """Open output files, capped in number and closed when idle.

    Args:
        base: the output directory.
        file_mode: mode for new files.
        dir_mode: mode for new directories.
        max_open: open files kept at most; the least recently used idle
            file is closed to make room.
        idle_close: seconds after which an unused file is closed.
        monotonic: clock for idleness.
    """

    def __init__(
        self,
        base: Path,
        *,
        file_mode: int = 0o640,
        dir_mode: int = 0o750,
        max_open: int = 256,
        idle_close: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_open < 1:
            raise LogsInvalidArgument("max_open must be at least 1")
        self.base = base
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.max_open = max_open
        self.idle_close = idle_close
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._open: collections.OrderedDict[str, _Entry] = collections.OrderedDict()

    @property
    def open_count(self) -> int:
        """How many files are open now."""
        with self._lock:
            return len(self._open)

    def make_dirs(self, directory: Path) -> None:
        """Create ``directory`` and missing parents with ``dir_mode``, durably."""
        missing = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        for new in reversed(missing):
            with contextlib.suppress(FileExistsError):
                os.mkdir(new, self.dir_mode)
                os.chmod(new, self.dir_mode)  # the umask must not weaken or widen it
            fsync_dir(new.parent)

    @contextlib.contextmanager
    def use(self, rel: str) -> Iterator[int]:
        """Lend an appending descriptor for ``rel``, creating the file durably.

        The descriptor stays open while lent: eviction and idle close only
        take files nobody is using (a closed, reused descriptor number
        would write into another file).

        Raises:
            OSError: the file cannot be created or opened (full disk, permissions).
        """
        with self._lock:
            entry = self._open.get(rel)
            if entry is not None:
                self._open.move_to_end(rel)
                entry.users += 1
        if entry is None:
            entry = self._open_new(rel)
        try:
            yield entry.fd
        finally:
            with self._lock:
                entry.users -= 1
                entry.used = self._monotonic()
                doomed = self._evict()
            for fd in doomed:
                os.close(fd)

    def _open_new(self, rel: str) -> _Entry:
        path = self.base / rel
        self.make_dirs(path.parent)
        created = not path.exists()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, self.file_mode)
        if created:
            os.fchmod(fd, self.file_mode)
            fsync_dir(path.parent)
        entry = _Entry(fd, 1, self._monotonic())
        with self._lock:
            # Only the owning stream opens its files, so nobody raced us here.
            self._open[rel] = entry
            doomed = self._evict()
        for old in doomed:
            os.close(old)
        return entry

    def _evict(self) -> list[int]:
        """Pick idle files to close until within ``max_open`` (caller holds the lock)."""
        doomed = []
        for rel in list(self._open):
            if len(self._open) <= self.max_open:
                break
            if self._open[rel].users == 0:
                doomed.append(self._open.pop(rel).fd)
        return doomed

    def forget(self, rel: str) -> None:
        """Close ``rel`` if it is open and unused (before truncating it, for instance)."""
        with self._lock:
            entry = self._open.get(rel)
            if entry is None or entry.users:
                return
            del self._open[rel]
        os.close(entry.fd)

    def close_idle(self) -> int:
        """Close files unused for ``idle_close`` seconds; return how many."""
        cutoff = self._monotonic() - self.idle_close
        with self._lock:
            idle = [r for r, e in self._open.items() if e.users == 0 and e.used <= cutoff]
            fds = [self._open.pop(rel).fd for rel in idle]
        for fd in fds:
            os.close(fd)
        return len(fds)

    def close_all(self) -> None:
        """Close every unused file (call once the streams have stopped)."""
        with self._lock:
            idle = [r for r, e in self._open.items() if e.users == 0]
            fds = [self._open.pop(rel).fd for rel in idle]
        for fd in fds:
            os.close(fd)


@attrs.define
class _Entry:
    fd: int
    users: int
    used: float
