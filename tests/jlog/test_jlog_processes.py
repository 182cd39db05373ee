"""Several writer and reader processes at once, and writers killed mid-stream."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

from mhafail.jlog import Jlog, Whence

HELPER = str(Path(__file__).parent / "jlog_proc.py")
sys.path.insert(0, str(Path(__file__).parent))
from jlog_proc import check, payload  # noqa: E402  (the helper is not an installed module)


def _run(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, HELPER, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _sequences(pairs: list[list[object]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for writer, i in pairs:
        out.setdefault(str(writer), []).append(int(str(i)))
    return out


def test_three_writers_two_readers_every_sequence_complete_and_ordered(tmp_path: Path) -> None:
    """3 writers, 2 readers (processes): every writer's records arrive complete and in order."""
    path = tmp_path / "j"
    jlog = Jlog.create(path, unit_limit=8192)
    jlog.add_subscriber("r1")
    jlog.add_subscriber("r2")
    count = 1500
    readers = [_run("read", str(path), name, str(3 * count)) for name in ("r1", "r2")]
    writers = [
        _run("write", str(path), "w0", str(count)),
        _run("write", str(path), "w1", str(count), "7"),
        _run("write", str(path), "w2", str(count), "1"),
    ]
    for proc in writers:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    for proc in readers:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        sequences = _sequences(json.loads(out))
        assert sequences == {w: list(range(count)) for w in ("w0", "w1", "w2")}
    assert len(list(path.glob("0000*"))) >= 1
    assert Jlog.open(path).inspect().ok


def test_sigkilled_writers_leave_no_partial_record_and_the_next_writer_continues(
    tmp_path: Path,
) -> None:
    """Writers SIGKILLed mid-stream leave whole records only; the next writer appends after them."""
    path = tmp_path / "j"
    jlog = Jlog.create(path, unit_limit=64 * 1024)  # frequent rollovers: kills land in them too
    jlog.add_subscriber("s")
    victims = ("v0", "v1", "v2")
    for n, name in enumerate(victims):
        victim = _run("loop", str(path), name)
        assert victim.stdout is not None
        assert victim.stdout.readline().strip() == "started"
        time.sleep(0.1 + 0.1 * n)
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=10)
    with jlog.writer() as writer:
        writer.write_many([payload("after", i) for i in range(100)])
    with jlog.reader("s") as reader:
        pairs = [check(m.payload) for m in reader]  # check() rejects any damaged payload
    sequences: dict[str, list[int]] = {}
    for writer_id, i in pairs:
        sequences.setdefault(writer_id, []).append(i)
    assert sequences["after"] == list(range(100))
    order = []
    for name in victims:
        killed = sequences[name]
        assert killed == list(range(len(killed))) and len(killed) >= 50
        order += [name] * len(killed)
    assert [w for w, _ in pairs] == [*order, *["after"] * 100]
    assert jlog.inspect().ok


def test_a_torn_record_is_never_returned_and_is_cut_by_the_next_writer(tmp_path: Path) -> None:
    """Half a record at the end (a write torn by a crash) is invisible and then cut off."""
    path = tmp_path / "j"
    jlog = Jlog.create(path)
    jlog.add_subscriber("s")
    with jlog.writer() as writer:
        writer.write_many([b"one", b"two"])
    whole = (path / "00000000").stat().st_size
    torn = struct.pack("<IIII", 0x663A7318, 1, 2, 100) + b"partial"
    with open(path / "00000000", "ab") as f:
        f.write(torn)
    with jlog.reader("s") as reader:
        assert [m.payload for m in reader] == [b"one", b"two"]
        reader.checkpoint_position()
    with jlog.writer() as writer:
        writer.write(b"three")
        assert writer.truncated_bytes == len(torn)
    assert (path / "00000000").stat().st_size == whole + 16 + 5
    with jlog.reader("s") as reader:
        assert [m.payload for m in reader] == [b"one", b"two", b"three"]


def test_end_subscriber_and_writer_processes(tmp_path: Path) -> None:
    """A subscriber added at END while a writer process runs reads a gap-free suffix."""
    path = tmp_path / "j"
    jlog = Jlog.create(path, unit_limit=4096)
    writer = _run("write", str(path), "w", "3000", "10")
    time.sleep(0.05)
    jlog.add_subscriber("late", Whence.END)
    _, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    with jlog.reader("late") as reader:
        got = [check(m.payload)[1] for m in reader]
    if got:
        assert got == list(range(got[0], 3000))
