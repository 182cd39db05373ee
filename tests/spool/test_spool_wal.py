"""Group commit through the commit log: kills at each step, power loss, flush order, fences."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mhafail.errors import SpoolFenced
from mhafail.spool import Envelope, FileFence, Spool, _commit
from mhafail.spool._wal import DROP, PUT, WAL, CommitLog, encode, padded, pending, scan, segments

ENV = Envelope(sender="a@example.org", recipients=("b@example.net",))

# A writer with group commit, killed (SIGKILL) at its Nth file-system call.
CHILD = textwrap.dedent(
    """
    import os, signal, sys, threading
    from pathlib import Path
    from mhafail.spool import Envelope, FileFence, Spool
    spool_dir, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    token, puts = int(sys.argv[3]), int(sys.argv[4])
    fence = FileFence(spool_dir, holder="n1", token=token, lease_valid=lambda: True)
    fence.claim()
    spool = Spool(directory=spool_dir, node="n1", fence=fence, segment_size=1 << 20).open()
    calls = [0]
    count = threading.Lock()
    def killing(real):
        def wrapper(*args, **kwargs):
            with count:
                calls[0] += 1
                if calls[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapper
    for name in ("write", "pwrite", "fsync", "fdatasync", "rename", "unlink"):
        setattr(os, name, killing(getattr(os, name)))
    def one(i):
        mid = spool.put(Envelope(sender="a@x", recipients=("b@x",)), bytes([65 + i]) * 70000)
        with count:
            sys.stdout.write(f"acked {mid} {i}\\n")
            sys.stdout.flush()
    if puts < 0:  # sequential: put A, put B, done A
        first = spool.put(Envelope(sender="a@x", recipients=("b@x",)), bytes([65]) * 70000)
        sys.stdout.write(f"acked {first} 0\\n")
        sys.stdout.flush()
        one(1)
        sys.stdout.write(f"doing {first} 0\\n")
        sys.stdout.flush()
        spool.done(first)
        sys.stdout.write(f"done {first} 0\\n")
        sys.stdout.flush()
        puts = 0
    threads = [threading.Thread(target=one, args=(i,)) for i in range(puts)]
    for t in threads: t.start()
    for t in threads: t.join()
    spool.close()
    print("closed", calls[0], flush=True)
    """
)


def lose_the_cache(spool_dir: Path, *, torn: bool) -> int:
    """Power loss: every message file logged since the last checkpoint is lost or torn."""
    hit = 0
    used, _ = segments(spool_dir)
    for seq in used:
        raw = (spool_dir / WAL / f"{seq:016x}").read_bytes()
        for kind, mid, _body in scan(raw, seq):
            path = spool_dir / "msg" / mid
            if kind == PUT and path.exists():
                hit += 1
                if torn:
                    os.truncate(path, path.stat().st_size // 2)
                else:
                    path.unlink()
    return hit


def run_child(spool_dir: Path, kill_at: int, token: int, puts: int) -> tuple[int, dict[str, int]]:
    """Run the killable writer; return its exit code and the ids it acknowledged."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(spool_dir), str(kill_at), str(token), str(puts)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    acked = {}
    for line in proc.stdout.decode().splitlines():
        words = line.split()
        if words[0] == "acked":
            acked[words[1]] = int(words[2])
        if words[0] == "doing":
            acked[words[1]] = -2  # being removed: there whole, or gone
        if words[0] == "done":
            acked[words[1]] = -1  # removed: must stay gone
    return proc.returncode, acked


def count_steps(spool_dir: Path, puts: int) -> int:
    """How many file-system calls a whole run makes (nothing killed)."""
    spool_dir.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(spool_dir), "0", "1", str(puts)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    return int(proc.stdout.decode().split()[-1])


def reopen_and_check(spool_dir: Path, token: int, acked: dict[str, int]) -> Spool:
    """Open as the next holder; every acknowledged message must be there, whole."""
    fence = FileFence(spool_dir, holder="n1", token=token, lease_valid=lambda: True)
    fence.claim()
    spool = Spool(directory=spool_dir, node="n1", fence=fence, group_commit=False).open()
    assert spool.problems == []  # never a torn message
    assert not pending(spool_dir)  # the log was replayed and retired
    for mid, i in acked.items():
        if i == -1:
            assert mid not in spool.ids()  # a done() that returned is never undone
            continue
        if i == -2 and mid not in spool.ids():
            continue  # killed inside done(): removed, or (below) still whole
        assert mid in spool.ids()
        assert spool.read(mid) == bytes([65 + max(i, 0)]) * 70000
    for mid in spool.ids():
        assert len(spool.read(mid)) == 70000
    return spool


def test_killed_at_each_step_of_a_group_commit_keeps_every_acked_message(tmp_path: Path) -> None:
    """SIGKILL at each step of puts, a done, the close; power loss: acked stays, done stays gone."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    killed = 0
    for step in range(1, 60):
        token = 100 * step
        code, acked = run_child(spool_dir, step, token, -1)
        lose_the_cache(spool_dir, torn=step % 2 == 0)
        spool = reopen_and_check(spool_dir, token + 50, acked)
        for mid in spool.ids():
            spool.done(mid)
        spool.close()
        if code == 0:
            break  # past the last step: the put and the close completed
        assert code == -9
        killed += 1
    assert code == 0 and len(acked) == 2
    assert killed >= 10  # the segment, two records, a drop, their flushes, the filing, retiring


def test_killed_during_concurrent_group_commits_keeps_every_acked_message(tmp_path: Path) -> None:
    """Eight concurrent puts, SIGKILL at spread-out steps, then power loss: acked ones survive."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    steps = count_steps(tmp_path / "probe", 8)
    acked_total = 0
    for step in range(3, steps, max(1, steps // 8)):
        token = 100 * step
        _, acked = run_child(spool_dir, step, token, 8)
        acked_total += len(acked)
        lose_the_cache(spool_dir, torn=False)
        spool = reopen_and_check(spool_dir, token + 50, acked)
        for mid in spool.ids():
            spool.done(mid)
        spool.close()
    assert acked_total > 0  # some runs got as far as acknowledgements


def test_group_commit_acks_after_one_shared_log_flush_with_no_file_created(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Concurrent puts share log flushes, acked after them; no file, rename or fsync on the way."""
    made = local_factory(group=True)
    log: list[tuple[str, str]] = []
    guard = threading.Lock()
    real_fdatasync, real_rename, real_fsync, real_open = os.fdatasync, os.rename, os.fsync, os.open

    def fdatasync(fd: int) -> None:
        time.sleep(0.02)  # a slow disk: puts pile up behind the flush
        real_fdatasync(fd)
        with guard:
            log.append(("flushed", ""))

    def rename(src: Any, dst: Any) -> None:
        with guard:
            log.append(("rename", os.path.basename(dst)))
        real_rename(src, dst)

    def fsync(fd: int) -> None:
        with guard:
            log.append(("fsync", ""))
        real_fsync(fd)

    def opened(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            with guard:
                log.append(("create", str(path)))
        return real_open(path, flags, *args, **kwargs)

    made.spool.put(ENV, b"warm")  # the first segment is made before the measured puts
    # ... and the spare the checkpointer makes ahead of need (off the put path).
    deadline = time.monotonic() + 10
    while not segments(made.paths.spool)[1] and time.monotonic() < deadline:
        time.sleep(0.01)
    log.clear()
    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "open", opened)

    def put(i: int) -> str:
        mid = made.spool.put(ENV, b"x" * i)
        with guard:
            log.append(("acked", mid))
        return mid

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(put, range(64)))
    flushes = [n for n, (kind, _) in enumerate(log) if kind == "flushed"]
    assert 1 <= len(flushes) < len(ids) // 4  # shared: many puts per flush
    assert {kind for kind, _ in log} == {"flushed", "acked"}
    assert log.index(("acked", ids[0])) > flushes[0]
    for mid in ids:
        assert made.spool.read(mid) == b"x" * ids.index(mid)  # read back from the log


def test_the_put_that_fills_the_first_segment_finds_a_spare_ready(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Using the spare wakes the checkpointer: the next spare is made at once, off the put path.

    (It was made only at the next switch or idle pass, so the put filling
    the first segment after open zero-filled a segment itself: 8 MiB by
    default, with every other put of the batch waiting.)
    """
    made = local_factory(group=True)
    spool_dir = made.paths.spool
    made.spool.close()
    monkeypatch.setattr(_commit, "IDLE", 60.0)  # no idle pass during the test
    zero_filled_by: list[str] = []
    real = CommitLog._zero_fill

    def zero_fill(self: CommitLog, tmp: Path, path: Path | None) -> None:
        zero_filled_by.append(threading.current_thread().name)
        real(self, tmp, path)

    monkeypatch.setattr(CommitLog, "_zero_fill", zero_fill)
    spool = Spool(directory=spool_dir, node="n1", fence=made.fence, segment_size=64 * 1024).open()
    try:

        def spare_within(seconds: float) -> bool:
            end = time.monotonic() + seconds
            while not segments(spool_dir)[1]:
                if time.monotonic() > end:
                    return False
                time.sleep(0.005)
            return True

        assert spare_within(10)  # the one made at open
        spool.put(ENV, b"first")  # the first segment: that spare
        assert spare_within(10), "the spare used was not replaced before the segment filled"
        zero_filled_by.clear()
        log = spool._committer.log if spool._committer else None
        assert log is not None
        first = log.active
        while log.active == first:
            spool.put(ENV, b"y" * 9000)
        assert not [name for name in zero_filled_by if "commit" in name]
    finally:
        spool.close()


def test_a_takeover_claim_gets_in_soon_after_the_lease_of_a_streaming_writer_ends(
    local_factory: Callable[..., Any],
) -> None:
    """Sections spanning batches end with the lease: a takeover's claim gets in.

    A survivor claims only once the holder's lease has run out (its
    session expired after it); from then on the holder starts no section
    and the one it is in ends after its batch.
    """
    made = local_factory(group=True)
    stop = threading.Event()
    outcomes: list[str] = []

    def writer() -> None:
        while not stop.is_set():
            try:
                made.spool.put(ENV, b"w" * 100)
            except SpoolFenced:
                outcomes.append("fenced")
                return
        outcomes.append("stopped")

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)  # puts streaming: the committer is in a section most of the time
        made.lease.ok = False
        survivor = FileFence(made.paths.spool, holder="n2", token=11, lease_valid=lambda: True)
        # The claim gives up (SpoolFenced) if the lock file stays busy: with
        # sections that never end it would, whatever the machine's load.
        survivor.claim(timeout=2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    survivor.close()
    assert outcomes.count("fenced") == len(threads)


def test_a_batch_after_the_lease_ran_out_is_not_written_even_inside_a_section(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A section spans batches; the lease running out between two of them stops the second."""
    made = local_factory(group=True)
    made.spool.close()
    monkeypatch.setattr(_commit, "HOLD", 30.0)  # one section for every batch of the test
    real_fdatasync = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        time.sleep(0.05)  # puts queue behind the first batch's flush
        real_fdatasync(fd)

    logged: list[int] = []
    real_put = CommitLog.put

    def put(self: CommitLog, items: Any, *args: Any, **kwargs: Any) -> Any:
        logged.append(len(items))
        return real_put(self, items, *args, **kwargs)

    real_committed = Spool._committed

    def committed(self: Spool, batch: Any) -> None:
        real_committed(self, batch)
        made.lease.ok = False  # runs out right after the first batch was acknowledged

    monkeypatch.setattr(Spool, "_committed", committed)  # before the spool binds it
    spool = Spool(directory=made.paths.spool, node="n1", fence=made.fence).open()
    try:
        spool.put(ENV, b"first")  # the segment is made before the flush slows down
        made.lease.ok = True
        logged.clear()
        monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
        monkeypatch.setattr(CommitLog, "put", put)
        outcomes: list[str] = []

        def writer(i: int) -> None:
            try:
                spool.put(ENV, b"p" * i)
                outcomes.append("acked")
            except SpoolFenced:
                outcomes.append("fenced")

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
        threads[0].start()
        time.sleep(0.01)  # its batch is being flushed: the others queue behind it
        for thread in threads[1:]:
            thread.start()
        for thread in threads:
            thread.join(10)
    finally:
        made.lease.ok = True
        monkeypatch.setattr(os, "fdatasync", real_fdatasync)
        spool.close()
    assert outcomes.count("acked") == logged[0]
    assert outcomes.count("fenced") == 8 - logged[0] > 0
    assert len(logged) == 1  # the queued batch was refused before any write


def test_checkpoint_makes_msg_durable_before_retiring_segments(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full segment is retired only after msg/ was fsynced; a clean close retires them all."""
    made = local_factory(group=True)
    spool_dir = made.paths.spool
    made.spool.close()
    spool = Spool(directory=spool_dir, node="n1", fence=made.fence, segment_size=64 * 1024).open()
    log: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            log.append("fsync-dir")
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        if os.path.basename(dst).startswith("spare."):
            log.append("retire")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: spool.put(ENV, b"y" * 9000), range(40)))
    spool.close()
    assert "retire" in log
    assert log.index("retire") > log.index("fsync-dir")  # msg/ durable, then retired
    assert not pending(spool_dir)
    assert sorted(os.listdir(spool_dir / "msg")) == sorted(ids)


def test_done_of_a_logged_message_is_not_resurrected_by_a_replay(
    local_factory: Callable[..., Any],
) -> None:
    """done() of a message still in the log writes a drop: a replay after a crash leaves it gone."""
    made = local_factory(group=True)
    keep = made.spool.put(ENV, b"keep")
    gone = made.spool.put(ENV, b"gone")
    made.spool.done(gone)
    assert pending(made.paths.spool)
    # Power loss: the unlink of `gone` never reached the disk.
    (made.paths.spool / "msg" / gone).write_bytes(b"stale")
    fence = FileFence(made.paths.spool, holder="n1", token=99, lease_valid=lambda: True)
    fence.claim()
    again = Spool(directory=made.paths.spool, node="n1", fence=fence, group_commit=False).open()
    assert again.ids() == [keep]
    assert again.read(keep) == b"keep"
    fence.close()


def test_a_fenced_out_writer_cannot_commit_through_the_log(
    local_factory: Callable[..., Any],
) -> None:
    """Once a newer token is in the lock file, a put is refused and leaves nothing to replay."""
    made = local_factory(group=True)
    first = made.spool.put(ENV, b"before")
    newer = FileFence(
        made.paths.spool, holder="n2", token=made.fence.token + 1, lease_valid=lambda: True
    )
    newer.claim()
    with pytest.raises(SpoolFenced):
        made.spool.put(ENV, b"after")
    assert made.spool.ids() == [first]
    new = Spool(directory=made.paths.spool, node="n2", fence=newer, group_commit=False).open()
    assert new.ids() == [first]  # the replay brings nothing the old writer tried after
    newer.close()


def test_lease_lost_during_the_flush_undoes_the_batch_for_good(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose lease ran out during its flush is refused, and no replay brings it back."""
    made = local_factory(group=True)
    warm = made.spool.put(ENV, b"warm")
    real_fdatasync = os.fdatasync

    def stall(fd: int) -> None:
        real_fdatasync(fd)
        made.lease.ok = False  # the process stalled past its lease here

    monkeypatch.setattr(os, "fdatasync", stall)
    with pytest.raises(SpoolFenced):
        made.spool.put(ENV, b"late")
    monkeypatch.setattr(os, "fdatasync", real_fdatasync)
    assert made.spool.ids() == [warm]
    newer = FileFence(
        made.paths.spool, holder="n2", token=made.fence.token + 1, lease_valid=lambda: True
    )
    newer.claim()
    new = Spool(directory=made.paths.spool, node="n2", fence=newer, group_commit=False).open()
    assert [new.read(m) for m in new.ids()] == [b"warm"]
    newer.close()


def test_the_scan_keeps_whole_batches_and_stops_at_a_torn_or_stale_one() -> None:
    """The scan keeps whole batches, skips padding, stops at a torn batch or a stale record."""
    a = padded(encode(7, PUT, "0" * 26, b"first") + encode(7, DROP, "1" * 26))
    b = padded(encode(7, PUT, "2" * 26, b"second"))
    stale = padded(encode(6, PUT, "3" * 26, b"old"))
    assert len(a) % 4096 == 0
    assert [m for _, m, _ in scan(a + b + stale, 7)] == ["0" * 26, "1" * 26, "2" * 26]
    torn = encode(7, PUT, "2" * 26, b"second")[:-1]
    assert [m for _, m, _ in scan(a + torn + bytes(8192) + stale, 7)] == ["0" * 26, "1" * 26]
    assert list(scan(bytes(4096), 7)) == []
    flipped = bytearray(a + b)
    flipped[len(a) + 30] ^= 1
    assert [m for _, m, _ in scan(bytes(flipped), 7)] == ["0" * 26, "1" * 26]


def test_segments_of_delivered_messages_retire_without_any_file(
    local_factory: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Accepted and done before filing: full segments retire and no message file is ever made."""
    made = local_factory(group=True)
    spool_dir = made.paths.spool
    made.spool.close()
    spool = Spool(directory=spool_dir, node="n1", fence=made.fence, segment_size=64 * 1024).open()
    creates: list[str] = []
    real_open = os.open

    def opened(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT and os.path.basename(os.path.dirname(path)) in ("msg", "tmp"):
            creates.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", opened)

    for _ in range(60):  # about 9 segments of 64 KiB, each delivered as it arrives
        spool.done(spool.put(ENV, b"z" * 9000))
    end = time.monotonic() + 5
    while len(segments(spool_dir)[0]) > 1 and time.monotonic() < end:
        time.sleep(0.05)
    assert len(segments(spool_dir)[0]) <= 1  # all but the active one retired
    spool.close()
    assert creates == []
    assert os.listdir(spool_dir / "msg") == []


def test_operators_see_messages_that_are_in_the_log_only(local_factory: Callable[..., Any]) -> None:
    """spool list/show and the status count include acknowledged messages not yet filed."""
    from mhafail.spool import list_messages, show_message
    from mhafail.spool._spool import count_messages

    made = local_factory(group=True)
    ids = [made.spool.put(ENV, f"m{i}".encode()) for i in range(3)]
    made.spool.defer(ids[0], 2e9, "451 later")
    assert os.listdir(made.paths.spool / "msg") == [ids[0] + ".state"]
    listed, problems = list_messages(made.paths.root, "c1", "n1")
    assert problems == []
    assert [m.id for m in listed] == ids
    assert listed[0].attempts == 1
    assert show_message(made.paths.root, "c1", "n1", ids[2]).id == ids[2]
    assert count_messages(made.paths.spool) == 3
    made.spool.done(ids[1])
    assert count_messages(made.paths.spool) == 2


def test_done_twice_is_an_unknown_message_logged_or_filed(
    local_factory: Callable[..., Any],
) -> None:
    """A second done() raises UnknownMessage, whether the message was in the log or filed."""
    from mhafail.errors import UnknownMessage

    made = local_factory(group=True)
    logged = made.spool.put(ENV, b"in the log")
    made.spool.done(logged)
    with pytest.raises(UnknownMessage):
        made.spool.done(logged)
    filed = made.spool.put(ENV, b"filed")
    made.spool.close()  # files it, retires the log
    again = Spool(directory=made.paths.spool, node="n1", fence=made.fence).open()
    assert os.listdir(made.paths.spool / "msg") == [filed]
    again.done(filed)
    assert os.listdir(made.paths.spool / "msg") == []
    with pytest.raises(UnknownMessage):
        again.done(filed)
    again.close()


def test_puts_racing_close_either_land_or_fail_and_none_hangs(
    local_factory: Callable[..., Any],
) -> None:
    """Puts from threads racing close() each return a kept id or raise SpoolError; none waits."""
    from mhafail.errors import SpoolError

    made = local_factory(group=True)
    made.spool.put(ENV, b"warm")
    acked: list[str] = []
    failed: list[BaseException] = []
    guard = threading.Lock()
    go = threading.Event()

    def client() -> None:
        go.wait()
        while True:  # until the close refuses it
            try:
                mid = made.spool.put(ENV, b"m" * 512)
            except SpoolError as exc:
                with guard:
                    failed.append(exc)
                return
            with guard:
                acked.append(mid)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    go.set()
    time.sleep(0.01)
    made.spool.close()
    for thread in threads:
        thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert len(failed) == 8  # every client met the close
    reopened = Spool(directory=made.paths.spool, node="n1", fence=made.fence).open()
    try:
        assert set(acked) <= set(reopened.ids())  # every acknowledged put is kept
    finally:
        reopened.close()
