"""Byte-level checks of the gratuitous ARP and unsolicited NA messages."""

import ipaddress
import struct

from mhafail.vip._announce import arp_frames, na_message

MAC = bytes.fromhex("021800000011")


def test_gratuitous_arp_request_and_reply() -> None:
    """Both frames are broadcast ARP for the VIP with sender = target = VIP and our MAC."""
    request, reply = arp_frames(MAC, "198.18.0.200")
    vip = ipaddress.IPv4Address("198.18.0.200").packed
    for frame, op, tha in ((request, 1, b"\x00" * 6), (reply, 2, MAC)):
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC
        assert struct.unpack("!H", frame[12:14]) == (0x0806,)
        htype, ptype, hlen, plen, opcode, sha, spa, tha_, tpa = struct.unpack(
            "!HHBBH6s4s6s4s", frame[14:42]
        )
        assert (htype, ptype, hlen, plen, opcode) == (1, 0x0800, 6, 4, op)
        assert (sha, spa, tha_, tpa) == (MAC, vip, tha, vip)


def test_unsolicited_na_has_override_and_target_link_layer_option() -> None:
    """The NA is type 136 with the Override flag, the VIP as target and our MAC as option."""
    msg = na_message(MAC, "2001:db8::200")
    kind, code, checksum, flags, target = struct.unpack("!BBHI16s", msg[:24])
    assert (kind, code, checksum) == (136, 0, 0)
    assert flags == 0x20000000  # Override only: not a router, not solicited
    assert target == ipaddress.IPv6Address("2001:db8::200").packed
    assert msg[24:] == bytes([2, 1]) + MAC
