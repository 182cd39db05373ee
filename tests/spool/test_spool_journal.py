"""The import journal: entries written together cost one fsync; a torn write is skipped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from mhafail.errors import SpoolWriteFailed
from mhafail.spool._journal import JOURNAL, Journal, read_journal

MID = "0" * 26


def test_entries_written_together_take_one_write_and_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """extend() makes a step's record and the next announcement durable with one fsync."""
    journal = Journal(tmp_path)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: Any) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    journal.extend([("moved", {"n": 1, "count": 3}), ("batch", {"n": 2, "to": "s", "ids": [MID]})])
    journal.close()
    assert len(synced) == 1
    view = read_journal(tmp_path)
    assert [e["op"] for e in view.entries] == ["moved", "batch"]
    assert view.open_batch() == view.entries[1]


def test_a_torn_combined_write_leaves_no_open_batch_that_moved_anything(tmp_path: Path) -> None:
    """A crash tearing 'batch 2' after 'moved 1' is read as batch 1 done and nothing more."""
    journal = Journal(tmp_path)
    journal.append("batch", n=1, to="s", ids=[MID])
    journal.close()
    whole = b'{"op":"moved","t":1.0,"n":1,"count":1}\n'
    torn = b'{"op":"batch","t":1.0,"n":2,"to":"s","ids":["' + b"0" * 10
    with (tmp_path / JOURNAL).open("ab") as f:
        f.write(whole + torn)
    view = read_journal(tmp_path)
    assert [e["op"] for e in view.entries] == ["batch", "moved"]
    assert len(view.problems) == 1 and view.open_batch() is None
    assert view.moved() == 1


def test_an_unwritable_journal_fails_clearly_and_announces_nothing(tmp_path: Path) -> None:
    """A journal that cannot be written raises SpoolWriteFailed; no entry is kept."""
    journal = Journal(tmp_path)
    os.close(journal._fd)
    journal._fd = os.open(tmp_path / JOURNAL, os.O_RDONLY)  # writes now fail (EBADF)
    with pytest.raises(SpoolWriteFailed, match="cannot append"):
        journal.extend([("moved", {"n": 1, "count": 1}), ("batch", {"n": 2, "to": "s", "ids": []})])
    journal.close()
    assert read_journal(tmp_path).entries == ()
