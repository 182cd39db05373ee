"""The Spool as a message store: put, due, defer, done, bounce, fences, asyncio, public face."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mhafail.errors
import mhafail.spool
from mhafail.errors import (
    MessageTooLarge,
    SpoolFenced,
    SpoolInvalidArgument,
    SpoolPathConflict,
    UnknownMessage,
)
from mhafail.spool import Envelope, FileFence, NodePaths, RecipientState, Spool
from mhafail.spool._files import OfdLock

ENV = Envelope(sender="a@example.org", recipients=("b@example.net", "c@example.net"))


def test_public_names() -> None:
    """mhafail.spool.__all__ lists exactly the names it exports."""
    public = {
        n
        for n, v in vars(mhafail.spool).items()
        if not n.startswith("_") and type(v).__name__ != "module"
    }
    assert set(mhafail.spool.__all__) == public


def test_put_then_read_back_the_same_message(local: Any) -> None:
    """A put message is in the index and on disk, and reads back byte for byte."""
    mid = local.spool.put(ENV, b"Subject: hi\r\n\r\nbody\r\n")
    message = local.spool.get(mid)
    assert message.sender == "a@example.org"
    assert message.pending == ("b@example.net", "c@example.net")
    assert message.origin == "n1"
    assert local.spool.read(mid) == b"Subject: hi\r\n\r\nbody\r\n"
    assert (local.paths.spool / "msg" / mid).exists()
    assert os.listdir(local.paths.spool / "tmp") == []
    reopened = Spool(directory=local.paths.spool, node="n1", fence=local.fence).open()
    assert reopened.get(mid) == message


def test_defer_records_per_recipient_state_and_done_removes(local: Any) -> None:
    """defer keeps delivered/failed recipients apart and survives a reopen; done removes."""
    mid = local.spool.put(ENV, b"x")
    now = 1000.0
    updated = local.spool.defer(
        mid, now + 60, "451 try later", delivered=["b@example.net"], failed={}
    )
    assert updated.pending == ("c@example.net",)
    assert updated.attempts == 1
    assert local.spool.due(now) == []
    assert [m.id for m in local.spool.due(now + 61)] == [mid]
    reopened = Spool(directory=local.paths.spool, node="n1", fence=local.fence).open()
    states = {r.address: r.state for r in reopened.get(mid).recipients}
    assert states == {
        "b@example.net": RecipientState.DELIVERED,
        "c@example.net": RecipientState.PENDING,
    }
    local.spool.done(mid)
    assert os.listdir(local.paths.spool / "msg") == []
    with pytest.raises(UnknownMessage):
        local.spool.get(mid)


def test_bounce_fails_every_pending_recipient(local: Any) -> None:
    """bounce returns the message with all pending recipients failed and removes it."""
    mid = local.spool.put(ENV, b"x")
    final = local.spool.bounce(mid, "550 no such user")
    assert {r.state for r in final.recipients} == {RecipientState.FAILED}
    assert len(local.spool) == 0


def test_last_recipient_result_finishes_the_message(local: Any) -> None:
    """A defer that leaves no recipient pending removes the message."""
    mid = local.spool.put(ENV, b"x")
    local.spool.defer(mid, 0, "", delivered=["b@example.net"], failed={"c@example.net": "550"})
    assert len(local.spool) == 0


@pytest.mark.parametrize(
    ("sender", "recipients"),
    [
        ("a@x", ()),
        ("a@x\r\nRCPT TO:<evil@x>", ("b@x",)),
        ("a@x", ("b@x", "b@x")),
        ("a@x", ("<b@x>",)),
        ("a@x", ("b" * 600,)),
        (5, ("b@x",)),
        ("a@x", "b@x"),
    ],
)
def test_bad_envelopes_are_refused(sender: object, recipients: object) -> None:
    """Malformed envelopes are refused with SpoolInvalidArgument (a 5xx reply)."""
    with pytest.raises(SpoolInvalidArgument) as caught:
        Envelope(sender=sender, recipients=recipients)  # type: ignore[arg-type]
    assert caught.value.smtp_reply.startswith("5")


def test_oversized_message_is_refused_and_nothing_is_written(
    local_factory: Callable[..., Any],
) -> None:
    """Data over max_size raises MessageTooLarge (552) and leaves no file behind."""
    made = local_factory()
    made.spool.max_size = 1000
    with pytest.raises(MessageTooLarge) as caught:
        made.spool.put(ENV, b"x" * 1001)
    assert caught.value.smtp_reply.startswith("552")
    assert os.listdir(made.paths.spool / "msg") == []
    assert os.listdir(made.paths.spool / "tmp") == []


def test_a_newer_token_fences_the_old_holder(local: Any) -> None:
    """After another holder claims with a higher token, every change is refused."""
    mid = local.spool.put(ENV, b"x")
    newer = FileFence(local.paths.spool, holder="n2", token=11, lease_valid=lambda: True)
    newer.claim()
    with pytest.raises(SpoolFenced) as caught:
        local.spool.put(ENV, b"y")
    assert caught.value.smtp_reply.startswith("421")
    with pytest.raises(SpoolFenced):
        local.spool.done(mid)
    with pytest.raises(SpoolFenced):
        local.spool.claim(mid)
    assert os.listdir(local.paths.spool / "msg") == [mid]
    older = FileFence(local.paths.spool, holder="n3", token=9, lease_valid=lambda: True)
    with pytest.raises(SpoolFenced):
        older.claim()
    newer.close()


def test_a_put_that_stalls_past_the_lease_is_undone(
    local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the lease runs out during the rename/fsync, the message is removed and refused."""
    import mhafail.spool._commit as spool_module

    real = spool_module.fsync_dir

    def stalled(path: Path) -> None:
        real(path)
        local.lease.ok = False  # the directory fsync took longer than the lease

    monkeypatch.setattr(spool_module, "fsync_dir", stalled)
    with pytest.raises(SpoolFenced):
        local.spool.put(ENV, b"late")
    assert os.listdir(local.paths.spool / "msg") == []
    assert len(local.spool) == 0


