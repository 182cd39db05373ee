"""Git objects in-process: hashing, loose object files, trees and commits.

Why: every git subprocess costs 5-8 ms of fork, exec and start-up on a
loaded two-core host, and a commit used to need about twenty of them on
its critical path (``hash-object``, ``update-index``, ``write-tree``,
``commit-tree``, ``pack-objects``, ``unpack-objects``, ``cat-file``...).
The objects a config commit adds are a handful of small blobs, trees and
one commit: writing and reading them here takes microseconds.

The format is git's own: a loose object is the zlib-compressed bytes of
``<type> <size>\\0<body>``, named by the SHA-1 of those uncompressed
bytes, in ``objects/<2 hex>/<38 hex>``. The functions here produce objects
byte-identical to what ``git hash-object``, ``git mktree`` and ``git
commit-tree`` write (the tests compare the shas and run ``git fsck``).

Writes follow git's rules: a uniquely named temporary file in the
object's directory, flushed to disk (``core.fsync=committed``), then
linked to its final name; an object that exists is never rewritten.
Objects are immutable, so concurrent writers of one object are harmless.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import secrets
import zlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from mhafail.errors import InvalidChange

KINDS = (b"blob", b"tree", b"commit")
FILE_MODE = b"100644"
EXEC_MODE = b"100755"
TREE_MODE = b"40000"
# Every mode git itself writes in a tree; fsck refuses the others.
_GIT_MODES = (FILE_MODE, EXEC_MODE, TREE_MODE, b"120000", b"160000")
_HEX40 = re.compile(rb"[0-9a-f]{40}")
_IDENT = re.compile(rb"[^<>\n]*<[^<>\n]*> \d{1,19} [+-]\d{4}")

TreeEntry = tuple[bytes, bytes, str]
"""One tree entry: ``(mode, name, sha)``; mode as git writes it (``40000``, ``100644``...)."""


def object_id(kind: bytes, body: bytes) -> str:
    """The sha git gives an object of type ``kind`` with content ``body``."""
    return hashlib.sha1(b"%s %d\0%s" % (kind, len(body), body), usedforsecurity=False).hexdigest()


def compress(kind: bytes, body: bytes) -> bytes:
    """The bytes of the loose object file (git's ``core.looseCompression`` default, 1)."""
    return zlib.compress(b"%s %d\0%s" % (kind, len(body), body), 1)


def decompress(sha: str, data: bytes, max_size: int) -> tuple[bytes, bytes]:
    """Check a loose object's bytes against its name; return ``(type, body)``.

    The checks git makes before it stores a received object: a well-formed
    header of a known type, the stated size, and the sha of the content.

    Raises:
        InvalidChange: malformed, larger than ``max_size``, or another sha.
    """
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(data, max_size + 64)
    except zlib.error as exc:
        raise InvalidChange(f"object {sha[:12]}: not zlib data ({exc})") from None
    if inflater.unconsumed_tail or not inflater.eof or inflater.unused_data:
        raise InvalidChange(f"object {sha[:12]}: truncated, trailing bytes or too large")
    header, nul, body = raw.partition(b"\0")
    kind, _, size = header.partition(b" ")
    if not nul or kind not in KINDS or not size.isdigit() or int(size) != len(body):
        raise InvalidChange(f"object {sha[:12]}: malformed header {header[:32]!r}")
    if len(body) > max_size:
        raise InvalidChange(f"object {sha[:12]}: {len(body)} bytes exceeds {max_size}")
    if object_id(kind, body) != sha:
        raise InvalidChange(f"object {sha[:12]}: its content hashes to another sha")
    return kind, body


# --- trees ---------------------------------------------------------------------


def _sort_key(entry: TreeEntry) -> bytes:
    # git orders a directory as if its name ended with '/'.
    return entry[1] + b"/" if entry[0] == TREE_MODE else entry[1]


def encode_tree(entries: Iterable[TreeEntry]) -> bytes:
    """The body of the tree object listing ``entries`` (sorted as git sorts them).

    Raises:
        InvalidChange: a mode git does not write, a name with ``/`` or
            NUL, an empty name, or one name listed twice.
    """
    ordered = sorted(entries, key=_sort_key)
    out = bytearray()
    seen: set[bytes] = set()
    for mode, name, sha in ordered:
        if mode not in _GIT_MODES or not name or b"/" in name or b"\0" in name:
            raise InvalidChange(f"cannot write tree entry {mode!r} {name!r}")
        if name in seen:
            raise InvalidChange(f"cannot write tree: {name!r} listed twice")
        seen.add(name)
        out += b"%s %s\0%s" % (mode, name, bytes.fromhex(sha))
    return bytes(out)


def parse_tree(body: bytes, where: str = "") -> list[TreeEntry]:
    """The entries of a raw tree object, checked as ``git fsck`` checks them.

    Raises:
        InvalidChange: truncated, a mode git does not write (or zero-padded),
            an empty name or one holding ``/``, duplicates, wrong order.
    """
    entries: list[TreeEntry] = []
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        nul = body.find(b"\0", space + 1)
        if space < 0 or nul < 0 or nul + 21 > len(body):
            raise InvalidChange(f"malformed git tree at {where or '/'}")
        mode, name = body[pos:space], body[space + 1 : nul]
        if mode not in _GIT_MODES or not name or b"/" in name:
            raise InvalidChange(f"malformed git tree entry at {where or '/'}: {mode!r} {name!r}")
        entries.append((mode, name, body[nul + 1 : nul + 21].hex()))
        pos = nul + 21
    keys = [_sort_key(e) for e in entries]
    if any(a >= b for a, b in itertools.pairwise(keys)):
        raise InvalidChange(f"malformed git tree at {where or '/'}: entries out of order")
    return entries


def build_tree(
    root: str | None,
    files: Mapping[str, str | None],
    read_tree: Callable[[str], bytes],
    write: Callable[[bytes, bytes], str],
) -> str | None:
    """The tree ``root`` with ``files`` set (``path -> blob sha``, mode 100644) or deleted (None).

    Only the trees on the changed paths are read (``read_tree(sha)`` gives
    a tree's body) and written (``write(b"tree", body)`` gives its sha); a
    directory left empty disappears, as ``git write-tree`` does.

    Returns:
        The new root tree's sha (None: the tree is empty).

    Raises:
        InvalidChange: deleting a path that is not a file, or a path that
            needs a directory where a file stays (or the reverse).
    """
    children: dict[bytes, dict[str, str | None]] = {}
    here: dict[bytes, str | None] = {}
    for path, blob in files.items():
        first, slash, rest = path.partition("/")
        if slash:
            children.setdefault(first.encode(), {})[rest] = blob
        else:
            here[first.encode()] = blob
    entries = {e[1]: e for e in parse_tree(read_tree(root))} if root is not None else {}
    # Deletions, then subdirectories, then new files: a file may replace a
    # directory emptied by the same change set, and the reverse.
    _set_files(entries, {n: b for n, b in here.items() if b is None})
    for name, below in children.items():
        old = entries.get(name)
        if old is not None and old[0] != TREE_MODE:
            raise InvalidChange(f"{name.decode()}: is both a file and a directory")
        sub = build_tree(old[2] if old else None, below, read_tree, write)
        if sub is None:
            entries.pop(name, None)
        else:
            entries[name] = (TREE_MODE, name, sub)
    _set_files(entries, {n: b for n, b in here.items() if b is not None})
    if not entries:
        return None
    return write(b"tree", encode_tree(entries.values()))


def _set_files(entries: dict[bytes, TreeEntry], files: Mapping[bytes, str | None]) -> None:
    for name, blob in files.items():
        old = entries.get(name)
        if blob is None:
            if old is None or old[0] == TREE_MODE:
                raise InvalidChange(f"{name.decode()}: cannot delete, it is not a file in the base")
            del entries[name]
        elif old is not None and old[0] == TREE_MODE:
            raise InvalidChange(f"{name.decode()}: is both a file and a directory")
        else:
            entries[name] = (FILE_MODE, name, blob)


# --- commits -------------------------------------------------------------------


def _without_crud(text: str) -> bytes:
    # git's ident.c (2.39, Debian 12) strips these from both ends of a name
    # or an email (and drops '<', '>' and newlines anywhere); git 2.42+ keeps
    # '.', so a trailing dot is the one case where the shas may differ.
    raw = text.encode()
    crud = b".,:;<>\"\\'"
    start, end = 0, len(raw)
    while start < end and (raw[start] <= 32 or raw[start] in crud):
        start += 1
    while end > start and (raw[end - 1] <= 32 or raw[end - 1] in crud):
        end -= 1
    return bytes(c for c in raw[start:end] if c not in b"\n<>")


def encode_commit(
    tree: str, parent: str | None, who: tuple[str, str], when: int, message: str
) -> bytes:
    """The body ``git commit-tree`` writes: same author and committer, UTC.

    Raises:
        InvalidChange: the name is empty once git's rules are applied.
    """
    name, email = _without_crud(who[0]), _without_crud(who[1])
    if not name:
        raise InvalidChange(f"invalid author {who[0]!r}: empty once trimmed as git does")
    ident = b"%s <%s> %d +0000" % (name, email, when)
    head = b"tree %s\n" % tree.encode()
    if parent is not None:
        head += b"parent %s\n" % parent.encode()
    return head + b"author %s\ncommitter %s\n\n%s" % (ident, ident, message.encode())


def parse_commit(body: bytes) -> tuple[str, list[str]]:
    """``(tree, parents)`` of a raw commit object, its header checked as fsck does.

    Raises:
        InvalidChange: a missing or malformed tree, parent, author or committer line.
    """
    header, _, _ = body.partition(b"\n\n")
    lines = header.split(b"\n")
    tree = lines[0][5:] if lines[0].startswith(b"tree ") else b""
    if not _HEX40.fullmatch(tree):
        raise InvalidChange("malformed commit: no tree line")
    pos, parents = 1, []
    while pos < len(lines) and lines[pos].startswith(b"parent "):
        if not _HEX40.fullmatch(lines[pos][7:]):
            raise InvalidChange("malformed commit: bad parent line")
        parents.append(lines[pos][7:].decode())
        pos += 1
    for field in (b"author ", b"committer "):
        line = lines[pos] if pos < len(lines) else b""
        if not line.startswith(field) or not _IDENT.fullmatch(line[len(field) :]):
            raise InvalidChange(f"malformed commit: bad {field.decode().strip()} line")
        pos += 1
    return tree.decode(), parents


# --- loose object files -------------------------------------------------------------


class LooseObjects:
    """The loose objects of one repository (``<git dir>/objects``).

    Reads see only loose objects (a packed one reads as missing: callers
    ask git for those); writes are complete files or nothing.
    """

    def __init__(self, objects: Path) -> None:
        self.objects = Path(objects)

    def path(self, sha: str) -> Path:
        """Where the loose object ``sha`` lives."""
        return self.objects / sha[:2] / sha[2:]

    def has(self, sha: str) -> bool:
        """True when ``sha`` is a loose object here."""
        return self.path(sha).is_file()

    def read(self, sha: str, max_size: int = 1 << 30) -> tuple[bytes, bytes] | None:
        """``(type, body)`` of the loose object ``sha``, or None when it is not loose here.

        Raises:
            InvalidChange: the file is corrupt (another sha, malformed).
        """
        try:
            data = self.path(sha).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return decompress(sha, data, max_size)

    def size(self, sha: str) -> tuple[bytes, int] | None:
        """``(type, size)`` of the loose object ``sha`` from its header alone, or None."""
        try:
            with open(self.path(sha), "rb") as file:
                head = zlib.decompressobj().decompress(file.read(256), 64)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except zlib.error:
            return None
        kind, _, size = head.partition(b"\0")[0].partition(b" ")
        if kind not in KINDS or not size.isdigit():
            return None
        return kind, int(size)

    def write(self, kind: bytes, body: bytes) -> str:
        """Store one object (a no-op when it exists); return its sha."""
        sha = object_id(kind, body)
        self.store({sha: compress(kind, body)})
        return sha

    def store(self, objects: Mapping[str, bytes]) -> None:
        """Store loose object files ``sha -> compressed bytes`` already checked by the caller.

        Each is written to a temporary file, flushed, and linked to its
        name (an existing object is kept as it is); then the directories
        are flushed, so the objects survive a power cut once this returns.
        """
        dirs: set[Path] = set()
        for sha, data in objects.items():
            final = self.path(sha)
            if final.is_file():
                continue
            final.parent.mkdir(exist_ok=True)
            tmp = final.parent / f"tmp_obj_mhafail_{secrets.token_hex(6)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp, final)
            except FileExistsError:
                pass  # written meanwhile by someone else: same content
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            dirs.add(final.parent)
        for directory in dirs:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
