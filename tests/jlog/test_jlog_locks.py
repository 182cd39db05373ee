"""Locks are OFD locks that conflict with libjlog's POSIX record locks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ofd import try_ofd

from mhafail.jlog import _lock


def test_two_descriptors_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    """A lock taken through one descriptor blocks another descriptor of the same process."""
    assert _lock.OFD_SETLKW is not None
    path = tmp_path / "f"
    path.write_bytes(b"x")
    a = os.open(path, os.O_RDWR)
    b = os.open(path, os.O_RDWR)
    try:
        with _lock.locked(a):
            assert not try_ofd(b)
            os.close(os.open(path, os.O_RDONLY))  # closing another fd drops POSIX locks, not ours
            assert not try_ofd(b)
        assert try_ofd(b)
    finally:
        os.close(a)
        os.close(b)


def test_posix_lock_of_another_process_blocks_us(tmp_path: Path) -> None:
    """A POSIX record lock held by another process (as libjlog takes) conflicts with our lock."""
    path = tmp_path / "f"
    path.write_bytes(b"x")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(path)!r}, os.O_RDWR)\n"
            "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
            "print('locked', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    fd = os.open(path, os.O_RDWR)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert not try_ofd(fd)
        holder.communicate("\n", timeout=10)
        assert try_ofd(fd)
    finally:
        os.close(fd)
        if holder.poll() is None:
            holder.kill()
            holder.communicate()


def test_lock_errors_are_jlog_errors(tmp_path: Path) -> None:
    """Locking a descriptor that cannot be locked raises JlogError, not OSError."""
    from mhafail.errors import JlogError

    r, w = os.pipe()
    try:
        with pytest.raises(JlogError):
            _lock.lock(r)
    finally:
        os.close(r)
        os.close(w)