def test_expired_lease_refuses_before_writing(local: Any) -> None:
    """With the lease expired, put refuses and leaves tmp/ and msg/ empty."""
    local.lease.ok = False
    with pytest.raises(SpoolFenced):
        local.spool.put(ENV, b"x")
    assert os.listdir(local.paths.spool / "msg") == []
    assert os.listdir(local.paths.spool / "tmp") == []


def test_group_commit_puts_from_many_threads(local_factory: Callable[..., Any]) -> None:
    """Concurrent puts through the committer all land, each durable and distinct."""
    from concurrent.futures import ThreadPoolExecutor

    made = local_factory(group=True)
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: made.spool.put(ENV, str(i).encode()), range(300)))
    assert len(set(ids)) == 300
    assert [made.spool.read(i) for i in ids] == [str(i).encode() for i in range(300)]
    made.spool.close()  # the checkpoint files every message
    assert sorted(os.listdir(made.paths.spool / "msg")) == sorted(ids)


def test_aput_does_not_block_the_event_loop(local_factory: Callable[..., Any]) -> None:
    """While a put waits for the lock file, other tasks of the loop keep running."""
    made = local_factory(group=True)
    blocker = OfdLock(made.paths.spool / "lock")
    assert blocker.lock(timeout=5)  # a takeover's claim in progress

    async def main() -> tuple[int, str]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        put = asyncio.create_task(made.spool.aput(ENV, b"x"))
        await asyncio.sleep(0.3)
        seen = ticks
        blocker.unlock()
        mid = await put
        tick_task.cancel()
        return seen, mid

    seen, mid = asyncio.run(main())
    assert seen >= 5
    assert made.spool.read(mid) == b"x"
    blocker.close()


