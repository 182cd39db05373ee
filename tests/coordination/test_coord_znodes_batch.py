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


def test_transaction_ops_create_check_and_absent(coordinator_factory: Factory) -> None:
    """Create, Check and absent() in one transaction: all happen, or nothing when one is refused."""
    from mhafail.coordination import Check, Create, Delete, absent

    z = coordinator_factory().znodes
    z.ensure("x")
    # absent() passes on a missing znode and leaves no trace.
    assert z.transact([Create("x/owner", b"me", ephemeral=True), *absent("x/next")])
    assert z.get("x/next") is None and z.get("x/owner").data == b"me"  # type: ignore[union-attr]
    # Check needs the znode to exist (any version with -1).
    assert z.transact([Create("x/next", b"r", ephemeral=True), Check("x/owner")])
    assert not z.transact([Create("x/other"), Check("x/missing")])
    assert z.get("x/other") is None
    # absent() refuses once the znode exists: nothing of the transaction happens.
    assert not z.transact([Delete("x/owner", 0), Create("x/owner2"), *absent("x/next")])
    assert z.get("x/owner") is not None and z.get("x/owner2") is None
    # Pipelined and sent-now forms agree with transact.
    assert z.transact_many([[Check("x/owner")], [Check("x/gone")], [*absent("x/free")]]) == [
        True,
        False,
        True,
    ]
    assert z.transact_soon([Check("x/next", 0)]).outcome(5.0) is True
    assert z.transact_soon([Check("x/next", 3)]).outcome(5.0) is False


def test_transaction_with_a_bad_path_raises_and_changes_nothing(
    coordinator_factory: Factory,
) -> None:
    """A transaction naming a bad path raises a documented error and creates nothing."""
    from mhafail.coordination import Create

    z = coordinator_factory().znodes
    z.ensure("bad")
    with pytest.raises((CoordinationError, ValueError)):
        z.transact([Create("bad/ok"), Create("bad/../x")])
    assert z.get("bad/ok") is None


def test_watch_gone_fires_for_a_later_deletion_only(coordinator_factory: Factory) -> None:
    """watch_gone fires once for a deletion after the call, at once when absent, never for an
    earlier deletion, and not after cancel."""
    z = coordinator_factory().znodes
    z.ensure("g")
    fired: queue.SimpleQueue[str] = queue.SimpleQueue()
    z.create("g/a", b"")
    watch = z.watch_gone("g/a", lambda: fired.put("a"))
    z.set("g/a", b"changed")  # a change is not a deletion: re-armed
    z.delete("g/a")
    assert fired.get(timeout=5) == "a"
    z.create("g/a", b"")
    z.delete("g/a")
    with pytest.raises(queue.Empty):
        fired.get(timeout=0.3)  # once only
    watch.cancel()
    # Absent already: fires from the read.
    z.watch_gone("g/none", lambda: fired.put("none"))
    assert fired.get(timeout=5) == "none"
    # Cancelled before the deletion: silent.
    z.create("g/b", b"")
    z.watch_gone("g/b", lambda: fired.put("b")).cancel()
    z.delete("g/b")
    with pytest.raises(queue.Empty):
        fired.get(timeout=0.3)
