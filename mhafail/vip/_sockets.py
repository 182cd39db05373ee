"""Sockets on VIPs: listen before the address is plumbed, send from a binding."""

from __future__ import annotations

import ipaddress
import socket

IP_FREEBIND = 15
IPV6_FREEBIND = 78
IP_BIND_ADDRESS_NO_PORT = 24


def listen_socket(address: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A listening TCP socket on ``address``, even if it is not plumbed yet.

    ``IP_FREEBIND`` lets the MTA bind its listener at start-up on every
    listener VIP; connections arrive once this node owns and plumbs one.
    """
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ip.version == 6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
        sock.bind((str(ip), port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def outbound_socket(address: str) -> socket.socket:
    """An unconnected TCP socket bound to ``address`` (a binding) for outbound mail.

    ``IP_BIND_ADDRESS_NO_PORT`` defers the port choice to ``connect()``, so
    many outbound connections from one binding do not exhaust ports.
    """
    ip = ipaddress.ip_address(address)
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((str(ip), 0))
    except OSError:
        sock.close()
        raise
    return sock
