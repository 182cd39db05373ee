"""Listener: accept connections, authenticate them, hand each to a handler thread.

Concurrency: one accept thread, and one thread per connection, which runs
TLS and the channel handshake (both within ``handshake_timeout``) and then
the handler. At most ``max_connections`` connections are open at once,
counting those still in their handshake; more are closed at accept, so
idle or slow clients cannot pin threads or memory without bound.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from mhafail.errors import ChannelError, ChannelInvalidArgument

from ._channel import Channel
from ._endpoints import format_endpoint
from ._frames import DEFAULT_MAX_FRAME, PRE_AUTH_FRAME, encode_control, frame_header
from ._security import ChannelSecurity

logger = logging.getLogger(__name__)

_ACCEPT_POLL = 0.2


def _keepalive(sock: socket.socket) -> None:
    # A peer cut off by a partition never closes its connection: let TCP
    # notice within about two minutes so its thread and socket go away.
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 15)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)


def _positive(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ChannelInvalidArgument(f"{attr.name} must be a positive number, not {value!r}")


@attrs.define(kw_only=True, eq=False)
class Listener:
    """Serves one service's port: every connection is authenticated before its handler runs.

    Args:
        service: the service name (``"logs"``, ``"audit"``...); clients must name it.
        host: address to listen on.
        port: port (0: any free one; see :attr:`endpoint`).
        security: the secret and/or server TLS context (see
            :meth:`ChannelSecurity.check_listen` for what :meth:`start` refuses).
        handler: called on the connection's own thread with the
            authenticated channel; the listener closes the channel when it
            returns. It must return soon after :meth:`stop` (its channel is
            shut down, so reads raise ``ChannelClosed``).
        max_connections: connections open at once; more are closed at accept.
        handshake_timeout: seconds for TLS plus the channel handshake.
        idle_timeout: seconds without a frame after which a channel is
            closed (None: the handler decides).
        max_frame: largest frame body accepted once authenticated.
        name: thread name prefix.

    Thread safety: :meth:`start` and :meth:`stop` may be called from any thread.
    """

    service: str
    host: str = "127.0.0.1"
    port: int = 0
    security: ChannelSecurity = attrs.field(factory=ChannelSecurity)
    handler: Callable[[Channel], None]
    max_connections: int = attrs.field(default=64)
    handshake_timeout: float = attrs.field(default=5.0, validator=_positive)
    idle_timeout: float | None = 60.0
    max_frame: int = DEFAULT_MAX_FRAME
    name: str = "mhafail-channel"

    _sock: socket.socket | None = attrs.field(init=False, default=None)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _stopping: threading.Event = attrs.field(init=False, factory=threading.Event)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _conns: dict[socket.socket, threading.Thread] = attrs.field(init=False, factory=dict)
    _accepted: int = attrs.field(init=False, default=0)
    _refused: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if type(self.max_connections) is not int or self.max_connections < 1:
            raise ChannelInvalidArgument(
                f"max_connections must be a positive integer, not {self.max_connections!r}"
            )
        if type(self.max_frame) is not int or self.max_frame < PRE_AUTH_FRAME:
            raise ChannelInvalidArgument(f"max_frame must be an integer >= {PRE_AUTH_FRAME}")
        if self.idle_timeout is not None:
            _positive(self, attrs.fields(Listener).idle_timeout, self.idle_timeout)

    @property
    def endpoint(self) -> str:
        """``host:port`` the listener is bound to (after :meth:`start`).

        Raises:
            ChannelError: not started.
        """
        if self._sock is None:
            raise ChannelError(f"the {self.service} listener is not started")
        host, port = self._sock.getsockname()[:2]
        return format_endpoint(host, int(port))

    @property
    def open_connections(self) -> int:
        """Connections open now (handshakes included)."""
        with self._lock:
            return len(self._conns)

    @property
    def refused_connections(self) -> int:
        """Connections closed at accept because ``max_connections`` were open."""
        with self._lock:
            return self._refused

    def start(self) -> Listener:
        """Check the security settings, bind, and start accepting.

        Raises:
            ChannelInvalidArgument: peers would not be authenticated (see
                :meth:`ChannelSecurity.check_listen`).
            ChannelError: the address cannot be bound.
        """
        self.security.check_listen(self.service, self.host)
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family, backlog=64)
        except OSError as exc:
            raise ChannelError(f"cannot listen on {self.host}:{self.port}: {exc}") from None
        sock.settimeout(_ACCEPT_POLL)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"{self.name}-accept", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, shut every connection down and wait for their threads.

        Idempotent.
        """
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            conns = dict(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        end = time.monotonic() + timeout
        for thread in conns.values():
            thread.join(max(0.0, end - time.monotonic()))

    # --- internals ------------------------------------------------------------------

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                sock, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopping.is_set():
                    return
                logger.warning("%s: accept failed: %s", self.service, exc)
                time.sleep(_ACCEPT_POLL)
                continue
            peer = format_endpoint(str(addr[0]), int(addr[1]))
            thread = threading.Thread(
                target=self._serve, args=(sock, peer), name=f"{self.name}-{peer}", daemon=True
            )
            with self._lock:
                crowded = len(self._conns) >= self.max_connections
                if crowded:
                    self._refused += 1
                elif not self._stopping.is_set():
                    self._conns[sock] = thread
                    self._accepted += 1
            if crowded or self._stopping.is_set():
                if crowded:
                    logger.warning(
                        "%s: refusing %s: %d connections open", self.service, peer,
                        self.max_connections,
                    )  # fmt: skip
                    self._refuse_busy(sock)
                with contextlib.suppress(OSError):
                    sock.close()
                continue
            thread.start()

    def _refuse_busy(self, sock: socket.socket) -> None:
        """Tell a client turned away at accept why, in place of the hello (never blocks).

        Plain connections only: a TLS client expects a TLS handshake first,
        and running one here would let crowds pin the acceptor.
        """
        if self.security.ssl_context is not None:
            return
        reason = f"too many connections ({self.max_connections} open); try again later"
        payload = encode_control({"type": "error", "reason": reason, "busy": True})
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(frame_header(len(payload)) + payload)

    def _serve(self, raw: socket.socket, peer: str) -> None:
        sock = raw
        channel: Channel | None = None
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keepalive(raw)
            start = time.monotonic()
            if self.security.ssl_context is not None:
                raw.settimeout(self.handshake_timeout)
                try:
                    sock = self.security.ssl_context.wrap_socket(raw, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    logger.warning("%s: TLS handshake with %s failed: %s", self.service, peer, exc)
                    return
                with self._lock:
                    if raw in self._conns:
                        self._conns[sock] = self._conns.pop(raw)
            channel = Channel(
                sock,
                peer=peer,
                service=self.service,
                max_frame=self.max_frame,
                idle_timeout=self.idle_timeout,
            )
            left = self.handshake_timeout - (time.monotonic() - start)
            try:
                channel.serve_handshake(self.security, max(0.05, left))
            except ChannelError as exc:
                logger.warning("%s: refused %s: %s", self.service, peer, exc)
                return
            self.handler(channel)
        except ChannelError as exc:
            logger.info("%s: connection from %s ended: %s", self.service, peer, exc)
        except Exception:  # a bad peer must never take the listener down
            logger.exception("%s: connection from %s failed", self.service, peer)
        finally:
            if channel is not None:
                channel.close()
            with contextlib.suppress(OSError):
                sock.close()
            with self._lock:
                self._conns.pop(sock, None)
                self._conns.pop(raw, None)
