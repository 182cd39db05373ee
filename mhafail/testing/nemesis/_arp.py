"""The ARP observer: asks "who has VIP?" every few ms and flags two MACs answering.

Linux answers ARP requests and neighbour solicitations in the kernel, so a
node keeps answering for an address as long as the address is plumbed,
whatever its processes are doing (stopped, starved, dead). Two different
MACs answering *one* request is two owners at the same instant, seen from
where clients stand.

Each probe goes out from its own source MAC (``02:18:fe:00:00:NN``, NN
cycling over 256 values), so every answer names the probe it answers (its
destination MAC) even when it arrives late. The observer's address and
MACs are not used by anything else in the lab; the nodes only learn a
neighbour entry for it. Unsolicited announcements (gratuitous ARP,
unsolicited NA) are recorded too, with the announcing MAC.
"""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
import time
from collections.abc import Sequence

import attrs

from mhafail.testing._netns import Host, run_in_netns
from mhafail.testing.nemesis._reader import SocketWatcher

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
BROADCAST = b"\xff" * 6


@attrs.frozen
class ArpAnswer:
    """A node's answer or announcement for a watched address.

    Attributes:
        t: ``time.monotonic()`` when the observer read it.
        address: the VIP.
        mac: the answering node's MAC (``02:18:00:00:00:0b``).
        node: the node with that MAC, if known, else the MAC.
        kind: ``reply`` (to one of our probes) or ``announce`` (unsolicited).
        probe: the probe number a reply answers (None for announcements).
    """

    t: float
    address: str
    mac: str
    node: str
    kind: str
    probe: int | None = None


@attrs.frozen
class ArpConflict:
    """Two or more MACs answered one probe for ``address`` (two owners at once)."""

    address: str
    nodes: tuple[str, ...]
    probe: int
    sent: float
    answers: tuple[ArpAnswer, ...]


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return int(~total & 0xFFFF)


def arp_request(src_mac: bytes, src_ip: str, target: str) -> bytes:
    """A broadcast ARP request for ``target`` (Ethernet frame)."""
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)  # Ethernet, IPv4, request
    arp += src_mac + ipaddress.IPv4Address(src_ip).packed + bytes(6)
    arp += ipaddress.IPv4Address(target).packed
    return BROADCAST + src_mac + struct.pack("!H", ETH_P_ARP) + arp


def neighbour_solicitation(src_mac: bytes, src_ip: str, target: str) -> bytes:
    """A neighbour solicitation for ``target`` to its solicited-node group (Ethernet frame)."""
    tgt = ipaddress.IPv6Address(target).packed
    dst = ipaddress.IPv6Address("ff02::1:ff00:0").packed[:13] + tgt[13:]
    src = ipaddress.IPv6Address(src_ip).packed
    body = struct.pack("!BBHI", 135, 0, 0, 0) + tgt + bytes([1, 1]) + src_mac
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _checksum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst
    eth_dst = b"\x33\x33" + dst[12:]
    return eth_dst + src_mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


