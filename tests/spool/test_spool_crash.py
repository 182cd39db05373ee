"""Crashes and bad storage: killed at each step of a put, fsync order, full and read-only disks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mhafail.errors import SpoolWriteFailed
from mhafail.spool import Envelope, FileFence, Spool

ENV = Envelope(sender="a@example.org", recipients=("b@example.net",))

CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from mhafail.spool import Envelope, FileFence, Spool
    spool_dir, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    fence = FileFence(spool_dir, holder="n1", token=int(sys.argv[3]), lease_valid=lambda: True)
    fence.claim()
    spool = Spool(directory=spool_dir, node="n1", fence=fence, group_commit=False).open()
    calls = [0]
    def killing(real):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)
        return wrapper
    for name in ("write", "fsync", "rename", "unlink"):
        setattr(os, name, killing(getattr(os, name)))
    mid = spool.put(Envelope(sender="a@x", recipients=("b@x",)), b"D" * 100000)
    print("acked", mid, flush=True)
    """
)


def test_killed_at_each_step_of_a_put_leaves_whole_message_or_nothing(tmp_path: Path) -> None:
    """SIGKILL before each write/fsync/rename of a put: acked means whole; else whole or absent."""
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    outcomes = []
    for step in range(1, 12):
        token = 100 * step
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(spool_dir), str(step), str(token)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        acked = proc.stdout.decode().split()
        fence = FileFence(spool_dir, holder="n1", token=token + 50, lease_valid=lambda: True)
        fence.claim()
        spool = Spool(directory=spool_dir, node="n1", fence=fence, group_commit=False).open()
        assert os.listdir(spool_dir / "tmp") == []  # half-written files are gone
        assert spool.problems == []  # never a torn message
        for mid in spool.ids():
            assert spool.read(mid) == b"D" * 100000
        if acked:
            assert acked[1] in spool.ids()
        outcomes.append((proc.returncode, bool(acked), len(spool)))
        for mid in spool.ids():
            spool.done(mid)
        fence.close()
    killed = [acked for code, acked, _ in outcomes if code == -9]
    assert len(killed) >= 5 and not any(killed)  # every step of the put was a kill point
    assert outcomes[-1][1]  # past the last step, the put completes and is acknowledged


def test_fsync_ordering_file_then_rename_then_directory(
    local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A put fsyncs the file before renaming it and fsyncs the directory before returning."""
    import stat

    log: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        log.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def rename(src: Any, dst: Any) -> None:
        log.append("rename")
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    local.spool.put(ENV, b"x")
    log.append("acked")
    assert log == ["fsync-file", "rename", "fsync-dir", "acked"]


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs (root only), unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.root
def test_full_disk_refuses_with_retry_and_leaves_nothing(
    tiny_disk: Path, local_factory: Callable[..., Any]
) -> None:
    """On a full disk put raises SpoolWriteFailed (452, retry) and leaves no partial file."""
    made = local_factory(root=tiny_disk)
    first = made.spool.put(ENV, b"x" * 100000)
    with pytest.raises(SpoolWriteFailed) as caught:
        made.spool.put(ENV, b"y" * 200000)
    assert caught.value.smtp_reply.startswith("452")
    assert os.listdir(made.paths.spool / "tmp") == []
    assert os.listdir(made.paths.spool / "msg") == [first]
    assert made.spool.read(first) == b"x" * 100000


@pytest.mark.root
def test_unwritable_directory_refuses_with_retry(
    tiny_disk: Path, local_factory: Callable[..., Any]
) -> None:
    """On a read-only file system put raises SpoolWriteFailed (4xx) and changes nothing."""
    made = local_factory(root=tiny_disk)
    first = made.spool.put(ENV, b"x")
    view = tiny_disk.parent / "readonly"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(tiny_disk), str(view)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], check=True)
        spool = Spool(directory=view / "nodes" / "n1" / "spool", node="n1", fence=made.fence).open()
        with pytest.raises(SpoolWriteFailed) as caught:
            spool.put(ENV, b"y")
        spool.close()
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)
    assert caught.value.smtp_reply.startswith("4")
    assert os.listdir(made.paths.spool / "msg") == [first]
    assert os.listdir(made.paths.spool / "tmp") == []
