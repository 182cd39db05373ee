"""A framed connection over a (possibly TLS) socket, with timeouts on every call.

Thread safety: :meth:`Connection.send` may be called from several threads
(it serializes writers); :meth:`Connection.recv` belongs to one thread.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time

from mhafail.errors import LogsError, ProtocolError

from ._protocol import Frame, FrameReader, FrameType, decode_json, encode_json


class PeerClosed(LogsError):
    """The peer closed the connection, reset it, or stopped answering."""


class Connection:
    """Frames over one socket.

    Args:
        sock: a connected socket (plain or TLS).
        max_frame: the largest frame accepted from the peer.
        peer: a label for log messages (``host:port``).
    """

    def __init__(self, sock: socket.socket, *, max_frame: int, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.reader = FrameReader(max_frame)
        self._pending: list[Frame] = []
        self._send_lock = threading.Lock()
        self._closed = False

    def send(self, data: bytes, timeout: float) -> None:
        """Send whole frames; blocks at most about ``timeout`` seconds.

        Raises:
            PeerClosed: the connection broke or the peer did not take the data in time.
        """
        with self._send_lock:
            try:
                self.sock.settimeout(timeout)
                self.sock.sendall(data)
            except (OSError, ValueError) as exc:
                raise PeerClosed(f"{self.peer}: send failed: {exc}") from None

    def send_error(self, reason: str, timeout: float = 1.0) -> None:
        """Send an ERROR frame, ignoring a peer that is already gone."""
        with contextlib.suppress(PeerClosed):
            self.send(encode_json(FrameType.ERROR, {"reason": reason}), timeout)

    def recv(self, timeout: float) -> list[Frame]:
        """Return the frames that arrive within ``timeout`` seconds (maybe none).

        Returns at once with what is already buffered.

        Raises:
            PeerClosed: end of stream or a socket error.
            ProtocolError: the peer sent a malformed or oversized frame.
        """
        if self._pending:
            frames, self._pending = self._pending, []
            return frames
        try:
            self.sock.settimeout(timeout)
            data = self.sock.recv(262144)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            return []
        except (OSError, ValueError) as exc:
            raise PeerClosed(f"{self.peer}: receive failed: {exc}") from None
        if not data:
            raise PeerClosed(f"{self.peer}: connection closed by peer")
        return self.reader.feed(data)

    def has_buffered(self) -> bool:
        """True when more data can be read without waiting (TLS or kernel buffers)."""
        if self._pending:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            self.sock.settimeout(0)
            data = self.sock.recv(262144, socket.MSG_PEEK)
        except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
            return False
        except (OSError, ValueError):
            return True  # the next recv reports the error
        del data  # data, or b"" at end of stream: either way recv() has something to say
        return True

    @staticmethod
    def reason(frame: Frame) -> str:
        """The reason in an ERROR frame (its raw text if it is not the JSON expected)."""
        try:
            return str(decode_json(frame).get("reason", "no reason given"))
        except ProtocolError:
            return frame.body[:200].decode("utf-8", "replace")

    def expect(self, ftype: FrameType, timeout: float) -> dict[str, object]:
        """Wait for one control frame of type ``ftype`` and return its JSON.

        Raises:
            PeerClosed: nothing came within ``timeout`` or the peer closed.
            StreamRefused: the peer sent ERROR instead (see ``mhafail.errors``).
            ProtocolError: another frame type came, or bad JSON.
        """
        from mhafail.errors import StreamRefused

        deadline = time.monotonic() + timeout
        frames = self.recv(timeout)
        while not frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerClosed(f"{self.peer}: no {ftype.name} within {timeout:g} s")
            frames = self.recv(left)
        frame, rest = frames[0], frames[1:]
        self._pending = rest + self._pending
        doc = decode_json(frame)
        if frame.type is FrameType.ERROR:
            raise StreamRefused(str(doc.get("reason", "no reason given")))
        if frame.type is not ftype:
            raise ProtocolError(f"expected {ftype.name}, got {frame.type.name}")
        return doc

    def close(self) -> None:
        """Close the socket; idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.sock.close()
