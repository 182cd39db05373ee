"""One authenticated connection: handshake, then payloads with per-frame integrity.

Thread safety: :meth:`Channel.send` may be called from several threads
(it serialises writers and their sequence numbers); :meth:`Channel.recv`
belongs to one thread. :meth:`Channel.shutdown` may be called from any
thread to wake a blocked reader.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable

from mhafail.errors import (
    ChannelAuthFailed,
    ChannelClosed,
    ChannelError,
    ChannelInvalidArgument,
    ChannelProtocolError,
)

from ._endpoints import parse_endpoint
from ._frames import (
    CHANNEL_VERSION,
    CLIENT_TO_SERVER,
    DEFAULT_MAX_FRAME,
    PRE_AUTH_FRAME,
    SERVER_TO_CLIENT,
    FrameMac,
    FrameReader,
    client_proof,
    decode_control,
    derive_keys,
    encode_control,
    frame_header,
    is_nonce,
    new_nonce,
    proof_matches,
    server_proof,
)
from ._security import ChannelSecurity

_RECV_CHUNK = 262144


class Channel:
    """A framed, authenticated connection over a plain or TLS socket.

    Made by :func:`connect` (client side) or by a
    :class:`~mhafail.channel.Listener` (server side); payloads are
    opaque non-empty bytes to the channel.

    Attributes:
        peer: ``host:port`` of the other side, for messages.
        service: the service name both sides agreed on.
        auth: how the peer was authenticated: ``hmac``, ``tls`` or ``none``.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        peer: str,
        service: str,
        max_frame: int = DEFAULT_MAX_FRAME,
        idle_timeout: float | None = None,
    ) -> None:
        self.sock = sock
        self.peer = peer
        self.service = service
        self.auth = "none"
        self.max_frame = max_frame
        self.idle_timeout = idle_timeout
        self._reader = FrameReader(PRE_AUTH_FRAME)
        self._pending: list[bytes] = []
        self._raw: list[bytes] = []
        self._send_mac = FrameMac(None, b"")
        self._recv_mac = FrameMac(None, b"")
        self._send_lock = threading.Lock()
        self._closed = False
        self._ready = False
        self._last_recv = time.monotonic()

    # --- payloads --------------------------------------------------------------------

    def send(self, payload: bytes, timeout: float) -> None:
        """Send one payload as one frame; blocks at most about ``timeout`` seconds.

        Raises:
            ChannelClosed: the connection broke or the peer did not take the data in time.
            ChannelInvalidArgument: an empty payload, or one over the frame limit.
        """
        if not payload:
            raise ChannelInvalidArgument("a channel payload cannot be empty")
        with self._send_lock:
            tag = self._send_mac.seal(payload)
            length = len(payload) + len(tag)
            limit = self.max_frame if self._ready else PRE_AUTH_FRAME
            if length > limit:
                self._send_mac.seq -= 1  # nothing went out
                raise ChannelInvalidArgument(
                    f"a {length}-byte frame exceeds the {limit}-byte frame limit"
                )
            self._send_parts([frame_header(length), payload, tag], timeout)

    def _send_parts(self, parts: list[bytes], timeout: float) -> None:
        try:
            self.sock.settimeout(timeout)
            if isinstance(self.sock, ssl.SSLSocket) or len(parts[1]) < 65536:
                self.sock.sendall(b"".join(parts))
                return
            # Large payloads go out without being copied into one buffer.
            views = [memoryview(p) for p in parts if p]
            while views:
                sent = self.sock.sendmsg(views)
                while views and sent >= len(views[0]):
                    sent -= len(views[0])
                    views.pop(0)
                if sent:
                    views[0] = views[0][sent:]
        except (OSError, ValueError) as exc:
            raise ChannelClosed(f"{self.peer}: send failed: {exc}") from None

    def recv(self, timeout: float) -> list[bytes]:
        """Return the payloads that arrive within ``timeout`` seconds (maybe none).

        Returns at once with what is already buffered.

        Raises:
            ChannelClosed: end of stream, a socket error, or nothing received
                for longer than the idle timeout.
            ChannelProtocolError: a malformed, oversized, forged, replayed or
                reordered frame; close the channel.
        """
        if self._pending:
            payloads, self._pending = self._pending, []
            return payloads
        if self._raw:
            bodies, self._raw = self._raw, []
            return self._open(bodies)
        chunk = _RECV_CHUNK if self._ready else PRE_AUTH_FRAME
        if self._ready and self.idle_timeout is not None:
            # Wake in time to enforce the idle timeout, however long the caller waits.
            idle_left = self.idle_timeout - (time.monotonic() - self._last_recv)
            timeout = max(0.0, min(timeout, idle_left + 0.01))
        try:
            self.sock.settimeout(timeout)
            data = self.sock.recv(chunk)
        except (TimeoutError, BlockingIOError, ssl.SSLWantReadError):
            self._check_idle()
            return []
        except (OSError, ValueError) as exc:
            raise ChannelClosed(f"{self.peer}: receive failed: {exc}") from None
        if not data:
            raise ChannelClosed(f"{self.peer}: connection closed by peer")
        bodies = self._reader.feed(data)
        if not bodies:
            self._check_idle()  # a peer trickling bytes is as idle as a silent one
            return []
        self._last_recv = time.monotonic()
        return self._open(bodies)

    def _open(self, bodies: list[bytes]) -> list[bytes]:
        if not self._ready:
            # Frames after a handshake message belong to the next stage (its keys).
            self._raw = bodies[1:]
            return [self._recv_mac.open(bodies[0])]
        return [self._recv_mac.open(body) for body in bodies]

    def _check_idle(self) -> None:
        idle = time.monotonic() - self._last_recv
        if self.idle_timeout is not None and self._ready and idle > self.idle_timeout:
            raise ChannelClosed(f"{self.peer}: nothing received for {idle:.1f} s; closing")

    def recv_one(self, timeout: float) -> bytes:
        """Wait for the next payload.

        Raises:
            ChannelClosed: nothing came within ``timeout``, or as :meth:`recv`.
            ChannelProtocolError: as :meth:`recv`.
        """
        deadline = time.monotonic() + timeout
        while True:
            payloads = self.recv(max(0.0, deadline - time.monotonic()))
            if payloads:
                first, rest = payloads[0], payloads[1:]
                self._pending = rest + self._pending
                return first
            if time.monotonic() >= deadline:
                raise ChannelClosed(f"{self.peer}: nothing received within {timeout:g} s")

    def has_buffered(self) -> bool:
        """True when more data can be read without waiting (TLS or kernel buffers)."""
        if self._pending or self._raw:
            return True
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        try:
            self.sock.settimeout(0)
            self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, TimeoutError, ssl.SSLWantReadError):
            return False
        except (OSError, ValueError):
            return True  # the next recv reports the error
        return True

    def shutdown(self) -> None:
        """Wake a reader blocked on this channel (it gets :class:`ChannelClosed`)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the socket; idempotent."""
        if self._closed:
            return
        self._closed = True
        self.shutdown()
        with contextlib.suppress(OSError):
            self.sock.close()

    # --- handshake -------------------------------------------------------------------

    def _control(self, deadline: float) -> dict[str, object]:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ChannelClosed(f"{self.peer}: handshake not completed in time")
        try:
            payload = self.recv_one(left)
        except ChannelClosed as exc:
            raise ChannelClosed(f"{exc} (during the handshake)") from None
        return decode_control(payload)

    def _start_frames(self, secret: bytes | None, sn: str, cn: str, *, server: bool) -> None:
        mine: bytes | None = None
        theirs: bytes | None = None
        if secret is not None:
            c2s, s2c = derive_keys(secret, self.service, sn, cn)
            mine, theirs = (s2c, c2s) if server else (c2s, s2c)
        out_dir, in_dir = (
            (SERVER_TO_CLIENT, CLIENT_TO_SERVER) if server else (CLIENT_TO_SERVER, SERVER_TO_CLIENT)
        )
        self._send_mac = FrameMac(mine, out_dir)
        self._recv_mac = FrameMac(theirs, in_dir)
        self._reader.limit = self.max_frame
        self._ready = True
        self._last_recv = time.monotonic()

    def refuse(self, reason: str) -> None:
        """Send a handshake ``error`` (best effort) before closing."""
        with contextlib.suppress(ChannelError):
            self.send(encode_control({"type": "error", "reason": reason[:500]}), 1.0)

    def serve_handshake(self, security: ChannelSecurity, timeout: float) -> None:
        """Server side: authenticate the client; on success payloads may flow.

        Raises:
            ChannelAuthFailed: wrong or missing proof (the client was told).
            ChannelProtocolError: the client spoke something else.
            ChannelClosed: the client went away or took longer than ``timeout``.
        """
        deadline = time.monotonic() + timeout
        sn = new_nonce()
        auth = security.mode
        if auth == "tls" and not _has_peer_cert(self.sock):
            auth = "none"
        hello = {
            "type": "hello",
            "channel": CHANNEL_VERSION,
            "service": self.service,
            "auth": auth,
            "nonce": sn,
        }
        self.send(encode_control(hello), max(0.05, deadline - time.monotonic()))
        msg = self._control(deadline)
        try:
            if msg.get("type") != "auth":
                raise ChannelProtocolError(f"expected an auth message, got {msg.get('type')!r}")
            if msg.get("channel") != CHANNEL_VERSION:
                raise ChannelProtocolError(
                    f"channel version {msg.get('channel')!r} not supported (want {CHANNEL_VERSION})"
                )
            if msg.get("service") != self.service:
                raise ChannelProtocolError(
                    f"this port serves {self.service!r}, not {msg.get('service')!r}"
                )
            cn = msg.get("nonce")
            if not is_nonce(cn):
                raise ChannelProtocolError("auth message lacks a valid client nonce")
            assert isinstance(cn, str)
            ok: dict[str, object] = {"type": "ok"}
            if security.secret is not None:
                expected = client_proof(security.secret, self.service, sn, cn)
                if not proof_matches(expected, msg.get("mac")):
                    raise ChannelAuthFailed(
                        "authentication failed: wrong or missing shared secret"
                        if "mac" in msg
                        else "authentication required: this port needs the shared secret"
                    )
                ok["mac"] = server_proof(security.secret, self.service, sn, cn)
        except (ChannelAuthFailed, ChannelProtocolError) as exc:
            self.refuse(str(exc))
            raise
        self.send(encode_control(ok), max(0.05, deadline - time.monotonic()))
        self.auth = auth
        self._start_frames(security.secret, sn, cn, server=True)

    def client_handshake(self, security: ChannelSecurity, timeout: float) -> None:
        """Client side: prove ourselves and check the server's proof.

        Raises:
            ChannelAuthFailed: the server refused us, cannot prove the
                secret, or does not authenticate while we have a secret.
            ChannelProtocolError: the server spoke something else.
            ChannelClosed: the server went away or took longer than ``timeout``.
        """
        deadline = time.monotonic() + timeout
        hello = self._control(deadline)
        if hello.get("type") == "error":
            if hello.get("busy") is True:  # crowded, not a refusal of us: try again later
                raise ChannelClosed(f"{self.peer} is busy: {hello.get('reason')}")
            raise ChannelAuthFailed(f"{self.peer} refused: {hello.get('reason')}")
        if hello.get("type") != "hello" or hello.get("channel") != CHANNEL_VERSION:
            raise ChannelProtocolError(f"{self.peer} does not speak channel v{CHANNEL_VERSION}")
        if hello.get("service") != self.service:
            raise ChannelProtocolError(
                f"{self.peer} serves {hello.get('service')!r}, not {self.service!r}"
            )
        sn = hello.get("nonce")
        if not is_nonce(sn):
            raise ChannelProtocolError(f"{self.peer} sent no valid nonce")
        assert isinstance(sn, str)
        auth = hello.get("auth")
        secret = security.secret
        if secret is not None and auth != "hmac":
            raise ChannelAuthFailed(
                f"{self.peer} does not authenticate with the shared secret (auth {auth!r}), "
                "but one is configured: refusing to talk to it"
            )
        if secret is None and auth == "hmac":
            raise ChannelAuthFailed(
                f"{self.peer}: authentication required: it needs the shared secret and none "
                "is configured here"
            )
        cn = new_nonce()
        msg: dict[str, object] = {
            "type": "auth",
            "channel": CHANNEL_VERSION,
            "service": self.service,
            "nonce": cn,
        }
        if secret is not None:
            msg["mac"] = client_proof(secret, self.service, sn, cn)
        self.send(encode_control(msg), max(0.05, deadline - time.monotonic()))
        reply = self._control(deadline)
        if reply.get("type") == "error":
            raise ChannelAuthFailed(f"{self.peer}: {reply.get('reason')}")
        if reply.get("type") != "ok":
            raise ChannelProtocolError(f"{self.peer} answered {reply.get('type')!r}, not ok")
        if secret is not None and not proof_matches(
            server_proof(secret, self.service, sn, cn), reply.get("mac")
        ):
            raise ChannelAuthFailed(f"{self.peer} failed to prove it knows the shared secret")
        self.auth = "hmac" if secret is not None else str(auth)
        self._start_frames(secret, sn, cn, server=False)


