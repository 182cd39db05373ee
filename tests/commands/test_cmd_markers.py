"""Run-once markers on a real file system: group commit, restarts, torn lines, old layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mhafail.commands._journal import Markers

IDS = [f"17000000000{i:02d}-0123456789ab" for i in range(50)]


def test_a_batch_costs_one_sync_and_survives_a_new_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifty markers taken together are synced once; a new process sees every one of them."""
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    markers = Markers(tmp_path / "m")
    assert markers.take_many(IDS) == set(IDS)
    assert len(synced) == 1
    assert markers.take_many(IDS[:3]) == set()
    assert len(synced) == 1  # nothing new, nothing written
    markers.close()
    again = Markers(tmp_path / "m")
    assert all(again.exists(rid) for rid in IDS)
    assert not again.take(IDS[7])


def test_a_torn_last_line_is_never_appended_to(tmp_path: Path) -> None:
    """A crash mid-append leaves a torn line; the next process writes a new segment, so the
    torn bytes cannot swallow a later marker."""
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "1700000000000-1.ids").write_text(f"{IDS[0]} 1.0\n{IDS[1][:9]}")
    markers = Markers(directory)
    assert markers.exists(IDS[0]) and not markers.exists(IDS[1])
    assert markers.take(IDS[2])
    markers.close()
    assert (directory / "1700000000000-1.ids").read_text().endswith(IDS[1][:9])
    assert Markers(directory).exists(IDS[2])


def test_markers_of_the_one_file_per_request_layout_are_honoured(tmp_path: Path) -> None:
    """A marker file named by its request id (the earlier layout) still forbids a second run."""
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / IDS[4]).write_text("{}")
    markers = Markers(directory)
    assert markers.exists(IDS[4])
    assert not markers.take(IDS[4])


def test_prune_deletes_only_old_segments_of_gone_requests(tmp_path: Path) -> None:
    """Pruning keeps the open segment and any file that marks a live request."""
    directory = tmp_path / "m"
    directory.mkdir()
    (directory / "1600000000000-1.ids").write_text(f"{IDS[0]} 1.0\n")
    (directory / "1600000000001-1.ids").write_text(f"{IDS[1]} 1.0\n")
    for name in ("1600000000000-1.ids", "1600000000001-1.ids"):
        os.utime(directory / name, (1, 1))
    markers = Markers(directory)
    markers.take(IDS[2])
    assert markers.prune(live={IDS[1]}, older_than=60) == 1
    assert not markers.exists(IDS[0])
    assert markers.exists(IDS[1]) and markers.exists(IDS[2])
    assert sorted(p.name for p in directory.iterdir())[0] == "1600000000001-1.ids"
