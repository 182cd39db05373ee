"""Child processes that die with us: no orphan servers, even on SIGKILL or Ctrl-C."""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from typing import IO, Any

_PR_SET_PDEATHSIG = 1
_live: set[subprocess.Popen[bytes]] = set()
_lock = threading.Lock()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgrp()


def spawn(
    argv: Sequence[str],
    *,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
    stdin: int = subprocess.DEVNULL,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own process group, killed if this process dies.

    The kernel sends the child SIGKILL when the thread that spawned it exits
    (``PR_SET_PDEATHSIG``), so a SIGKILLed test run leaves no server behind;
    an ``atexit`` hook kills what is left on a normal exit or Ctrl-C.
    """
    proc = subprocess.Popen(
        list(argv),
        stdout=stdout,
        stderr=stderr,
        stdin=stdin,
        cwd=cwd,
        env=env,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl must run in the child
    )
    with _lock:
        _live.add(proc)
    return proc


def reap(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Signal ``proc``'s group (SIGCONT too, in case it is paused) and wait for it.

    Falls back to SIGKILL after ``timeout``. Returns the exit status.
    """
    if proc.poll() is None:
        for s in (sig, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, s)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with _lock:
        _live.discard(proc)
    return proc.returncode


@atexit.register
def _kill_leftovers() -> None:
    with _lock:
        procs = list(_live)
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
