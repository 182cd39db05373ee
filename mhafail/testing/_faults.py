"""Fault injection for tests: pause and resume processes, expire sessions."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from mhafail.errors import TestingError


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rfind(")") + 2]


def pause_process(pid: int, *, group: bool = False, timeout: float = 5.0) -> None:
    """Stop ``pid`` (or its process group) with SIGSTOP and wait until it is stopped.

    Models a stalled process: a long GC pause, swapping, a debugger.
    """
    if group:
        os.killpg(pid, signal.SIGSTOP)
    else:
        os.kill(pid, signal.SIGSTOP)
    end = time.monotonic() + timeout
    while _state(pid) not in ("T", "t", "gone"):
        if time.monotonic() > end:
            raise TestingError(f"process {pid} did not stop")
        time.sleep(0.005)


def resume_process(pid: int, *, group: bool = False) -> None:
    """Resume a process (or group) paused with :func:`pause_process`."""
    if group:
        os.killpg(pid, signal.SIGCONT)
    else:
        os.kill(pid, signal.SIGCONT)
