"""Pure checks for config paths and change sets, and the resolution order.

No I/O here: these functions decide whether a change set may even be
staged. A repository path is relative, uses ``/``, and never names ``..``,
``.`` or a ``.git`` component (git itself refuses ``.git`` in trees, and a
path outside the tree would let a commit write anywhere on every node).
"""

from __future__ import annotations

from collections.abc import Mapping

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
    """

    max_file_bytes: int = 1 << 20
    max_total_bytes: int = 64 << 20
    max_files: int = 10_000
    max_path_length: int = 255


def check_path(path: str, limits: Limits | None = None) -> str:
    """Return ``path`` if it is an acceptable repository path.

    Args:
        path: a relative path such as ``global/ecelerity.conf``.
        limits: size limits (default :class:`Limits`).

    Returns:
        The path, unchanged.

    Raises:
        InvalidChange: absolute, empty component, ``.``/``..``, ``.git``,
            backslash, control character, or too long.
    """
    limits = limits or Limits()
    if not isinstance(path, str) or not path:
        raise InvalidChange(f"invalid path {path!r}: must be a non-empty string")
    if path.startswith("/"):
        raise InvalidChange(f"invalid path {path!r}: absolute paths are not allowed")
    if "\\" in path:
        raise InvalidChange(f"invalid path {path!r}: use '/' as separator, not '\\'")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise InvalidChange(f"invalid path {path!r}: control characters are not allowed")
    if len(path.encode()) > limits.max_path_length:
        raise InvalidChange(
            f"invalid path {path[:40]!r}...: longer than {limits.max_path_length} bytes"
        )
    for part in path.split("/"):
        if part in ("", ".", ".."):
            raise InvalidChange(f"invalid path {path!r}: empty, '.' or '..' component")
        # Case-insensitive: on case-folding file systems ".GIT" is ".git".
        if part.lower() == ".git":
            raise InvalidChange(f"invalid path {path!r}: '.git' is reserved")
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
    """Return ``sha`` lower-cased if it is a full 40-hex-digit commit id.

    Raises:
        InvalidChange: anything else (abbreviations are refused on purpose:
            they are ambiguous across nodes with different object sets).
    """
    if not isinstance(sha, str) or len(sha) != 40:
        raise InvalidChange(f"invalid sha {sha!r}: need 40 hex digits")
    try:
        int(sha, 16)
    except ValueError:
        raise InvalidChange(f"invalid sha {sha!r}: need 40 hex digits") from None
    return sha.lower()
