"""How long-running commands stop: bounded on the first signal, at once on the second.

The first SIGTERM or SIGINT sets the event the command waits on; the
command then stops its components, whose stop paths are bounded (every
ZooKeeper call on them has a short timeout, so a dead, hung or slow
ZooKeeper cannot hold the process). A second SIGTERM or SIGINT ends the
process at once (exit status 128 + signal). As a last line, a watchdog ends
the process :data:`GRACE` seconds after the first signal if it is still
running, so a supervisor never needs SIGKILL (systemd's default
``TimeoutStopSec`` is 90 s, then SIGKILL). Either way it says so on stderr.
Everything mhafail keeps on disk survives such an exit as it survives a
crash (jlogs, manager states and output, snapshots are written crash-safe).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType
from typing import Any

#: Seconds after the first signal before the watchdog ends the process.
GRACE = 4.5
#: The signals that stop a command.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Longest a ZooKeeper call on a command's stop path waits (seconds).
STOP_ZK_TIMEOUT = 0.5
#: Longest ``Coordinator.stop`` waits for ZooKeeper to acknowledge the close (seconds).
STOP_CLOSE = 1.5


def stop_on_signals(grace: float = GRACE) -> threading.Event:
    """Install SIGTERM and SIGINT handling (main thread only) and return the stop event.

    Args:
        grace: seconds the clean stop may take before the process exits anyway.

    Returns:
        An event set by the first SIGTERM or SIGINT.
    """
    stop = threading.Event()
    restore()  # a second command in the same process (tests) starts afresh
    # Why a wakeup fd and a thread of our own: Python runs signal handlers on
    # the main thread only, between bytecodes. When the kernel hands the
    # signal to another thread, a main thread blocked in Event.wait() or a
    # join never runs it (the first SIGTERM was ignored for good in a test),
    # and a second signal would wait for the stop path's next step. The C
    # handler writes the signal number to the fd at once, whichever thread
    # got it; the watcher thread acts on it.
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
    os.set_blocking(write_fd, False)
    handlers = {sig: signal.signal(sig, _ignore) for sig in SIGNALS}
    wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    _state.update(handlers=handlers, wakeup=wakeup, fds=(read_fd, write_fd), timers=[])
    threading.Thread(
        target=_watch, args=(read_fd, stop, grace), name="mhafail-signals", daemon=True
    ).start()
    return stop


# What stop_on_signals changed, so that restore() can put it back.
_state: dict[str, Any] = {}


def restore() -> None:
    """Undo :func:`stop_on_signals` (main thread only): handlers, wakeup fd, watchdog.

    ``mhafail.cli.main`` calls it when a command returns, so that running a
    command in-process (a test, an embedding application) leaves no signal
    handling and no armed watchdog behind to end the host process later.
    """
    if not _state:
        return
    for timer in _state["timers"]:
        timer.cancel()
    signal.set_wakeup_fd(_state["wakeup"])
    for sig, handler in _state["handlers"].items():
        signal.signal(sig, handler)
    for fd in _state["fds"]:
        with contextlib.suppress(OSError):
            os.close(fd)  # the watcher thread's read fails and it returns
    _state.clear()


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """The Python-level handler: the watcher thread does the work."""


def _watch(fd: int, stop: threading.Event, grace: float) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        for signum in data:
            if signum not in SIGNALS:
                continue
            if stop.is_set():
                _exit_now(signum, f"second {signal.Signals(signum).name}")
            stop.set()
            timer = threading.Timer(
                grace, _exit_now, args=(signum, f"still stopping {grace:g} s after the signal")
            )
            timer.daemon = True
            timer.name = "mhafail-stop-watchdog"
            _state.setdefault("timers", []).append(timer)
            timer.start()


def _exit_now(signum: int, why: str) -> None:
    # os.write, not sys.stderr: another thread may hold the stream's lock.
    with contextlib.suppress(OSError):
        os.write(2, f"mhafail: {why}: exiting now\n".encode())
    os._exit(128 + signum)
