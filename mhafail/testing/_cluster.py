"""Processes that report JSON events on stdout, and simulated cluster members.

Many mhafail commands (``mhafail agent --events``, ``python -m
mhafail.testing.member``) print one JSON object per line for every event,
each with a ``t`` from ``time.monotonic()`` (shared by all processes on one
Linux host). :class:`EventProcess` runs such a command and lets a test wait
for events; :class:`NodeProcess` is a cluster member built on it.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from mhafail.errors import TestingError
from mhafail.testing._children import reap, spawn
from mhafail.testing._faults import pause_process, resume_process

Event = dict[str, Any]


def is_ready(event: Event) -> bool:
    """The default start-up predicate: a ``ready`` event."""
    return bool(event.get("event") == "ready")


class EventProcess:
    """A child process printing JSON events, one per line, and what it printed.

    Args:
        argv: the command.
        name: a label for error messages.
        prefix: command prefix, e.g. ``["ip", "netns", "exec", ns]``.
        stdin: give the process a pipe on stdin for :meth:`send`.
        log_dir: write each incarnation's stderr to ``<name>-<n>.log`` there.

    ``events`` holds the current incarnation's events; :meth:`start` again
    begins a new incarnation. Lines that are not JSON are ignored.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "",
        prefix: Sequence[str] = (),
        stdin: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name or self.argv[0]
        self.prefix = list(prefix)
        self.stdin = stdin
        self.log_dir = log_dir
        self.starts = 0
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        """The process id of the current incarnation."""
        if self._proc is None:
            raise TestingError(f"{self.name} is not started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the current incarnation runs."""
        return self._proc is not None and self._proc.poll() is None

    def start(
        self, ready: Callable[[Event], bool] | None = is_ready, timeout: float = 30.0
    ) -> EventProcess:
        """Start (again); with ``ready``, block until an event satisfies it."""
        with self._cond:
            self.events = []
        self.starts += 1
        if self.log_dir is not None:
            self._stderr = (self.log_dir / f"{self.name}-{self.starts}.log").open("wb")
        self._proc = spawn(
            [*self.prefix, *self.argv],
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
        )
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        if ready is not None:
            self.wait_event(ready, timeout)
        return self

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        proc.stdout.close()

    def wait_event(self, predicate: Callable[[Event], bool], timeout: float) -> Event:
        """Return the first event (old or new) matching ``predicate``.

        Raises:
            TestingError: none arrived within ``timeout`` seconds.
        """
        with self._cond:
            end = time.monotonic() + timeout
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                left = end - time.monotonic()
                if left <= 0:
                    raise TestingError(f"{self.name}: no matching event; saw {self.events[-5:]}")
                self._cond.wait(left)

    def send(self, line: str) -> None:
        """Write one line to the process's stdin (needs ``stdin=True``)."""
        if self._proc is None or self._proc.stdin is None:
            raise TestingError(f"{self.name} has no stdin")
        self._proc.stdin.write(line.encode() + b"\n")
        self._proc.stdin.flush()

    def kill(self) -> None:
        """SIGKILL the process group, as a crash would."""
        self._end(signal.SIGKILL)

    def terminate(self) -> int:
        """SIGTERM the process group (a graceful stop) and return the exit status."""
        return self._end(signal.SIGTERM)

    def _end(self, sig: int) -> int:
        if self._proc is None:
            return 0
        status = reap(self._proc, sig)
        if self._proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self._proc.stdin.close()
        # The reader closes the pipe at EOF, which follows the process's exit.
        if self._reader is not None:
            self._reader.join(5)
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return status

    def pause(self) -> None:
        """SIGSTOP the process group."""
        pause_process(self.pid, group=True)

    def resume(self) -> None:
        """SIGCONT the process group."""
        resume_process(self.pid, group=True)


class NodeProcess(EventProcess):
    """One ``mhafail.testing.member`` process and the events it printed.

    Args:
        zk: ZooKeeper hosts the member connects to.
        cluster: cluster name.
        node: node name.
        session_timeout: the member's session timeout (seconds).
        prefix: command prefix, e.g. ``["ip", "netns", "exec", ns]``.
    """

    def __init__(
        self,
        *,
        zk: str,
        cluster: str,
        node: str,
        session_timeout: float = 2.0,
        prefix: Sequence[str] = (),
    ) -> None:
        argv = [
            sys.executable, "-m", "mhafail.testing.member", "--zk", zk, "--cluster", cluster,
            "--node", node, "--session-timeout", str(session_timeout),
        ]  # fmt: skip
        super().__init__(argv, name=node, prefix=prefix)
        self.zk = zk
        self.cluster = cluster
        self.node = node
        self.session_timeout = session_timeout

    def start(
        self, ready: Callable[[Event], bool] | None = is_ready, timeout: float = 30.0
    ) -> NodeProcess:
        """Start the member (again); with ``ready``, block until it reports ``ready``."""
        super().start(ready, timeout)
        return self

    def latest_view(self) -> list[str] | None:
        """Members in the most recent ``view`` event, or None."""
        with self._cond:
            views = [e for e in self.events if e["event"] == "view"]
        return views[-1]["members"] if views else None

    def wait_view(self, members: Sequence[str], timeout: float) -> Event:
        """Block until the member's latest view lists exactly ``members``."""
        want = sorted(members)
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                views = [e for e in self.events if e["event"] == "view"]
                if views and sorted(views[-1]["members"]) == want:
                    return views[-1]
                left = end - time.monotonic()
                if left <= 0:
                    raise TestingError(
                        f"{self.node}: view {self.latest_view()} never became {want}"
                    )
                self._cond.wait(left)
