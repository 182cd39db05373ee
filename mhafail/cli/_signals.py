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

#: Seconds after the first signal before the watchdog ends the process.
GRACE = 4.5
#: Longest a ZooKeeper call on a command's stop path waits (seconds).
STOP_ZK_TIMEOUT = 0.5


def stop_on_signals(grace: float = GRACE) -> threading.Event:
    """Install SIGTERM and SIGINT handlers (main thread only) and return the stop event.

    Args:
        grace: seconds the clean stop may take before the process exits anyway.

    Returns:
        An event set by the first SIGTERM or SIGINT.
    """
    stop = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            _exit_now(signum, f"second {signal.Signals(signum).name}")
        stop.set()
        # Why a timer thread: the main thread may be inside a join or a
        # blocking call when the grace runs out; a thread always runs.
        timer = threading.Timer(
            grace, _exit_now, args=(signum, f"still stopping {grace:g} s after the signal")
        )
        timer.daemon = True
        timer.name = "mhafail-stop-watchdog"
        timer.start()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def _exit_now(signum: int, why: str) -> None:
    # os.write, not sys.stderr: another thread may hold the stream's lock.
    with contextlib.suppress(OSError):
        os.write(2, f"mhafail: {why}: exiting now\n".encode())
    os._exit(128 + signum)