def _has_peer_cert(sock: socket.socket) -> bool:
    return isinstance(sock, ssl.SSLSocket) and sock.getpeercert() is not None


def connect(
    endpoint: str,
    service: str,
    security: ChannelSecurity,
    *,
    timeout: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    idle_timeout: float | None = None,
    on_socket: Callable[[socket.socket], None] | None = None,
) -> Channel:
    """Connect to ``endpoint`` and complete the handshake for ``service``.

    Args:
        endpoint: ``host:port`` (``[v6]:port`` for IPv6).
        service: the service name the server must be serving.
        security: the secret and/or client TLS context.
        timeout: seconds for the TCP connection, TLS and the handshake each.
        max_frame: the largest frame body accepted from the server.
        idle_timeout: close when nothing is received for this long (None: never).
        on_socket: called with the connected socket before the handshake
            (tests use it; applications need not).

    Returns:
        The authenticated channel.

    Raises:
        ChannelInvalidArgument: a malformed endpoint, or no secret nor TLS
            towards a non-loopback host.
        ChannelClosed: the server cannot be reached or hung up.
        ChannelAuthFailed: the secrets do not match, or one side lacks one.
        ChannelProtocolError: the server spoke something else.
    """
    host, port = parse_endpoint(endpoint, what="endpoint")
    security.check_connect(service, host)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ChannelClosed(f"{endpoint}: cannot connect: {exc}") from None
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if security.ssl_context is not None:
            sock = security.ssl_context.wrap_socket(
                sock, server_hostname=security.server_hostname or host
            )
    except (OSError, ssl.SSLError) as exc:
        sock.close()
        raise ChannelClosed(f"{endpoint}: TLS handshake failed: {exc}") from None
    if on_socket is not None:
        on_socket(sock)
    channel = Channel(
        sock, peer=endpoint, service=service, max_frame=max_frame, idle_timeout=idle_timeout
    )
    try:
        channel.client_handshake(security, timeout)
    except BaseException:
        channel.close()
        raise
    return channel
