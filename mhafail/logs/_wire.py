"""Log frames over an authenticated :class:`~mhafail.channel.Channel`, in logs' own errors.

Thread safety: :meth:`Connection.send` may be called from several threads
(the channel serialises writers); :meth:`Connection.recv` belongs to one thread.
"""

from __future__ import annotations

import contextlib
import time

from mhafail.channel import Channel
from mhafail.errors import (
    ChannelClosed,
    ChannelError,
    ChannelInvalidArgument,
    LogsError,
    ProtocolError,
    StreamRefused,
)

from ._protocol import Frame, FrameType, decode_frame, decode_json, encode_json


class PeerClosed(LogsError):
    """The peer closed the connection, reset it, or stopped answering."""


class Connection:
    """Log frames over one channel.

    Args:
        channel: an authenticated channel (service ``"logs"``).
    """

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.peer = channel.peer
        self._pending: list[Frame] = []

    def send(self, payload: bytes, timeout: float) -> None:
        """Send one frame's payload; blocks at most about ``timeout`` seconds.

        Raises:
            PeerClosed: the connection broke or the peer did not take the data in time.
            ProtocolError: the frame is over the frame limit.
        """
        try:
            self.channel.send(payload, timeout)
        except ChannelInvalidArgument as exc:
            raise ProtocolError(str(exc)) from None
        except ChannelError as exc:
            raise PeerClosed(str(exc)) from None

    def send_error(self, reason: str, timeout: float = 1.0) -> None:
        """Send an ERROR frame, ignoring a peer that is already gone."""
        with contextlib.suppress(LogsError):
            self.send(encode_json(FrameType.ERROR, {"reason": reason}), timeout)

    def recv(self, timeout: float) -> list[Frame]:
        """Return the frames that arrive within ``timeout`` seconds (maybe none).

        Returns at once with what is already buffered.

        Raises:
            PeerClosed: end of stream, a socket error or an idle timeout.
            ProtocolError: the peer sent a malformed, oversized, forged or
                replayed frame.
        """
        if self._pending:
            frames, self._pending = self._pending, []
            return frames
        try:
            payloads = self.channel.recv(timeout)
        except ChannelClosed as exc:
            raise PeerClosed(str(exc)) from None
        except ChannelError as exc:
            raise ProtocolError(str(exc)) from None
        return [decode_frame(p) for p in payloads]

    def has_buffered(self) -> bool:
        """True when more data can be read without waiting (TLS or kernel buffers)."""
        return bool(self._pending) or self.channel.has_buffered()

    @staticmethod
    def reason(frame: Frame) -> str:
        """The reason in an ERROR frame (its raw text if it is not the JSON expected)."""
        try:
            return str(decode_json(frame).get("reason", "no reason given"))
        except ProtocolError:
            return frame.body[:200].decode("utf-8", "replace")

    def expect(self, ftype: FrameType, timeout: float) -> dict[str, object]:
        """Wait for one control frame of type ``ftype`` and return its JSON.

        Raises:
            PeerClosed: nothing came within ``timeout`` or the peer closed.
            StreamRefused: the peer sent ERROR instead.
            ProtocolError: another frame type came, or bad JSON.
        """
        deadline = time.monotonic() + timeout
        frames = self.recv(timeout)
        while not frames:
            left = deadline - time.monotonic()
            if left <= 0:
                raise PeerClosed(f"{self.peer}: no {ftype.name} within {timeout:g} s")
            frames = self.recv(left)
        frame, rest = frames[0], frames[1:]
        self._pending = rest + self._pending
        if frame.type is FrameType.ERROR:
            raise StreamRefused(self.reason(frame))
        # The type first: an ACK where OPEN belongs is "expected OPEN", not bad JSON.
        if frame.type is not ftype:
            raise ProtocolError(f"expected {ftype.name}, got {frame.type.name}")
        return decode_json(frame)

    def close(self) -> None:
        """Close the channel; idempotent."""
        self.channel.close()
