"""Reading and moving git refs in-process, with git's own locking protocol.

Why: ``git update-ref`` is a process start (5-8 ms on a loaded two-core
host) and a commit moved up to four refs on its critical path. The
protocol is git's, so git processes and this module can move the same
ref concurrently: ``<ref>.lock`` is created exclusively (whoever holds it
owns the ref), the old value is compared under the lock, the new value is
written to the lock file, which is renamed over the ref. A ref that only
``packed-refs`` holds is read from there; deleting one is left to git.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path

from mhafail.errors import RepositoryError

_HEX40 = re.compile(rb"[0-9a-f]{40}")
ANY = "any"
"""``old`` value of :func:`update_ref` meaning: whatever the ref holds now."""


def take_lock(lock: Path, wait: float = 1.0) -> int | None:
    """Create git's ``<file>.lock`` exclusively and return its descriptor.

    Waits up to ``wait`` seconds for another process's lock, as git does;
    None when it is still there then.
    """
    end = time.monotonic() + wait
    while True:
        try:
            return os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            if time.monotonic() >= end:
                return None
            time.sleep(0.005)


def read_ref(git_dir: Path, ref: str) -> str | None:
    """The sha ``ref`` holds (loose file first, then ``packed-refs``), or None.

    Raises:
        RepositoryError: the ref holds something other than a sha (a
            symbolic ref, garbage).
    """
    try:
        text = (git_dir / ref).read_bytes().strip()
    except (FileNotFoundError, NotADirectoryError):
        text = b""
    if not text:
        try:
            packed = (git_dir / "packed-refs").read_bytes()
        except FileNotFoundError:
            return None
        suffix = b" " + ref.encode()
        text = next((ln[:40] for ln in packed.splitlines() if ln.endswith(suffix)), b"")
        if not text:
            return None
    if not _HEX40.fullmatch(text):
        raise RepositoryError(f"{git_dir}: {ref} does not hold a sha ({text[:60]!r})")
    return text.decode()


def update_ref(git_dir: Path, ref: str, new: str | None, old: str | None = ANY) -> None:
    """Point ``ref`` at ``new`` (None: delete it) if it holds ``old`` (None: must not exist).

    Waits up to a second for another process's lock, as git does.

    Raises:
        RepositoryError: the ref does not hold ``old``, or stays locked.
    """
    path = git_dir / ref
    lock = path.with_name(path.name + ".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = take_lock(lock)
    if fd is None:
        raise RepositoryError(f"{git_dir}: {ref} is locked ({lock} exists)")
    owned = True  # the lock file is ours until renamed (then it may be another's)
    try:
        current = read_ref(git_dir, ref)
        if old not in (ANY, current):
            raise RepositoryError(
                f"{git_dir}: {ref} is at {current or 'nothing'}, expected {old or 'nothing'}"
            )
        if new is None:
            os.close(fd)
            fd = -1
            if current is not None and not path.is_file():
                raise RepositoryError(f"{git_dir}: {ref} is packed; delete it with git")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        os.write(fd, new.encode() + b"\n")
        os.close(fd)
        fd = -1
        os.rename(lock, path)
        owned = False
        _log(git_dir, ref, current, new)
    finally:
        if fd >= 0:
            os.close(fd)
        if owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)


def _log(git_dir: Path, ref: str, old: str | None, new: str) -> None:
    # Keep the reflog operators read (`git reflog main`) where git keeps one:
    # a branch of a working copy (core.logAllRefUpdates), or an existing log.
    log = git_dir / "logs" / ref
    if not (log.is_file() or (ref.startswith("refs/heads/") and git_dir.name == ".git")):
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    line = (
        f"{old or '0' * 40} {new} mhafail <mhafail@localhost> {int(time.time())} +0000\tmhafail\n"
    )
    with open(log, "a", encoding="utf-8") as file:
        file.write(line)
