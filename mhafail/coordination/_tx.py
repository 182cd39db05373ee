"""Operations of a ZooKeeper transaction (``Znodes.transact``): all happen or none."""

from __future__ import annotations

import attrs


@attrs.frozen
class Create:
    """Create ``path`` with ``data`` (it must not exist; its parent must)."""

    path: str
    data: bytes = b""
    ephemeral: bool = False


@attrs.frozen
class Check:
    """Require ``path`` to exist, at ``version`` (-1: any version)."""

    path: str
    version: int = -1


@attrs.frozen
class SetData:
    """Replace the data of ``path`` if it is at ``version`` (-1: any)."""

    path: str
    data: bytes
    version: int = -1


@attrs.frozen
class Delete:
    """Delete ``path`` if it is at ``version`` (-1: any)."""

    path: str
    version: int = -1


def absent(path: str) -> tuple[Create, Delete]:
    """Two operations that together require ``path`` not to exist, and change nothing.

    ZooKeeper has no "check absent": creating the znode fails if it exists,
    and deleting it again in the same transaction leaves no trace.
    """
    return Create(path), Delete(path, 0)


Op = Create | Check | SetData | Delete