def test_damaged_files_are_quarantined_not_fatal(local: Any) -> None:
    """A corrupt message file is moved to bad/ and reported; the rest still loads."""
    good = local.spool.put(ENV, b"good")
    bad = local.spool.put(ENV, b"soon damaged")
    (local.paths.spool / "msg" / bad).write_bytes(b"MHAFAIL-SPOOL/1\n{not json\n")
    (local.paths.spool / "msg" / "zz-not-an-id").write_bytes(b"junk")
    reopened = Spool(directory=local.paths.spool, node="n1", fence=local.fence).open()
    assert reopened.ids() == [good]
    assert len(reopened.problems) == 2
    assert sorted(os.listdir(local.paths.spool / "bad")) == sorted([bad, "zz-not-an-id"])


def test_damaged_data_is_detected_on_read(local: Any) -> None:
    """Data that no longer matches its checksum is refused and quarantined on read."""
    mid = local.spool.put(ENV, b"hello world")
    path = local.paths.spool / "msg" / mid
    raw = path.read_bytes()
    path.write_bytes(raw[:-5] + b"XXXXX")
    with pytest.raises(mhafail.errors.SpoolError):
        local.spool.read(mid)
    assert (local.paths.spool / "bad" / mid).exists()


def test_root_of_another_cluster_is_refused(tmp_path: Path) -> None:
    """A shared root marked for one cluster refuses another cluster's nodes."""
    NodePaths(tmp_path, "c1", "n1").create()
    with pytest.raises(SpoolPathConflict, match="belongs to cluster 'c1'"):
        NodePaths(tmp_path, "c2", "n1").create()


def test_a_bound_node_name_is_refused(tmp_path: Path) -> None:
    """A node name bound by a live process cannot be bound again; released, it can."""
    first = NodePaths(tmp_path, "c1", "n1").bind()
    with pytest.raises(SpoolPathConflict, match="already bound"):
        NodePaths(tmp_path, "c1", "n1").bind()
    first.close()
    NodePaths(tmp_path, "c1", "n1").bind().close()


def test_symlinked_layout_is_refused(tmp_path: Path) -> None:
    """A symlink planted in the layout is refused instead of followed."""
    (tmp_path / "elsewhere").mkdir()
    NodePaths(tmp_path, "c1", "n1").create()
    (tmp_path / "nodes" / "n2").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(SpoolPathConflict, match="not a directory"):
        NodePaths(tmp_path, "c1", "n2").create()


def test_bad_names_are_refused(tmp_path: Path) -> None:
    """Node names that could escape the root are refused."""
    for name in ("../x", "", "a/b", ".hidden"):
        with pytest.raises(SpoolInvalidArgument):
            NodePaths(tmp_path, "c1", name)


def test_a_header_over_64_kib_is_read_whole_when_the_spool_loads(local: Any) -> None:
    """A message whose header line is longer than the first read loads with every recipient."""
    many = tuple(f"{'r' * 150}{i}@example.net" for i in range(600))  # about 100 KB of header
    mid = local.spool.put(Envelope(sender="a@example.org", recipients=many), b"body")
    assert (local.paths.spool / "msg" / mid).stat().st_size > 65536
    reopened = Spool(directory=local.paths.spool, node="n1", fence=local.fence).open()
    assert [r.address for r in reopened.get(mid).recipients] == list(many)
    assert reopened.read(mid) == b"body"


def test_a_header_without_its_end_is_quarantined_at_load(local: Any) -> None:
    """A file that is only a long header with no end of line is reported and moved to bad/."""
    good = local.spool.put(ENV, b"good")
    bad = local.spool.put(ENV, b"soon damaged")
    (local.paths.spool / "msg" / bad).write_bytes(b"MHAFAIL-SPOOL/1\n{" + b"x" * 200_000)
    reopened = Spool(directory=local.paths.spool, node="n1", fence=local.fence).open()
    assert reopened.ids() == [good]
    assert len(reopened.problems) == 1
    assert (local.paths.spool / "bad" / bad).exists()
