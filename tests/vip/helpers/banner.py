"""A banner server for the namespace tests: answers every connection with '220 <name>'."""

import contextlib
import socket
import sys
import threading

name = sys.argv[1]
port = int(sys.argv[2])


def serve(family: int, address: str) -> None:
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    server.bind((address, port))
    server.listen(512)
    while True:
        conn, _ = server.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(f"220 {name}\r\n".encode())


threading.Thread(target=serve, args=(socket.AF_INET6, "::"), daemon=True).start()
serve(socket.AF_INET, "0.0.0.0")
