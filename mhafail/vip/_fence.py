"""The agent's side of the fence: start the fence process and keep it informed."""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
import threading
from collections.abc import Callable

from mhafail.vip._spec import Vip

logger = logging.getLogger(__name__)


class FenceProcess:
    """A running ``mhafail.vip.fence`` process fed with lease deadlines.

    Args:
        deadline: returns the current lease deadline (monotonic) or None;
            normally ``coordinator.lease_deadline``.
        interval: seconds between deadline updates (well below the lease
            length; the coordinator renews every T/8).

    The fence runs in its own session so that signals aimed at the agent's
    process group (a crash, a pause) do not reach it. Writes to it never
    block the agent for long: messages are a few dozen bytes.
    """

    def __init__(self, deadline: Callable[[], float | None], *, interval: float = 0.1) -> None:
        self._deadline = deadline
        self._interval = interval
        self._lock = threading.Lock()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "mhafail.vip.fence"],
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="mhafail-fence-feed", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        """The fence's process id."""
        return self._proc.pid

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc.stdin is None or self._proc.stdin.closed:
                return
            try:
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()
            except (BrokenPipeError, ValueError):
                logger.error("the fence process is gone; paused-agent protection is off")

    def _feed(self) -> None:
        while not self._stop.wait(self._interval):
            deadline = self._deadline()
            if deadline is not None:
                self._send(f"deadline {deadline:.6f}")

    def manage(self, vip: Vip) -> None:
        """Tell the fence ``vip`` is about to be plumbed (call before plumbing)."""
        deadline = self._deadline() or 0.0
        self._send(f"manage {vip.interface} {vip.key} {deadline:.6f}")

    def unmanage(self, vip: Vip) -> None:
        """Tell the fence ``vip`` was removed (call after unplumbing)."""
        self._send(f"unmanage {vip.interface} {vip.key}")

    def close(self) -> None:
        """End the fence gracefully (after the agent released its VIPs)."""
        self._stop.set()
        self._thread.join(5)
        self._send("exit")
        with self._lock, contextlib.suppress(OSError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
