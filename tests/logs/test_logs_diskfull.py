"""A manager whose disk fills up: it stops acknowledging, loses nothing, resumes with space."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from mhafail.jlog import Jlog
from mhafail.logs import StreamState

from .conftest import Lab, expect_exact, output_lines, record, wait_until

pytestmark = [pytest.mark.zookeeper, pytest.mark.root]


def _fill(path: Path) -> None:
    """Write zeros into ``path`` until the file system is full."""
    with open(path, "wb") as out:
        chunk = bytes(64 * 1024)
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
                out.flush()
    # Leave a few KiB free: the manager gets far enough to hit ENOSPC mid-stream.
    size = path.stat().st_size
    os.truncate(path, max(0, size - 16 * 1024))


def test_full_disk_stops_acks_loses_nothing_and_resumes(lab: Lab) -> None:
    """On a full tmpfs the manager stops acknowledging (the node keeps the records), its output
    stays an exact prefix, and once space returns it completes the log exactly."""
    mount = lab.root / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        base = mount / "out"
        lab.node("n1", managers=("m1",))
        lab.manager("m1", base=base)
        filler = mount / "filler"
        total = 4000  # ~240 KiB of output: far more than the space left once filled
        with Jlog.open(lab.jlog("n1")).writer() as writer:
            writer.write_many([record("n1", i) for i in range(500)])
            expect_exact(base, lab.cluster, ["n1"], 500, 30)
            _fill(filler)
            writer.write_many([record("n1", i) for i in range(500, total)])
        state_file = base / ".mhafail-state" / "n1" / "mainlog.json"
        jlog = Jlog.open(lab.jlog("n1"))
        wait_until(lambda: "No space left" in lab.procs[1].output(), 30, "ENOSPC in the manager")
        got = output_lines(base, lab.cluster, "n1")
        assert 500 <= len(got) < total
        assert got == [record("n1", i) for i in range(len(got))]
        # Nothing beyond what the manager saved durably was acknowledged to the node.
        state = StreamState.from_json(state_file.read_bytes())
        assert state.last_id is not None
        checkpoint = jlog.checkpoint("m1")
        assert checkpoint <= state.last_id
        assert state.last_id.marker < total
        assert {s.name: s.pending for s in jlog.subscribers()}["m1"] >= total - len(got)
        filler.unlink()
        expect_exact(base, lab.cluster, ["n1"], total, 60)
        wait_until(lambda: jlog.checkpoint("m1").marker == total, 30, "the final ack")
    finally:
        lab.close()
        subprocess.run(["umount", "-l", str(mount)], check=False)
