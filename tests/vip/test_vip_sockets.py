"""Socket helpers: listen on a VIP before it is plumbed, send from a binding."""

import socket

import pytest

from mhafail.vip import listen_socket, outbound_socket


def test_listener_binds_an_address_this_host_does_not_have_yet() -> None:
    """IP_FREEBIND lets the MTA listen on a VIP before it owns it."""
    plain = socket.socket()
    with pytest.raises(OSError):
        plain.bind(("198.18.0.250", 0))  # not on this host: a plain bind fails
    plain.close()
    sock = listen_socket("198.18.0.250", 0)
    try:
        assert sock.getsockname()[0] == "198.18.0.250"
    finally:
        sock.close()


def test_outbound_socket_sends_from_the_binding_address() -> None:
    """A connection from outbound_socket() carries the binding's address as its source."""
    server = socket.create_server(("127.0.0.1", 0))
    try:
        out = outbound_socket("127.0.0.2")
        try:
            out.connect(server.getsockname())
            conn, peer = server.accept()
            conn.close()
            assert peer[0] == "127.0.0.2"
        finally:
            out.close()
    finally:
        server.close()


def test_bad_addresses_are_refused() -> None:
    """A malformed address raises ValueError before any socket is made."""
    with pytest.raises(ValueError):
        listen_socket("not-an-address", 25)
    with pytest.raises(ValueError):
        outbound_socket("300.0.0.1")
