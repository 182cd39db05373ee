"""Batched address requests over a raw rtnetlink socket (no pyroute2 on the hot path).

A mass takeover plumbs hundreds of addresses at once. pyroute2 sends one
request, waits for its acknowledgement and parses it in Python, and looks
the interface up with a link dump on every call: about 5 ms per address.
Here the requests are packed by hand, many to one ``send()`` (the kernel
handles them in order within that system call), and the acknowledgements
are collected afterwards, matched by sequence number. Interfaces are
resolved with ``if_nametoindex`` (one ioctl), once per batch.

Chunks are bounded (:data:`CHUNK`) so the acknowledgements of one chunk
always fit in the socket's receive buffer: a netlink socket whose buffer
overflows drops messages (``ENOBUFS``) and the batch could not tell which
requests were answered.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
from collections.abc import Sequence

import attrs

from mhafail.vip._spec import Vip

RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_MULTI, NLM_F_ACK = 0x1, 0x2, 0x4
NLM_F_REPLACE, NLM_F_EXCL, NLM_F_CREATE, NLM_F_DUMP = 0x100, 0x200, 0x400, 0x300
IFA_ADDRESS, IFA_LOCAL, IFA_LABEL, IFA_CACHEINFO, IFA_FLAGS = 1, 2, 3, 6, 8
IFA_F_NODAD = 0x02
INFINITE = 0xFFFFFFFF
# Requests per send: their acknowledgements (error replies echo the request)
# stay far below the default 208 KiB receive buffer.
CHUNK = 64
RECV_TIMEOUT = 5.0

_NLMSGHDR = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTATTR = struct.Struct("=HH")
_ERRNO = struct.Struct("=i")


@attrs.frozen
class Request:
    """One address request: what to do with which VIP, on which interface index."""

    vip: Vip
    index: int
    kind: str  # "add", "replace" or "del"
    label: str | None = None
    lifetime: int | None = None  # whole seconds, or None for no lifetime


def _attr(kind: int, payload: bytes) -> bytes:
    size = _RTATTR.size + len(payload)
    return _RTATTR.pack(size, kind) + payload + b"\0" * (-size % 4)


def encode(request: Request, seq: int) -> bytes:
    """The netlink message for ``request`` (see ``NetlinkPlumber`` for the address shape)."""
    vip = request.vip
    family = socket.AF_INET if vip.family == 4 else socket.AF_INET6
    packed = vip.address.packed
    flags = 0
    attrs_ = _attr(IFA_ADDRESS, packed)
    if vip.family == 4:
        attrs_ += _attr(IFA_LOCAL, packed)
        if request.label is not None and request.kind != "del":
            attrs_ += _attr(IFA_LABEL, request.label.encode() + b"\0")
    elif request.kind != "del":
        flags = IFA_F_NODAD
        attrs_ += _attr(IFA_FLAGS, struct.pack("=I", IFA_F_NODAD))
    if request.kind != "del":
        valid = INFINITE if request.lifetime is None else request.lifetime
        # IPv6 VIPs are deprecated (preferred 0): never picked as a source.
        preferred = valid if vip.family == 4 else 0
        if vip.family == 6 or request.lifetime is not None:
            attrs_ += _attr(IFA_CACHEINFO, struct.pack("=IIII", preferred, valid, 0, 0))
    body = _IFADDRMSG.pack(family, vip.address.max_prefixlen, flags, 0, request.index) + attrs_
    if request.kind == "del":
        kind, nl_flags = RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK
    elif request.kind == "add":
        kind, nl_flags = RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    else:
        kind, nl_flags = RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, nl_flags, seq, 0) + body


def _messages(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split a datagram into (type, flags, seq, payload) messages."""
    out = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, flags, seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size:
            break
        out.append((kind, flags, seq, data[offset + _NLMSGHDR.size : offset + length]))
        offset += (length + 3) & ~3
    return out


class Rtnl:
    """A raw ``NETLINK_ROUTE`` socket that sends address requests in batches.

    Thread-safe: one batch at a time. Raises ``OSError`` (the caller
    translates it) when the socket itself fails.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self._sock.bind((0, 0))
        self._sock.settimeout(RECV_TIMEOUT)
        self._seq = 0

    def close(self) -> None:
        """Close the socket."""
        with self._lock:
            self._sock.close()

    def run(self, requests: Sequence[Request]) -> list[int]:
        """Send ``requests`` (in order) and return each one's errno (0 for success).

        Raises:
            OSError: the socket failed or the kernel did not answer in time.
        """
        results: list[int] = []
        with self._lock:
            for start in range(0, len(requests), CHUNK):
                chunk = requests[start : start + CHUNK]
                first = self._seq + 1
                self._seq += len(chunk)
                data = b"".join(encode(r, first + i) for i, r in enumerate(chunk))
                self._sock.sendto(data, (0, 0))
                answers: dict[int, int] = {}
                while len(answers) < len(chunk):
                    for kind, _flags, seq, payload in _messages(self._receive()):
                        # Sequence numbers outside this chunk are late answers
                        # to a batch that failed half-way: ignore them.
                        if kind == NLMSG_ERROR and first <= seq < first + len(chunk):
                            answers[seq] = -_ERRNO.unpack_from(payload)[0]
                results += [answers[first + i] for i in range(len(chunk))]
        return results

    def _receive(self) -> bytes:
        """The next datagram from the kernel (port id 0); anything else is dropped."""
        while True:
            data, (portid, _groups) = self._sock.recvfrom(1 << 16)
            if portid == 0:
                return data

    def addresses(self, index: int | None = None) -> list[tuple[int, str]]:
        """Every address in the namespace as (interface index, address), or on ``index`` only.

        Raises:
            OSError: the socket failed or the dump did not complete in time.
        """
        found: list[tuple[int, str]] = []
        with self._lock:
            self._seq += 1
            seq = self._seq
            body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            header = _NLMSGHDR.pack(
                _NLMSGHDR.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
            )
            self._sock.sendto(header + body, (0, 0))
            while True:
                for kind, _flags, got, payload in _messages(self._receive()):
                    if got != seq:
                        continue
                    if kind == NLMSG_DONE:
                        return found
                    if kind == NLMSG_ERROR:
                        code = -_ERRNO.unpack_from(payload)[0]
                        raise OSError(code, f"address dump: {errno.errorcode.get(code, code)}")
                    if kind != RTM_NEWADDR:
                        continue
                    family, _plen, _fl, _scope, ifindex = _IFADDRMSG.unpack_from(payload)
                    if index is not None and ifindex != index:
                        continue
                    address = _attribute(payload[_IFADDRMSG.size :], IFA_ADDRESS)
                    if address is not None:
                        found.append((ifindex, socket.inet_ntop(family, address)))


def _attribute(data: bytes, wanted: int) -> bytes | None:
    """The payload of the first attribute of type ``wanted``, or None."""
    offset = 0
    while offset + _RTATTR.size <= len(data):
        size, kind = _RTATTR.unpack_from(data, offset)
        if size < _RTATTR.size:
            return None
        if kind == wanted:
            return data[offset + _RTATTR.size : offset + size]
        offset += (size + 3) & ~3
    return None
