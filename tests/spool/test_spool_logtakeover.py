"""A takeover moves a dead node's commit log by one rename: no file per message, exactly once."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mhafail.spool import Envelope, FileFence, Spool, _commit
from mhafail.spool._wal import WAL, logged, pending

ENV = Envelope(sender="a@example.org", recipients=("b@example.net",))


def message_files(spool_dir: Path) -> set[str]:
    """The message files (not state files) in a spool's ``msg/``."""
    return {n for n in os.listdir(spool_dir / "msg") if not n.endswith(".state")}


def take(local: Any, holder: str, token: int) -> FileFence:
    """Fence ``local``'s spool out (its lease gone) and claim it for ``holder``."""
    local.lease.ok = False
    fence = FileFence(local.paths.spool, holder=holder, token=token, lease_valid=lambda: True)
    fence.claim()
    return fence


def reopen(local: Any, token: int) -> Spool:
    """What a restart does: a new process holds the spool with a newer token and opens it."""
    fence = take(local, local.paths.node, token)
    return Spool(directory=local.paths.spool, node=local.paths.node, fence=fence).open()


def test_log_comes_over_whole_without_a_file_per_message(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The survivor renames the dead log in: no message file is created, each is readable once."""
    dead = local_factory(node="d", group=True)
    survivor = local_factory(node="s", group=True)
    ids = [dead.spool.put(ENV, f"m{i}".encode()) for i in range(40)]
    dead.spool.defer(ids[1], 1e12, "later")  # a state file that must follow its message
    dead.spool.done(ids[2])  # dropped: must not come over
    fence = take(dead, "s", 20)
    created: list[str] = []
    real_open = os.open

    def opened(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and Path(path).parent.name in ("msg", "tmp"):
            created.append(str(path))  # a message file (the lock file is opened, not made)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", opened)
    came = survivor.spool.adopt_log(dead.paths.spool, fence, "d.14")
    monkeypatch.undo()
    assert set(came) == set(ids) - {ids[2]}
    assert created == []
    assert not (dead.paths.spool / WAL).exists()
    assert not pending(dead.paths.spool) and not message_files(dead.paths.spool)
    assert not message_files(survivor.paths.spool) & set(ids)  # in the log only
    assert survivor.spool.read(ids[5]) == b"m5"
    assert survivor.spool.get(ids[1]).attempts == 1
    assert set(logged(survivor.paths.spool)) >= set(came)
    fence.close()


def test_taken_over_log_replays_after_a_survivor_crash_without_resurrection(
    local_factory: Callable[..., Any],
) -> None:
    """After a survivor crash, its replay restores the imported messages, never a done one."""
    dead = local_factory(node="d", group=True)
    survivor = local_factory(node="s", group=True)
    ids = [dead.spool.put(ENV, f"m{i}".encode()) for i in range(30)]
    fence = take(dead, "s", 20)
    survivor.spool.adopt_log(dead.paths.spool, fence, "d.14")
    fence.close()
    survivor.spool.done(ids[0])  # a drop in the survivor's log of a put in the imported one
    reopened = reopen(survivor, 30)  # the survivor crashed: its next process replays
    try:
        assert set(reopened.ids()) == set(ids[1:])
        assert message_files(survivor.paths.spool) == set(ids[1:])
        assert not pending(survivor.paths.spool)  # the imported log is retired
        assert reopened.read(ids[7]) == b"m7"
    finally:
        reopened.close()


def test_imported_log_is_retired_once_its_messages_are_delivered(
    local_factory: Callable[..., Any],
) -> None:
    """Imported messages delivered before any checkpoint never get a file; the log goes."""
    dead = local_factory(node="d", group=True)
    survivor = local_factory(node="s", group=True)
    ids = [dead.spool.put(ENV, b"x") for _ in range(10)]
    fence = take(dead, "s", 20)
    survivor.spool.adopt_log(dead.paths.spool, fence, "d.14")
    fence.close()
    for mid in ids:
        survivor.spool.done(mid)
    survivor.spool.checkpoint()
    assert not message_files(survivor.paths.spool)
    assert not [n for n in os.listdir(survivor.paths.spool / WAL) if n.startswith("in.")]
    assert not pending(survivor.paths.spool)


def test_a_log_taken_over_twice_nests_and_still_replays_once(
    local_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """A survivor that dies holding an imported log is taken over in turn: each message once."""
    dead = local_factory(node="d", group=True)
    first = local_factory(node="s", group=True)
    third = local_factory(node="t", group=True)
    ids = [dead.spool.put(ENV, f"m{i}".encode()) for i in range(12)]
    fence = take(dead, "s", 20)
    first.spool.adopt_log(dead.paths.spool, fence, "d.14")
    fence.close()
    first.spool.done(ids[3])
    ids.append(first.spool.put(ENV, b"own"))
    fence = take(first, "t", 40)
    came = third.spool.adopt_log(first.paths.spool, fence, "s.28")
    fence.close()
    assert set(came) == set(ids) - {ids[3]}
    assert set(logged(third.paths.spool)) == set(came)
    reopened = reopen(third, 50)
    try:
        assert set(reopened.ids()) == set(came)
        assert message_files(third.paths.spool) == set(came)
    finally:
        reopened.close()


def test_adopted_messages_filed_by_our_checkpointer_before_indexing_are_still_indexed(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint filing the adopted log before it is indexed drops nothing from the index."""
    dead = local_factory(node="d", group=True)
    survivor = local_factory(node="s", group=True)
    ids = [dead.spool.put(ENV, f"m{i}".encode()) for i in range(25)]
    dead.spool.defer(ids[3], 1e12, "later")
    fence = take(dead, "s", 20)
    log = survivor.spool._committer.log
    real_adopt = log.adopt

    def adopt_then_file(source: Path, name: str) -> list[str]:
        came = real_adopt(source, name)
        # The survivor's checkpointer runs on its own when puts pause: here,
        # at the worst moment, between the rename of the log and the index.
        log.checkpoint(survivor.spool._section, everything=True)
        return came

    monkeypatch.setattr(log, "adopt", adopt_then_file)
    came = survivor.spool.adopt_log(dead.paths.spool, fence, "d.14")
    assert set(came) == set(ids)
    assert set(ids) <= message_files(survivor.paths.spool)  # filed by the checkpoint
    assert survivor.spool.problems == []
    assert set(ids) <= set(survivor.spool.ids())
    assert survivor.spool.read(ids[7]) == b"m7"
    assert survivor.spool.get(ids[3]).attempts == 1
    fence.close()


def test_idle_checkpoints_wait_while_a_takeover_moves_messages_in(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside importing() an idle spool files nothing of an adopted log; after it, it does."""
    monkeypatch.setattr(_commit, "IDLE", 0.05)
    dead = local_factory(node="d", group=True)
    survivor = local_factory(node="s", group=True)
    ids = [dead.spool.put(ENV, f"m{i}".encode()) for i in range(20)]
    fence = take(dead, "s", 20)
    with survivor.spool.importing():
        survivor.spool.adopt_log(dead.paths.spool, fence, "d.14")
        time.sleep(0.5)  # ten idle periods: the checkpointer ran, filed nothing
        assert not message_files(survivor.paths.spool) & set(ids)
        assert survivor.spool.read(ids[4]) == b"m4"  # read from the log meanwhile
    deadline = time.monotonic() + 10
    while not set(ids) <= message_files(survivor.paths.spool):
        assert time.monotonic() < deadline, "the idle checkpoint never filed the adopted log"
        time.sleep(0.02)
    assert sorted(survivor.spool.ids()) == sorted(ids)
    fence.close()


def test_adopting_a_log_removes_the_filed_copies_left_in_the_dead_spool(
    local_factory: Callable[..., Any],
) -> None:
    """Filed copies of logged messages, and a dropped one's state file, do not stay behind."""
    dead = local_factory(node="d", group=True)
    survivor = local_factory(node="s", group=True)
    ids = [dead.spool.put(ENV, f"m{i}".encode()) for i in range(10)]
    dead.spool.done(ids[0])  # a drop record in the log
    msg = dead.paths.spool / "msg"
    # As a checkpoint that filed them without retiring the segment would leave them:
    (msg / ids[1]).write_bytes(dead.spool._committer.log.read(ids[1]) or b"")
    (msg / ids[0]).write_bytes(b"a stale copy of a dropped message")
    (msg / (ids[0] + ".state")).write_bytes(b"{}")
    fence = take(dead, "s", 20)
    came = survivor.spool.adopt_log(dead.paths.spool, fence, "d.14")
    assert set(came) == set(ids[1:])
    assert os.listdir(msg) == []
    assert survivor.spool.read(ids[1]) == b"m1"
    fence.close()
