"""Announcing a VIP's new home: gratuitous ARP and unsolicited neighbour advertisements.

Both are built by hand on raw sockets (no external tool): an ARP request
and an ARP reply broadcast on the interface (clients and switches update
their caches from either), and an ICMPv6 neighbour advertisement to
all-nodes with the Override flag, so neighbours replace a cached link-layer
address at once (RFC 4861 7.2.6).
"""

from __future__ import annotations

import ipaddress
import socket
import struct

ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6
_ARP = struct.Struct("!HHBBH6s4s6s4s")
ND_NEIGHBOR_ADVERT = 136
NA_FLAG_OVERRIDE = 0x20000000
ALL_NODES = "ff02::1"
IPV6_MULTICAST_IF = 17
IPV6_MULTICAST_HOPS = 18
ICMP6_FILTER = 1
_BLOCK_ALL = b"\xff" * 32  # struct icmp6_filter: a set bit blocks that type


def arp_frames(mac: bytes, ip: str) -> list[bytes]:
    """The two gratuitous ARP Ethernet frames (request, reply) for ``ip`` at ``mac``."""
    addr = ipaddress.IPv4Address(ip).packed
    header = BROADCAST + mac + struct.pack("!H", ETH_P_ARP)
    request = _ARP.pack(1, 0x0800, 6, 4, 1, mac, addr, b"\x00" * 6, addr)
    reply = _ARP.pack(1, 0x0800, 6, 4, 2, mac, addr, mac, addr)
    return [header + request, header + reply]


def na_message(mac: bytes, ip: str) -> bytes:
    """An unsolicited NA for ``ip`` with Override set and the target link-layer option.

    The checksum field is zero: the kernel fills it in for ICMPv6 raw sockets.
    """
    target = ipaddress.IPv6Address(ip).packed
    option = struct.pack("!BB6s", 2, 1, mac)
    return struct.pack("!BBHI16s", ND_NEIGHBOR_ADVERT, 0, 0, NA_FLAG_OVERRIDE, target) + option


def interface_mac(interface: str) -> bytes:
    """The interface's hardware address."""
    with open(f"/sys/class/net/{interface}/address") as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def packet_socket(interface: str) -> socket.socket:
    """A raw packet socket bound to ``interface`` for sending whole Ethernet frames.

    Bound with protocol 0 so that it receives nothing: creating, binding
    and closing a receiving packet socket waits for an RCU grace period in
    the kernel (tens of milliseconds), which is why callers keep this one
    open and reuse it.
    """
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((interface, 0))
    except OSError:
        sock.close()
        raise
    return sock


def send_gratuitous_arp(sock: socket.socket, mac: bytes, ip: str) -> None:
    """Broadcast a gratuitous ARP request and reply for ``ip`` at ``mac`` through ``sock``."""
    for frame in arp_frames(mac, ip):
        sock.send(frame)


def icmp6_socket(interface: str, index: int) -> socket.socket:
    """A raw ICMPv6 socket for unsolicited NAs on ``interface`` (kept open and reused).

    Not bound to an address: each NA names its source (the VIP) with
    ``IPV6_PKTINFO``, so one socket serves every VIP on the interface.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    try:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_HOPS, 255)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_MULTICAST_IF, index)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        # It only sends: without a filter it would queue a copy of every
        # ICMPv6 packet on the interface until its buffer is full.
        sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, _BLOCK_ALL)
    except OSError:
        sock.close()
        raise
    return sock


def send_unsolicited_na(sock: socket.socket, mac: bytes, index: int, ip: str) -> None:
    """Send an unsolicited NA for ``ip`` (also its source) to all nodes through ``sock``."""
    pktinfo = struct.pack("=16sI", ipaddress.IPv6Address(ip).packed, index)
    sock.sendmsg(
        [na_message(mac, ip)],
        [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, pktinfo)],
        0,
        (ALL_NODES, 0, 0, index),
    )
