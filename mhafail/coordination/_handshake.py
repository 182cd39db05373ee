"""Learn the *negotiated* session timeout from the server's connect response.

kazoo reads the connect response's ``timeOut`` into a local variable of its
connection handler and keeps only the *requested* value on the client
(``_session_timeout``). A lease computed from the requested timeout is
unsafe whenever the server caps it lower (``maxSessionTimeout``, or
``20 x tickTime`` by default): the server expires the session sooner than
the client believes (safety rule 6).

kazoo's public extension point for I/O is the *handler* (gevent and
eventlet handlers are swapped in the same way). This module's handler
wraps each connection socket and reads the first bytes the server sends on
it, which by protocol are the connect response::

    int32 length | int32 protocolVersion | int32 timeOut | int64 sessionId | ...

It reports ``timeOut`` (milliseconds) and the monotonic time the connection
attempt started, before kazoo reports the connection as CONNECTED (both
happen on kazoo's connection thread, in that order). Nothing of kazoo's is
patched: the wrapper only observes bytes that pass through.

The handler also waits with one ``select(2)`` call where kazoo's builds,
registers and closes an epoll selector on every wait (to allow descriptors
past ``FD_SETSIZE``): the connection thread waits several times per
request, and that selector churn was about a fifth of a command node's CPU
(benchmarks/bench_commands.py). Descriptors past the limit still go
kazoo's way.
"""

from __future__ import annotations

import select
import struct
import time
from collections.abc import Callable, Sequence
from typing import Any

from kazoo.handlers.threading import SequentialThreadingHandler

# Called with (negotiated timeout in ms, monotonic time the attempt started).
OnNegotiated = Callable[[int, float], None]

_PREFIX = 12  # length, protocolVersion, timeOut


class _SniffingSocket:
    """A socket that reports the connect response's timeout, then steps aside."""

    def __init__(self, sock: Any, started: float, report: OnNegotiated) -> None:
        self._sock = sock
        self._started = started
        self._report: OnNegotiated | None = report
        self._head = b""
        # The connection thread calls these for every wait and write: the
        # real socket's own methods, without a Python frame in between.
        self.fileno: Callable[[], int] = sock.fileno
        self.send: Callable[..., int] = sock.send

    def recv(self, size: int, *args: Any) -> bytes:
        data: bytes = self._sock.recv(size, *args)
        if self._report is not None and data:
            self._head += data[: _PREFIX - len(self._head)]
            if len(self._head) >= _PREFIX:
                _length, _version, timeout_ms = struct.unpack("!iii", self._head)
                report, self._report = self._report, None
                report(timeout_ms, self._started)
        return data

    def __getattr__(self, name: str) -> Any:
        # send, setblocking, close, pending (TLS) ... go to the real socket.
        return getattr(self._sock, name)


class NegotiationHandler(SequentialThreadingHandler):  # type: ignore[misc]
    """kazoo's threading handler, reporting each connection's negotiated timeout."""

    def __init__(self, on_negotiated: OnNegotiated) -> None:
        super().__init__()
        self._on_negotiated = on_negotiated

    def select(
        self,
        rlist: Sequence[Any],
        wlist: Sequence[Any],
        xlist: Sequence[Any],
        timeout: float | None = None,
    ) -> Any:
        """kazoo's ``select``: one system call for descriptors below ``FD_SETSIZE``.

        Raises:
            ValueError: a closed or invalid descriptor (as kazoo's does).
        """
        try:
            return select.select(rlist, wlist, xlist, timeout)
        except ValueError:  # past FD_SETSIZE, or closed: kazoo's way decides
            return super().select(rlist, wlist, xlist, timeout)
        except OSError as exc:  # EBADF: kazoo's selector reports it as ValueError
            raise ValueError("Invalid event mask or fd") from exc

    def create_connection(self, *args: Any, **kwargs: Any) -> Any:
        started = time.monotonic()
        sock = super().create_connection(*args, **kwargs)
        return _SniffingSocket(sock, started, self._on_negotiated)
