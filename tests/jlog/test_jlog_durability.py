"""Durability policies: when each one syncs segment data."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mhafail.errors import JlogClosed, JlogInvalidArgument
from mhafail.jlog import Durability, DurabilityMode, Jlog


class _SyncCounter:
    """Counts fdatasync calls on one file while still performing them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.fdatasync

        def counting(fd: int) -> None:
            self.calls += 1
            real(fd)

        monkeypatch.setattr(os, "fdatasync", counting)


def test_fsync_policy_syncs_every_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durability.fsync() calls fdatasync once per write and once per write_many batch."""
    jlog = Jlog.create(tmp_path / "j")
    with jlog.writer(durability=Durability.fsync()) as writer:
        counter = _SyncCounter(monkeypatch)
        for _ in range(5):
            writer.write(b"x")
        writer.write_many([b"y"] * 10)
        assert counter.calls == 6


def test_none_policy_never_syncs_between_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durability.none() leaves syncing to rollover and close."""
    jlog = Jlog.create(tmp_path / "j")
    writer = jlog.writer()
    counter = _SyncCounter(monkeypatch)
    for _ in range(50):
        writer.write(b"x")
    assert counter.calls == 0
    writer.close()
    assert counter.calls == 1


def test_group_policy_syncs_by_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit by count syncs once per max_records records."""
    jlog = Jlog.create(tmp_path / "j")
    with jlog.writer(durability=Durability.group(max_records=10)) as writer:
        counter = _SyncCounter(monkeypatch)
        for _ in range(35):
            writer.write(b"x")
        assert counter.calls == 3


def test_group_policy_syncs_by_delay_even_when_writes_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit by delay syncs a lone write from its background thread."""
    jlog = Jlog.create(tmp_path / "j")
    with jlog.writer(durability=Durability.group(max_delay=0.05)) as writer:
        counter = _SyncCounter(monkeypatch)
        writer.write(b"x")
        deadline = time.monotonic() + 10
        while counter.calls == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert counter.calls >= 1


def test_group_policy_needs_a_bound() -> None:
    """Group commit without a bound, or with a non-positive one, is refused."""
    with pytest.raises(JlogInvalidArgument):
        Durability.group()
    with pytest.raises(JlogInvalidArgument):
        Durability.group(max_records=0)
    with pytest.raises(JlogInvalidArgument):
        Durability.group(max_delay=0)
    assert Durability.group(max_records=3).mode is DurabilityMode.GROUP


def test_closed_writer_refuses_writes_and_str_payloads_are_refused(tmp_path: Path) -> None:
    """Writing a str or after close() raises a clear error and writes nothing."""
    jlog = Jlog.create(tmp_path / "j")
    writer = jlog.writer()
    with pytest.raises(JlogInvalidArgument):
        writer.write("text")  # type: ignore[arg-type]
    with pytest.raises(JlogInvalidArgument):
        writer.write_many([b"ok", "text"])  # type: ignore[list-item]
    writer.close()
    with pytest.raises(JlogClosed):
        writer.write(b"x")
    assert (jlog.path / "00000000").stat().st_size == 0
