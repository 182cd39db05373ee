"""Znodes transactions and the light list watch, on a real ZooKeeper."""

from __future__ import annotations

import queue
from collections.abc import Callable

import pytest

from mhafail.coordination import Coordinator
from mhafail.errors import CoordinationError

Factory = Callable[..., Coordinator]


def test_create_all_creates_every_znode_or_none(coordinator_factory: Factory) -> None:
    """create_all creates all znodes in one go, and none when one of them exists."""
    z = coordinator_factory().znodes
    z.ensure("t")
    calls: list[int] = []
    assert z.create_all([("t/a", b"1"), ("t/b", b"2")], meanwhile=lambda: calls.append(1)) is None
    assert calls == [1]
    assert z.get("t/a").data == b"1" and z.get("t/b").data == b"2"  # type: ignore[union-attr]
    assert z.create_all([("t/c", b""), ("t/a", b"x")]) == "t/a"
    assert z.get("t/c") is None and z.get("t/a").data == b"1"  # type: ignore[union-attr]
    with pytest.raises(CoordinationError):
        z.create_all([("t/missing/child", b"")])
    assert z.create_all([]) is None


def test_create_each_skips_existing_znodes(coordinator_factory: Factory) -> None:
    """create_each creates the znodes that do not exist and reports those that did."""
    z = coordinator_factory().znodes
    z.ensure("e")
    z.create("e/b", b"old")
    got = z.create_each([("e/a", b"1"), ("e/b", b"2"), ("e/c", b"3")])
    assert got == {"e/a": True, "e/b": False, "e/c": True}
    assert z.get("e/b").data == b"old"  # type: ignore[union-attr]


def test_delete_all_deletes_what_exists(coordinator_factory: Factory) -> None:
    """delete_all deletes the znodes that exist and counts them, skipping missing ones."""
    z = coordinator_factory().znodes
    z.ensure("d")
    for name in ("a", "b", "c"):
        z.create(f"d/{name}")
    assert z.delete_all(["d/a", "d/gone", "d/c", "d/a"]) == 2
    assert z.children("d") == ["b"]
    assert z.delete_all([]) == 0


def test_watch_list_delivers_each_new_child_list(coordinator_factory: Factory) -> None:
    """watch_list hands over the list after each change, and None once the folder is gone."""
    z = coordinator_factory().znodes
    z.ensure("w")
    seen: queue.SimpleQueue[list[str] | None] = queue.SimpleQueue()
    watch = z.watch_list("w", seen.put)
    assert seen.get(timeout=5) == []
    z.create("w/x")
    assert seen.get(timeout=5) == ["x"]
    z.delete("w/x")
    assert seen.get(timeout=5) == []
    z.delete("w")
    assert seen.get(timeout=5) is None
    watch.cancel()
    assert z.watch_list("absent", seen.put) is not None
    assert seen.get(timeout=5) is None
