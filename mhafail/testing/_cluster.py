"""Simulated clusters: member processes driven from a test or the demo."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from mhafail.errors import TestingError
from mhafail.testing._children import reap, spawn
from mhafail.testing._faults import pause_process, resume_process

Event = dict[str, Any]


class NodeProcess:
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
        self.zk = zk
        self.cluster = cluster
        self.node = node
        self.session_timeout = session_timeout
        self.prefix = list(prefix)
        self.events: list[Event] = []
        self._new: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        """The member's process id."""
        if self._proc is None:
            raise TestingError(f"{self.node} is not started")
        return self._proc.pid

    def start(self, wait: bool = True, timeout: float = 30.0) -> NodeProcess:
        """Start the process; with ``wait``, block until it reports ``ready``."""
        argv = [
            *self.prefix,
            sys.executable,
            "-m",
            "mhafail.testing.member",
            "--zk",
            self.zk,
            "--cluster",
            self.cluster,
            "--node",
            self.node,
            "--session-timeout",
            str(self.session_timeout),
        ]
        with self._cond:
            self.events = []
        self._proc = spawn(argv, stdout=subprocess.PIPE)
        self._reader = threading.Thread(target=self._read, args=(self._proc,), daemon=True)
        self._reader.start()
        if wait:
            self.wait_event(lambda e: e["event"] == "ready", timeout)
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
                    raise TestingError(f"{self.node}: no matching event; saw {self.events[-5:]}")
                self._cond.wait(left)

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

    def kill(self) -> None:
        """SIGKILL the member, as a crash would (its session lingers until timeout)."""
        if self._proc is not None:
            reap(self._proc, signal.SIGKILL)
            self._join_reader()

    def terminate(self) -> int:
        """SIGTERM the member (it leaves cleanly) and return its exit status."""
        if self._proc is None:
            return 0
        status = reap(self._proc)
        self._join_reader()
        return status

    def _join_reader(self) -> None:
        # The reader closes the pipe at EOF, which follows the process's exit.
        if self._reader is not None:
            self._reader.join(5)

    def pause(self) -> None:
        """SIGSTOP the member."""
        pause_process(self.pid)

    def resume(self) -> None:
        """SIGCONT the member."""
        resume_process(self.pid)
