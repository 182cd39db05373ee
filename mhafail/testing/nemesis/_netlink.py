"""Raw rtnetlink for the overlap monitor: no pyroute2 (only mhafail.vip may use it).

Just enough of the protocol to read address and link notifications from
every namespace on one socket, to dump a namespace's current addresses and
links, and to give a namespace an id (nsid) in ours. Layouts are from
``linux/netlink.h``, ``linux/rtnetlink.h``, ``linux/if_addr.h`` and
``linux/net_namespace.h``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterator

import attrs

from mhafail.errors import TestingError

SOL_NETLINK = 270
NETLINK_LISTEN_ALL_NSID = 8
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
RTM_NEWNSID = 88
RTM_GETNSID = 90
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFLA_IFNAME = 3
NETNSA_NSID = 1
NETNSA_FD = 3
IFF_UP = 0x1
# Groups as the bind() bit mask: RTNLGRP_LINK (1), IPV4_IFADDR (5), IPV6_IFADDR (9).
GROUPS = (1 << 0) | (1 << 4) | (1 << 8)
_HEADER = struct.Struct("=IHHII")


@attrs.frozen
class AddrMessage:
    """One RTM_NEWADDR / RTM_DELADDR: ``added`` is False for a deletion."""

    added: bool
    index: int
    prefixlen: int
    address: str


@attrs.frozen
class LinkMessage:
    """One RTM_NEWLINK / RTM_DELLINK: ``up`` is the administrative IFF_UP flag."""

    index: int
    name: str
    up: bool


Message = AddrMessage | LinkMessage


def open_socket(*, listen: bool, rcvbuf: int = 8 << 20) -> socket.socket:
    """A NETLINK_ROUTE socket; with ``listen``, subscribed to address and link groups
    in every namespace that has an nsid in ours (NETLINK_LISTEN_ALL_NSID)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    try:
        # SO_RCVBUFFORCE (root) lifts the cap of rmem_max: a burst must not overflow.
        try:
            sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if listen:
            sock.setsockopt(SOL_NETLINK, NETLINK_LISTEN_ALL_NSID, 1)
        sock.bind((0, GROUPS if listen else 0))
    except OSError:
        sock.close()
        raise
    return sock


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, bytes]]:
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & 0x3FFF, data[offset + 4 : offset + length]
        offset += (length + 3) & ~3


def parse(data: bytes) -> Iterator[tuple[int, Message | None]]:
    """Split a datagram into (message type, parsed message or None) pairs.

    Raises:
        OSError: the datagram carries a netlink error (``NLMSG_ERROR``, non-zero).
    """
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        body = offset + _HEADER.size
        end = offset + length
        parsed: Message | None = None
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            if code:
                raise OSError(-code, os.strerror(-code))
        elif kind in (RTM_NEWADDR, RTM_DELADDR):
            family, prefixlen, _f, _scope, index = struct.unpack_from("=BBBBI", data, body)
            found = dict(_attrs(data, body + 8, end))
            raw = found.get(IFA_LOCAL) or found.get(IFA_ADDRESS)
            if raw is not None and family in (socket.AF_INET, socket.AF_INET6):
                address = str(ipaddress.ip_address(raw))
                parsed = AddrMessage(kind == RTM_NEWADDR, index, prefixlen, address)
        elif kind in (RTM_NEWLINK, RTM_DELLINK):
            _family, _pad, _type, index, flags, _change = struct.unpack_from("=BBHiII", data, body)
            found = dict(_attrs(data, body + 16, end))
            name = found.get(IFLA_IFNAME, b"").split(b"\0", 1)[0].decode(errors="replace")
            parsed = LinkMessage(index, name, kind == RTM_NEWLINK and bool(flags & IFF_UP))
        yield kind, parsed
        offset += (length + 3) & ~3


def _request(sock: socket.socket, kind: int, flags: int, body: bytes, seq: int) -> None:
    sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body)


def dump(sock: socket.socket) -> list[Message]:
    """Every address and link of ``sock``'s namespace (a non-listening socket)."""
    out: list[Message] = []
    for seq, kind, body in ((1, RTM_GETLINK, bytes(16)), (2, RTM_GETADDR, bytes(8))):
        _request(sock, kind, NLM_F_REQUEST | NLM_F_DUMP, body, seq)
        done = False
        while not done:
            for got, message in parse(sock.recv(1 << 16)):
                if got == NLMSG_DONE:
                    done = True
                elif message is not None:
                    out.append(message)
    return out


def _nsid_body(fd: int, nsid: int | None) -> bytes:
    body = bytes(4)  # struct rtgenmsg, padded to 4
    body += struct.pack("=HHI", 8, NETNSA_FD, fd)
    if nsid is not None:
        body += struct.pack("=HHi", 8, NETNSA_NSID, nsid)
    return body


def ensure_nsid(netns: str) -> int:
    """The id of network namespace ``netns`` (by name) in ours, assigned if it has none.

    Raises:
        TestingError: the namespace does not exist or the kernel refused.
    """
    try:
        fd = os.open(f"/var/run/netns/{netns}", os.O_RDONLY)
    except OSError as exc:
        raise TestingError(f"no network namespace {netns!r}: {exc}") from exc
    try:
        with open_socket(listen=False) as sock:
            for attempt in range(2):
                _request(sock, RTM_GETNSID, NLM_F_REQUEST, _nsid_body(fd, None), 10 + attempt)
                nsid = -1
                for kind, _ in parse(data := sock.recv(1 << 16)):
                    if kind == RTM_NEWNSID:
                        found = dict(_attrs(data, _HEADER.size + 4, len(data)))
                        nsid = struct.unpack("=i", found[NETNSA_NSID])[0]
                if nsid >= 0:
                    return nsid
                # -1 asks the kernel to pick a free id (like ``ip netns set NAME auto``);
                # EEXIST means another process assigned one meanwhile: read it again.
                _request(sock, RTM_NEWNSID, NLM_F_REQUEST | NLM_F_ACK, _nsid_body(fd, -1), 20)
                with contextlib.suppress(FileExistsError):
                    list(parse(sock.recv(1 << 16)))
    except OSError as exc:
        raise TestingError(f"cannot give {netns!r} an nsid: {exc}") from exc
    finally:
        os.close(fd)
    raise TestingError(f"the kernel gave {netns!r} no nsid")


def nsid_of(cmsgs: list[tuple[int, int, bytes]]) -> int | None:
    """The sender namespace's id from recvmsg ancillary data (None: our own namespace)."""
    for level, kind, data in cmsgs:
        if level == SOL_NETLINK and kind == NETLINK_LISTEN_ALL_NSID and len(data) >= 4:
            return int(struct.unpack("=i", data[:4])[0])
    return None
