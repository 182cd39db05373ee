"""The cut-able TCP proxy."""

import contextlib
import socket
import threading

import pytest

from mhafail.testing import TcpProxy


@pytest.fixture
def echo_server():
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    def echo(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy may reset us on restore
            while data := conn.recv(4096):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()
    stop.set()
    thread.join()
    server.close()


def test_proxy_forwards_freezes_and_restores(echo_server: tuple[str, int]) -> None:
    """Bytes flow, stop without a reset while cut, and new connections work after restore."""
    with TcpProxy(echo_server) as proxy:
        client = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        proxy.cut()
        client.sendall(b"lost")
        client.settimeout(0.3)
        with pytest.raises(TimeoutError):
            client.recv(4)  # silence, not a reset: a partition
        proxy.restore()
        client.settimeout(2)
        # The frozen connection is closed on restore; unread bytes make it a reset.
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(4) == b""
        client.close()
        again = socket.create_connection(("127.0.0.1", proxy.port), timeout=2)
        again.sendall(b"back")
        assert again.recv(4) == b"back"
        again.close()
