"""Pure checks for config paths, names, shas and change sets, and the resolution order.

No I/O here (but for reading the current directory in :func:`absolute_path`):
these functions decide whether a change set may even be staged, and whether
a name found in a fetched git tree may ever become a file. A repository
path is relative, uses ``/``, and every component is a *safe name*
(:func:`check_component`): never ``..``, ``.``, empty, ``.git`` in any
case, and no ``/``, backslash, NUL or control character. A path outside
the tree would let a commit write anywhere on every node, so the same
rules apply to what operators commit and to what peers send.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import attrs

from mhafail.errors import InvalidChange

# The layers a file is looked up in, most specific first (Momentum's order).
GLOBAL = "global"
DEFAULT = "default"


@attrs.frozen
class Limits:
    """Size limits a change set must respect.

    Attributes:
        max_file_bytes: largest single file.
        max_total_bytes: largest sum of the new file contents in one change set.
        max_files: most paths one change set may touch.
        max_path_length: longest path, in UTF-8 bytes.
        max_tree_entries: most files and directories a whole version (a fetched
            tree) may hold.
        max_tree_bytes: largest sum of all file sizes in a whole version.
    """

    max_file_bytes: int = 1 << 20
    max_total_bytes: int = 64 << 20
    max_files: int = 10_000
    max_path_length: int = 255
    max_tree_entries: int = 100_000
    max_tree_bytes: int = 1 << 30


_SHA = re.compile(r"[0-9a-f]{40}")


def check_component(name: str, path: str = "") -> str:
    """Return ``name`` if it is a safe file or directory name (one path component).

    Safe means: not empty, not ``.`` or ``..``, not ``.git`` in any letter
    case (case-folding file systems), and no ``/``, backslash, NUL or other
    control character (below 0x20, and 0x7f). These are the rules for every
    level of every tree a node accepts, whoever wrote it.

    Args:
        name: the component.
        path: the whole path, for the error message (default: ``name``).

    Raises:
        InvalidChange: the name is not safe; the message names the path.
    """
    shown = path or name
    if not isinstance(name, str) or name in ("", ".", ".."):
        raise InvalidChange(f"invalid path {shown!r}: empty, '.' or '..' component")
    if "/" in name or "\\" in name:
        raise InvalidChange(f"invalid path {shown!r}: a name may not contain '/' or '\\'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise InvalidChange(f"invalid path {shown!r}: control characters are not allowed")
    # Case-insensitive: on case-folding file systems ".GIT" is ".git".
    if name.lower() == ".git":
        raise InvalidChange(f"invalid path {shown!r}: '.git' is reserved")
    return name


def check_path(path: str, limits: Limits | None = None) -> str:
    """Return ``path`` if it is an acceptable repository path.

    Args:
        path: a relative path such as ``global/ecelerity.conf``.
        limits: size limits (default :class:`Limits`).

    Returns:
        The path, unchanged.

    Raises:
        InvalidChange: absolute, empty component, ``.``/``..``, ``.git``,
            backslash, control character, not encodable as UTF-8, or too long.
    """
    limits = limits or Limits()
    if not isinstance(path, str) or not path:
        raise InvalidChange(f"invalid path {path!r}: must be a non-empty string")
    if path.startswith("/"):
        raise InvalidChange(f"invalid path {path!r}: absolute paths are not allowed")
    if "\\" in path:
        raise InvalidChange(f"invalid path {path!r}: use '/' as separator, not '\\'")
    try:
        size = len(path.encode())
    except UnicodeEncodeError:
        # Surrogates: what Python makes of file names that are not UTF-8.
        raise InvalidChange(f"invalid path {path!r}: not valid UTF-8") from None
    if size > limits.max_path_length:
        raise InvalidChange(
            f"invalid path {path[:40]!r}...: longer than {limits.max_path_length} bytes"
        )
    for part in path.split("/"):
        check_component(part, path)
    return path


def check_changes(
    changes: Mapping[str, bytes | None], limits: Limits | None = None
) -> dict[str, bytes | None]:
    """Validate a change set (path -> new bytes, or None to delete).

    Returns:
        A sorted copy of the change set.

    Raises:
        InvalidChange: empty change set, a bad path, content that is not
            bytes, or a size limit exceeded (the message names the path).
    """
    limits = limits or Limits()
    if not changes:
        raise InvalidChange("empty change set: nothing to commit")
    if len(changes) > limits.max_files:
        raise InvalidChange(f"change set touches {len(changes)} paths; limit {limits.max_files}")
    total = 0
    checked: dict[str, bytes | None] = {}
    for path in sorted(changes):
        check_path(path, limits)
        data = changes[path]
        if data is not None:
            if not isinstance(data, bytes | bytearray | memoryview):
                raise InvalidChange(f"{path}: content must be bytes, not {type(data).__name__}")
            data = bytes(data)
            if len(data) > limits.max_file_bytes:
                raise InvalidChange(
                    f"{path}: {len(data)} bytes exceeds the limit of {limits.max_file_bytes}"
                )
            total += len(data)
        checked[path] = data
    if total > limits.max_total_bytes:
        raise InvalidChange(f"change set is {total} bytes; limit {limits.max_total_bytes}")
    # A file and a directory cannot share a name: "a" and "a/b" in one tree.
    files = {p for p, d in checked.items() if d is not None}
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            if "/".join(parts[:i]) in files:
                raise InvalidChange(f"{path}: its parent {'/'.join(parts[:i])!r} is a file")
    return checked


def absolute_path(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute against the current directory, once, at construction.

    git runs with ``-C <working copy>``: a relative directory handed to it
    (``--prefix`` of a checkout) would land below the working copy instead.
    """
    return Path(os.path.abspath(path))


def layers(node: str) -> tuple[str, str, str]:
    """The folders a file is resolved in for ``node``: node, ``global``, ``default``."""
    return (node, GLOBAL, DEFAULT)


def candidates(node: str, path: str) -> list[str]:
    """Repository paths to try, in order, when ``node`` resolves ``path``.

    Raises:
        InvalidChange: ``path`` is not an acceptable path.
    """
    check_path(path)
    return [f"{layer}/{path}" for layer in layers(node)]


def check_sha(sha: str) -> str:
    """Return ``sha`` if it is a full commit id: exactly 40 ASCII ``[0-9a-f]``.

    One spelling only, the one git prints: no upper case, no ``0x``, no
    sign, no whitespace, no Unicode digits. A sha ends up on git command
    lines, so anything that could read as an option or a revision
    expression is refused here.

    Raises:
        InvalidChange: anything else (abbreviations are refused on purpose:
            they are ambiguous across nodes with different object sets).
    """
    if not isinstance(sha, str) or _SHA.fullmatch(sha) is None:
        raise InvalidChange(f"invalid sha {str(sha)[:60]!r}: need 40 lower-case hex digits")
    return sha
