"""Updating a few entries of a git index in-process.

Why: the working copy's index follows every published commit on every
node (so that an operator's ``git status`` stays truthful), and a ``git
update-index`` process for that was the last git process on a commit's
critical path: about 10-20 ms of a loaded two-core host, on every node.

Only the plain formats are handled: index versions 2 and 3, no merge
conflict in progress, no required extension (split index, sparse index).
Optional extensions (the cache tree, the untracked cache, offset tables)
are dropped, which git allows: they are caches it rebuilds. Anything else
returns False and the caller runs git. Changed entries get zeroed stat
data, as ``git update-index --index-info`` gives them: git compares the
file's content the next time it looks. The index is replaced under git's
own ``index.lock``, so a concurrent git command waits or fails cleanly.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from mhafail.config._refs import take_lock

_HEADER = struct.Struct(">4sLL")
_STAT = struct.Struct(
    ">10L20sH"
)  # ctime, mtime (s, ns), dev, ino, mode, uid, gid, size, sha, flags
_EXTENDED = 0x4000
_STAGE = 0x3000
_NAME_MASK = 0xFFF


def _parse(data: bytes) -> tuple[int, dict[bytes, bytes]] | None:
    """``(version, name -> raw entry without padding)``, or None when not a plain index."""
    if len(data) < _HEADER.size + 20 or hashlib.sha1(data[:-20]).digest() != data[-20:]:  # noqa: S324 - git's own checksum
        return None
    sig, version, count = _HEADER.unpack_from(data)
    if sig != b"DIRC" or version not in (2, 3):
        return None
    entries: dict[bytes, bytes] = {}
    pos = _HEADER.size
    for _ in range(count):
        flags = _STAT.unpack_from(data, pos)[11]
        if flags & _STAGE:
            return None  # a merge conflict in progress: git's business
        start = pos + _STAT.size + (2 if flags & _EXTENDED else 0)
        end = data.find(b"\0", start)
        if end < 0:
            return None
        entries[data[start:end]] = data[pos:end]
        pos += ((end - pos) // 8 + 1) * 8  # 1 to 8 NULs, to a multiple of 8
    body_end = len(data) - 20
    while pos < body_end:
        sig, size = struct.unpack_from(">4sL", data, pos)
        if not sig[:1].isupper():
            return None  # a required extension (split index, sparse): not ours to drop
        pos += 8 + size
    return version, entries


def _entry(name: bytes, mode: str, blob: str) -> bytes:
    flags = min(len(name), _NAME_MASK)
    stat = _STAT.pack(0, 0, 0, 0, 0, 0, int(mode, 8), 0, 0, 0, bytes.fromhex(blob), flags)
    return stat + name


def _change(
    entries: dict[bytes, bytes], changes: Sequence[tuple[str, str | None, str | None]]
) -> bool:
    """Apply ``changes`` to ``entries``; False when a file/directory clash asks for git."""
    for path, mode, blob in changes:
        name = path.encode()
        if mode is None:
            entries.pop(name, None)
        elif blob is not None:
            entries[name] = _entry(name, mode, blob)
    names = set(entries)
    for path, mode, _ in changes:
        name = path.encode()
        parents = {name[:i] for i in range(len(name)) if name[i : i + 1] == b"/"}
        if mode is not None and (parents & names or any(n.startswith(name + b"/") for n in names)):
            return False
    return True


def update_index(git_dir: Path, changes: Sequence[tuple[str, str | None, str | None]]) -> bool:
    """Set (``mode``, ``blob``) or remove (mode None) index entries by path; False: use git.

    Returns:
        True when the index was updated; False when its format, a lock
        held too long, or a file/directory clash with other entries asks
        for git (nothing was changed then).
    """
    index, lock = git_dir / "index", git_dir / "index.lock"
    fd = take_lock(lock)
    if fd is None:
        return False
    owned = True
    try:
        try:
            parsed = _parse(index.read_bytes())
        except FileNotFoundError:
            parsed = (2, {})
        if parsed is None:
            return False
        version, entries = parsed
        if not _change(entries, changes):
            return False
        out = bytearray(_HEADER.pack(b"DIRC", version, len(entries)))
        for name in sorted(entries):
            raw = entries[name]
            out += raw + b"\0" * (8 - len(raw) % 8)
        out += hashlib.sha1(out).digest()  # noqa: S324 - git's own checksum
        os.write(fd, out)
        os.close(fd)
        fd = -1
        os.rename(lock, index)
        owned = False
        return True
    finally:
        if fd >= 0:
            os.close(fd)
        if owned:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock)
