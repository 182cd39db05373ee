"""A loopback TCP proxy that can silently cut a client off from its server.

``cut()`` models a network partition, not a crash: bytes stop flowing in
both directions but no connection is reset, so the client notices only by
its own timeouts (as it would when a switch drops its packets). New
connections made during the cut are accepted and then left hanging.
``restore()`` closes the frozen connections, so the client reconnects
through a healthy path, as it would once the partition heals.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from mhafail.testing._ports import free_port


class TcpProxy:
    """Forward ``listen_host:port`` to ``target``; cut and restore on demand.

    Args:
        target: ``(host, port)`` to forward to.
        listen_host: loopback address to listen on.
        port: listen port (default: a free one).
    """

    def __init__(
        self, target: tuple[str, int], *, listen_host: str = "127.0.0.1", port: int | None = None
    ) -> None:
        self.target = target
        self.listen_host = listen_host
        self.port = port or free_port(listen_host)
        self._lock = threading.Lock()
        self._cut = False
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._selector = selectors.DefaultSelector()
        self._server = socket.create_server((listen_host, self.port), reuse_port=False)
        self._server.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._server, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopping = False
        self._restored: threading.Event | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"mha-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        """``host:port`` clients should connect to."""
        return f"{self.listen_host}:{self.port}"

    @property
    def is_cut(self) -> bool:
        """True between :meth:`cut` and :meth:`restore`."""
        with self._lock:
            return self._cut

    def cut(self) -> None:
        """Stop forwarding in both directions without closing anything."""
        with self._lock:
            self._cut = True
        self._wake()

    def restore(self) -> None:
        """Close the connections frozen by the cut and forward new ones again.

        Returns once the proxy thread has closed them.
        """
        done = threading.Event()
        with self._lock:
            self._cut = False
            self._restored = done
        self._wake()
        done.wait(5)

    def _close_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for sock in (a, b):
                if sock is not None:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(sock)
                    sock.close()

    def close(self) -> None:
        """Stop the proxy and close every connection."""
        self._stopping = True
        self._wake()
        self._thread.join(5)
        self._close_all()
        self._server.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def _run(self) -> None:
        while not self._stopping:
            with self._lock:
                cut, restored, self._restored = self._cut, self._restored, None
            if restored is not None:
                self._close_all()
                restored.set()
            for key, _ in self._selector.select(0.2):
                if key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                elif key.data == "accept":
                    self._accept(cut)
                elif not cut:
                    self._forward(key.fileobj, key.data)  # type: ignore[arg-type]
            if cut:
                # Leave the data in the kernel buffers: nothing moves, nothing resets.
                for key in list(self._selector.get_map().values()):
                    if key.data not in ("wake", "accept"):
                        with contextlib.suppress(KeyError, ValueError):
                            self._selector.unregister(key.fileobj)

    def _accept(self, cut: bool) -> None:
        try:
            client, _ = self._server.accept()
        except OSError:
            return
        if cut:
            with self._lock:
                self._pairs.append((client, None))
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        client.setblocking(False)
        upstream.setblocking(False)
        with self._lock:
            self._pairs.append((client, upstream))
        self._selector.register(client, selectors.EVENT_READ, upstream)
        self._selector.register(upstream, selectors.EVENT_READ, client)

    def _forward(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            data = src.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            try:
                dst.setblocking(True)
                dst.sendall(data)
                dst.setblocking(False)
                return
            except OSError:
                pass
        for sock in (src, dst):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()