class ArpObserver(SocketWatcher):
    """Probes ``addresses`` from ``host`` every ``interval`` s and records who answers.

    Args:
        host: where to stand (the lab's client host).
        addresses: VIPs to watch (IPv4 and IPv6; a prefix or ``@iface`` is ignored).
        macs: MAC -> node name, for readable findings.
        source_ipv4, source_ipv6: the observer's own addresses in the lab subnet,
            used by nothing else.
        interval: seconds between probes (per address).
        interface: the host's interface on the lab bridge.

    Root only. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        host: Host,
        addresses: Sequence[str],
        *,
        macs: dict[str, str] | None = None,
        source_ipv4: str = "198.18.0.254",
        source_ipv6: str = "2001:db8::fe",
        interval: float = 0.015,
        interface: str = "eth0",
    ) -> None:
        self.addresses = tuple(str(ipaddress.ip_interface(a.split("@")[0]).ip) for a in addresses)
        self.macs = dict(macs or {})
        self.source_ipv4 = source_ipv4
        self.source_ipv6 = source_ipv6
        self.interval = interval
        self.probes = 0
        self.announcements: list[ArpAnswer] = []
        self.changes: list[ArpAnswer] = []  # replies whose MAC differs from the previous one
        self.conflicts: list[ArpConflict] = []
        self._sent: dict[int, float] = {}  # probe slot -> send time
        self._round: dict[tuple[int, str], dict[str, ArpAnswer]] = {}
        self._last: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock: socket.socket = run_in_netns(host.netns, self._open, interface)
        self._thread = threading.Thread(target=self._run, name="mhafail-arp", daemon=True)
        self._thread.start()

    @staticmethod
    def _open(interface: str) -> socket.socket:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((interface, ETH_P_ALL))
        return sock

    def _mac(self, probe: int) -> bytes:
        return bytes([0x02, 0x18, 0xFE, 0, 0, probe % 256])

    def _send(self) -> None:
        probe = self.probes
        mac = self._mac(probe)
        with self._lock:
            self._sent[probe % 256] = time.monotonic()
            # Answers to the probe that last used this slot are final now.
            for key in [k for k in self._round if k[0] == probe % 256]:
                del self._round[key]
        for address in self.addresses:
            if ipaddress.ip_address(address).version == 4:
                frame = arp_request(mac, self.source_ipv4, address)
            else:
                frame = neighbour_solicitation(mac, self.source_ipv6, address)
            with contextlib.suppress(OSError):
                self._sock.send(frame)
        self.probes += 1

    def _run(self) -> None:
        next_probe = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= next_probe:
                self._send()
                next_probe = now + self.interval
            try:
                ready, _, _ = select.select([self._sock], [], [], max(0.0, next_probe - now))
                if ready:
                    frame, where = self._sock.recvfrom(2048)
                    if where[2] != PACKET_OUTGOING:
                        self._frame(frame)
            except OSError:
                if self._stop.is_set():
                    return

    def _frame(self, frame: bytes) -> None:
        if len(frame) < 14:
            return
        dst, src = frame[:6], frame[6:12]
        (ethertype,) = struct.unpack("!H", frame[12:14])
        found: tuple[str, str] | None = None  # (address, kind)
        if ethertype == ETH_P_ARP and len(frame) >= 42:
            op = struct.unpack("!H", frame[20:22])[0]
            spa = str(ipaddress.IPv4Address(frame[28:32]))
            tpa = str(ipaddress.IPv4Address(frame[38:42]))
            if spa in self.addresses:
                if op == 2 and tpa == self.source_ipv4:
                    found = (spa, "reply")
                elif op in (1, 2) and tpa == spa:
                    found = (spa, "announce")
        elif ethertype == ETH_P_IPV6 and len(frame) >= 78 and frame[20] == 58 and frame[54] == 136:
            target = str(ipaddress.IPv6Address(frame[62:78]))
            dst_ip = str(ipaddress.IPv6Address(frame[38:54]))
            if target in self.addresses:
                found = (target, "reply" if dst_ip == self.source_ipv6 else "announce")
        if found is not None:
            self._record(found[0], found[1], src, dst)

    def _record(self, address: str, kind: str, src: bytes, dst: bytes) -> None:
        mac = _mac_text(src)
        answer_t = time.monotonic()
        node = self.macs.get(mac, mac)
        if kind == "announce":
            with self._lock:
                self.announcements.append(ArpAnswer(answer_t, address, mac, node, kind))
            return
        if dst[:5] != self._mac(0)[:5]:
            return
        slot = dst[5]
        with self._lock:
            probe = self._probe_number(slot)
            answer = ArpAnswer(answer_t, address, mac, node, kind, probe)
            if self._last.get(address) != mac:
                self._last[address] = mac
                self.changes.append(answer)
            seen = self._round.setdefault((slot, address), {})
            seen.setdefault(mac, answer)
            if len(seen) == 2:
                self.conflicts.append(
                    ArpConflict(
                        address,
                        tuple(sorted(a.node for a in seen.values())),
                        probe,
                        self._sent.get(slot, answer_t),
                        tuple(seen.values()),
                    )
                )

    def _probe_number(self, slot: int) -> int:
        latest = self.probes - 1
        return latest - ((latest - slot) % 256)

    def answering(self, address: str) -> str | None:
        """The node (or MAC) that answered the latest reply for ``address``."""
        with self._lock:
            mac = self._last.get(str(ipaddress.ip_address(address)))
        return None if mac is None else self.macs.get(mac, mac)
