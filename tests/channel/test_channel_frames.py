"""The channel's pure parts: frame splitting, per-frame MACs, handshake messages, endpoints."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mhafail.channel
from mhafail.channel import endpoints_in, parse_endpoint
from mhafail.channel._frames import (
    CLIENT_TO_SERVER,
    SERVER_TO_CLIENT,
    TAG_BYTES,
    FrameMac,
    FrameReader,
    decode_control,
    derive_keys,
    frame_header,
)
from mhafail.errors import ChannelInvalidArgument, ChannelProtocolError

FUZZ = settings(max_examples=200, deadline=5000)


def test_all_equals_the_public_names() -> None:
    """mhafail.channel.__all__ lists exactly the names it exports, each from a private module."""
    public = {n for n, v in vars(mhafail.channel).items() if not n.startswith("_")}
    public -= {n for n, v in vars(mhafail.channel).items() if type(v).__name__ == "module"}
    assert sorted(mhafail.channel.__all__) == sorted(public)


@FUZZ
@given(st.binary(max_size=3000), st.integers(1, 64))
def test_fuzzed_bytes_split_into_frames_or_fail_cleanly(data: bytes, step: int) -> None:
    """Any bytes, fed in any chunks: whole frames or ChannelProtocolError, never more than one
    frame limit buffered."""
    reader = FrameReader(256)
    with contextlib.suppress(ChannelProtocolError):
        for i in range(0, len(data), step):
            for body in reader.feed(data[i : i + step]):
                assert 1 <= len(body) <= 256
            assert reader.buffered <= 256 + 4 + step


def test_oversized_header_fails_before_the_body_arrives() -> None:
    """A header over the limit is refused from its four bytes alone."""
    with pytest.raises(ChannelProtocolError, match=r"outside 1\.\.4096"):
        FrameReader(4096).feed(frame_header(256 << 20))
    with pytest.raises(ChannelProtocolError, match="outside"):
        FrameReader(4096).feed(frame_header(0))


@FUZZ
@given(st.lists(st.binary(min_size=1, max_size=200), min_size=1, max_size=8))
def test_sealed_frames_open_in_order_only(payloads: list[bytes]) -> None:
    """Frames sealed with one direction's key open in order; replayed, reordered, reflected or
    altered frames fail their check."""
    c2s, s2c = derive_keys(b"k" * 16, "svc", "a" * 64, "b" * 64)
    sender, receiver = FrameMac(c2s, CLIENT_TO_SERVER), FrameMac(c2s, CLIENT_TO_SERVER)
    bodies = [p + sender.seal(p) for p in payloads]
    assert [receiver.open(b) for b in bodies] == payloads
    with pytest.raises(ChannelProtocolError, match="integrity"):
        receiver.open(bodies[-1])  # replay
    fresh = FrameMac(c2s, CLIENT_TO_SERVER)
    if len(bodies) > 1 and bodies[0] != bodies[1]:
        with pytest.raises(ChannelProtocolError):
            fresh.open(bodies[1])  # reordered
    with pytest.raises(ChannelProtocolError):
        FrameMac(s2c, SERVER_TO_CLIENT).open(bodies[0])  # reflected to its sender
    altered = bytearray(bodies[0])
    altered[0] ^= 1
    with pytest.raises(ChannelProtocolError):
        FrameMac(c2s, CLIENT_TO_SERVER).open(bytes(altered))


@FUZZ
@given(st.binary(max_size=100))
def test_fuzzed_frame_bodies_fail_the_mac_check_cleanly(body: bytes) -> None:
    """A forged body of any shape raises ChannelProtocolError, never anything else."""
    mac = FrameMac(b"k" * 32, CLIENT_TO_SERVER)
    with pytest.raises(ChannelProtocolError):
        mac.open(body)
    assert len(body) < TAG_BYTES or mac.seq == 0


@FUZZ
@given(st.binary(max_size=500) | st.text(max_size=200).map(str.encode))
def test_fuzzed_handshake_messages_raise_only_protocol_errors(data: bytes) -> None:
    """Any bytes as a handshake message: an object with a type, or ChannelProtocolError."""
    with contextlib.suppress(ChannelProtocolError):
        assert isinstance(decode_control(data)["type"], str)
    with pytest.raises(ChannelProtocolError):
        decode_control(b"[" * 100000)


@FUZZ
@given(st.text(max_size=40))
def test_fuzzed_endpoints_raise_only_invalid_argument(text: str) -> None:
    """Any string as an endpoint: a host and port in range, or ChannelInvalidArgument."""
    with contextlib.suppress(ChannelInvalidArgument):
        host, port = parse_endpoint(text)
        assert host and 1 <= port <= 65535


class _Info:
    def __init__(self, name: str, endpoints: dict[str, str]) -> None:
        self.name, self.endpoints = name, endpoints


def test_endpoints_in_skips_bad_members_and_self() -> None:
    """Discovery returns well-formed endpoints of other members and skips malformed ones."""
    view = [
        _Info("a", {"audit": "127.0.0.1:7000", "jlog": "127.0.0.1:7001"}),
        _Info("b", {"audit": "not an endpoint"}),
        _Info("c", {"jlog": "[::1]:7002"}),
        _Info("me", {"audit": "127.0.0.1:7003"}),
    ]
    assert endpoints_in(view, "audit", exclude="me") == {"a": "127.0.0.1:7000"}
    assert endpoints_in(view, "jlog") == {"a": "127.0.0.1:7001", "c": "[::1]:7002"}
