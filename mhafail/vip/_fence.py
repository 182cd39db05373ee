"""The agent's side of the fence: start it, feed it, and watch that it works.

Two rules shape this module (safety rule 7):

* **nothing the agent writes to the fence may block**: the fence's stdin is
  non-blocking, lease deadlines are coalesced to the latest one, and a
  message that does not fit stays queued in memory (a stopped fence once
  filled the pipe, blocked the writer while it held the kernel lock, and
  wedged lease expiry);
* **no VIP without a working fence**: the fence answers every batch it
  reads with ``ok``; a fence that exited or stopped answering for
  ``stall_limit`` seconds is reported through ``on_failure``, and
  :meth:`FenceProcess.manage` refuses (returns False) until it is restarted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from mhafail.errors import PlumbingError
from mhafail.vip._spec import Vip

logger = logging.getLogger(__name__)


class FenceProcess:
    """A running ``mhafail.vip.fence`` process fed with lease deadlines.

    Args:
        deadline: returns the current lease deadline (monotonic) or None;
            normally ``coordinator.lease_deadline``.
        interval: seconds between deadline updates (well below the lease).
        stall_limit: a fence silent this long counts as failed.
        start_timeout: how long a new fence has to report ``ready``.
        command: the fence's command line (default: this Python, isolated,
            running ``mhafail.vip.fence``); for tests.
        lifetimes: the fence renews the kernel lifetimes of the addresses it
            manages (pair it with ``VipManager(kernel_lifetimes=True)``).

    Raises (from the constructor and :meth:`restart`):
        PlumbingError: the fence did not start; the message says why.

    The fence runs isolated (``python -I``, working directory ``/``) in its
    own session, so that signals aimed at the agent's process group (a
    crash, a pause) do not reach it and nothing from the agent's working
    directory is imported into a process that runs as root.
    """

    def __init__(
        self,
        deadline: Callable[[], float | None],
        *,
        interval: float = 0.1,
        stall_limit: float = 1.0,
        start_timeout: float = 10.0,
        command: Sequence[str] | None = None,
        lifetimes: bool = True,
    ) -> None:
        default = [sys.executable, "-I", "-m", "mhafail.vip.fence"]
        if lifetimes:
            default.append("--lifetimes")
        self._command = list(command or default)
        self.renews_lifetimes = "--lifetimes" in self._command
        self._deadline = deadline
        self._interval = interval
        self._stall_limit = stall_limit
        self._start_timeout = start_timeout
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str], None]] = []
        self._pending = bytearray()
        self._unsent_deadline: float | None = None
        self._failure: str | None = None
        self._notified = False
        self._last_ack = 0.0
        self._stderr_tail = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawn()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="mhafail-fence-feed", daemon=True)
        self._thread.start()

    # --- life cycle ---------------------------------------------------------------

    def _spawn(self) -> None:
        """Start a fence and wait for its ``ready`` line (lock not needed: no feed yet)."""
        proc = subprocess.Popen(
            self._command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        os.set_blocking(proc.stdin.fileno(), False)
        os.set_blocking(proc.stdout.fileno(), False)
        threading.Thread(
            target=self._read_stderr, args=(proc,), name="mhafail-fence-log", daemon=True
        ).start()
        end = time.monotonic() + self._start_timeout
        line = b""
        while not line.endswith(b"\n"):
            if proc.poll() is not None or time.monotonic() > end:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                _close_pipes(proc)
                time.sleep(0.05)  # let the log reader take the last words
                why = self._stderr_tail or f"exit status {proc.returncode}"
                raise PlumbingError(f"the fence process could not start: {why}")
            try:
                chunk = os.read(proc.stdout.fileno(), 256)
            except BlockingIOError:
                time.sleep(0.01)
                continue
            line += chunk
        status = line.decode(errors="replace").strip()
        if "rt=0" in status:
            logger.warning("fence: no real-time priority (needs root or RLIMIT_RTPRIO)")
        logger.info("fence %d started: %s", proc.pid, status)
        self._proc = proc
        self._last_ack = time.monotonic()
        self._failure = None
        self._notified = False
        self._pending.clear()
        self._unsent_deadline = None

    def _read_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        with contextlib.suppress(ValueError, OSError):
            for raw in proc.stderr:
                text = raw.decode(errors="replace").rstrip()
                self._stderr_tail = text.removeprefix("mhafail-fence: ")
                logger.warning("fence %d: %s", proc.pid, self._stderr_tail)
        with contextlib.suppress(OSError):
            proc.stderr.close()

    @property
    def pid(self) -> int:
        """The current fence's process id."""
        assert self._proc is not None
        return self._proc.pid

    def on_failure(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(reason)`` (on the feed thread) when the fence fails."""
        self._listeners.append(listener)

    def healthy(self) -> bool:
        """True while the fence runs and answers."""
        with self._lock:
            return self._failure is None and self._check_locked(time.monotonic()) is None

    def restart(self) -> None:
        """Kill a failed fence and start a new one (call after removing every VIP).

        Raises:
            PlumbingError: the new fence did not start.
        """
        with self._lock:
            old, self._proc = self._proc, None
            self._failure, self._notified = "restarting", True
        if old is not None:
            _kill(old)
            _close_pipes(old)
        with self._lock:
            try:
                self._spawn()
            except PlumbingError as exc:
                self._failure = str(exc)
                raise

    def close(self) -> None:
        """End the fence gracefully (after the agent released its VIPs). Never hangs."""
        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(2)
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            self._pending += b"exit\n"
            self._flush_locked(proc)
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            _kill(proc)
        _close_pipes(proc)

    # --- messages -----------------------------------------------------------------

    def manage(self, vip: Vip) -> bool:
        """Tell the fence ``vip`` is about to be plumbed; False means do not plumb it."""
        return self.manage_many([vip])

    def manage_many(self, vips: Sequence[Vip]) -> bool:
        """Tell the fence ``vips`` are about to be plumbed, in one write; False: plumb none.

        Returns True only when the fence is healthy and every message was
        handed to it.
        """
        deadline = self._deadline() or 0.0
        with self._lock:
            if self._proc is None or self._failure is not None:
                return False
            for vip in vips:
                self._pending += f"manage {vip.interface} {vip.key} {deadline:.6f}\n".encode()
            self._flush_locked(self._proc)
            return not self._pending

    def unmanage(self, vip: Vip) -> None:
        """Tell the fence ``vip`` was removed (best effort, never blocks)."""
        self.unmanage_many([vip])

    def unmanage_many(self, vips: Sequence[Vip]) -> None:
        """Tell the fence ``vips`` were removed, in one write (best effort, never blocks)."""
        with self._lock:
            if self._proc is not None and vips:
                for vip in vips:
                    self._pending += f"unmanage {vip.interface} {vip.key}\n".encode()
                self._flush_locked(self._proc)

    def _flush_locked(self, proc: subprocess.Popen[bytes]) -> None:
        """Write what fits now; keep the rest (lock held; never blocks)."""
        if self._unsent_deadline is not None:
            self._pending += f"deadline {self._unsent_deadline:.6f}\n".encode()
            self._unsent_deadline = None
        if not self._pending or proc.stdin is None:
            return
        try:
            written = os.write(proc.stdin.fileno(), self._pending)
        except BlockingIOError:
            return
        except (BrokenPipeError, ValueError, OSError):
            self._fail_locked("its input pipe is closed")
            return
        del self._pending[:written]

    # --- the feed thread ----------------------------------------------------------

    def _feed(self) -> None:
        while not self._stop.wait(self._interval):
            deadline = self._deadline()
            reason = None
            with self._lock:
                proc = self._proc
                if proc is None:
                    continue
                self._read_acks(proc)
                if deadline is not None:
                    # Only the latest deadline matters: replace, never queue.
                    self._unsent_deadline = deadline
                elif not self._pending:
                    self._pending += b"\n"  # no lease: still ask for a sign of life
                self._flush_locked(proc)
                if self._failure is None:
                    found = self._check_locked(time.monotonic())
                    if found is not None:
                        self._fail_locked(found)
                if self._failure is not None and not self._notified:
                    reason, self._notified = self._failure, True
            if reason is not None:
                for listener in list(self._listeners):
                    try:
                        listener(reason)
                    except Exception:
                        logger.exception("fence failure listener failed")

    def _read_acks(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while True:
            try:
                chunk = os.read(proc.stdout.fileno(), 4096)
            except BlockingIOError:
                return
            except OSError:
                return
            if not chunk:
                return
            self._last_ack = time.monotonic()

    def _check_locked(self, now: float) -> str | None:
        proc = self._proc
        if proc is None:
            return "not running"
        if proc.poll() is not None:
            return f"exited with status {proc.returncode}"
        if now - self._last_ack > self._stall_limit:
            return f"silent for {now - self._last_ack:.2f} s (stopped or starved)"
        return None

    def _fail_locked(self, reason: str) -> None:
        if self._failure is None:
            self._failure = reason
            logger.error("the fence failed: %s; its VIPs must be released", reason)


def _close_pipes(proc: subprocess.Popen[bytes]) -> None:
    # stderr is closed by its reader thread when the fence's end closes.
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(2)
