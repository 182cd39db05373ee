"""Shared fixtures of the spool tests: a spool on a temporary directory, fenced by a file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from mhafail.spool import FileFence, NodePaths, Spool


@attrs.define
class Lease:
    """A switchable lease for FileFence (the real one is the coordinator's)."""

    ok: bool = True

    def __call__(self) -> bool:
        return self.ok


@attrs.define
class Local:
    """A spool with its paths, fence and lease."""

    paths: NodePaths
    fence: FileFence
    lease: Lease
    spool: Spool


def make_local(root: Path, node: str = "n1", *, token: int = 10, group: bool = False) -> Local:
    """A fenced spool for ``node`` under ``root`` (opened)."""
    paths = NodePaths(root, "c1", node).create()
    lease = Lease()
    fence = FileFence(paths.spool, holder=node, token=token, lease_valid=lease)
    fence.claim()
    spool = Spool(directory=paths.spool, node=node, fence=fence, group_commit=group).open()
    return Local(paths, fence, lease, spool)


@pytest.fixture
def local_factory(tmp_path: Path) -> Iterator[Callable[..., Local]]:
    """``make(root=tmp_path, node="n1", token=10, group=False)``: fenced spools, closed after."""
    made: list[Local] = []

    def make(root: Path | None = None, node: str = "n1", **kwargs: Any) -> Local:
        item = make_local(root or tmp_path, node, **kwargs)
        made.append(item)
        return item

    yield make
    for item in made:
        item.spool.close()
        item.fence.close()


@pytest.fixture
def local(local_factory: Callable[..., Local]) -> Local:
    """A fenced spool without group commit."""
    return local_factory()
