"""Operations of a ZooKeeper transaction (``Znodes.transact``): all happen or none."""

from __future__ import annotations

import attrs


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


Op = SetData | Delete
