"""The shared ending of the nemesis's watchers: one daemon thread on one socket."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class SocketWatcher:
    """Base of a watcher whose thread reads ``_sock`` until ``_stop`` is set.

    Subclasses create ``_stop``, ``_sock`` and ``_thread`` in their
    constructor; what they recorded stays available after :meth:`close`.
    """

    _stop: threading.Event
    _sock: socket.socket
    _thread: threading.Thread

    def close(self) -> None:
        """Stop the thread and close the socket. Idempotent."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
