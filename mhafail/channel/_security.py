"""Who may talk on a channel: the shared secret, TLS, and the no-secret loopback opt-in.

Pure policy plus the secret file reader; no sockets are opened here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import ssl
import stat
import threading

import attrs

from mhafail.errors import ChannelInvalidArgument

logger = logging.getLogger(__name__)

#: Shortest shared secret accepted (bytes): shorter ones are too easy to guess.
MIN_SECRET = 16

_warned: set[str] = set()
_warned_lock = threading.Lock()


def check_secret(secret: bytes | None) -> bytes | None:
    """Return ``secret`` if it is usable (None stays None).

    Raises:
        ChannelInvalidArgument: not bytes, or shorter than :data:`MIN_SECRET` bytes.
    """
    if secret is None:
        return None
    if not isinstance(secret, bytes):
        raise ChannelInvalidArgument(
            f"the shared secret must be bytes, not {type(secret).__name__}"
        )
    if len(secret) < MIN_SECRET:
        raise ChannelInvalidArgument(
            f"the shared secret must be at least {MIN_SECRET} bytes, not {len(secret)}"
        )
    return secret


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """Read a shared secret from a file (surrounding whitespace stripped).

    Like ssh with a private key, the file must belong to this user (or root)
    and be neither readable nor writable by group or others (``chmod 600``):
    a secret any local user can read authenticates nobody.

    Raises:
        ChannelInvalidArgument: the file cannot be read, its permissions or
            owner are unsafe, or the secret is too short.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ChannelInvalidArgument(f"cannot read secret file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChannelInvalidArgument(f"secret file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ChannelInvalidArgument(
                f"secret file {path} has mode {mode:04o}: it must not be accessible by group "
                f"or others (run: chmod 600 {path})"
            )
        if st.st_uid not in (os.geteuid(), 0):
            raise ChannelInvalidArgument(
                f"secret file {path} belongs to uid {st.st_uid}, not to this user or root"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            raw = f.read(65536).strip()
    except OSError as exc:
        raise ChannelInvalidArgument(f"cannot read secret file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    checked = check_secret(raw)
    assert checked is not None
    return checked


def is_loopback(host: str) -> bool:
    """True for a loopback address (127.0.0.0/8, ::1) or the name ``localhost``."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def requires_client_cert(context: ssl.SSLContext | None) -> bool:
    """True when ``context`` (server side) makes every client present a verified certificate."""
    return context is not None and context.verify_mode == ssl.CERT_REQUIRED


def warn_once(key: str, message: str) -> None:
    """Log ``message`` as a warning the first time ``key`` is seen in this process."""
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    logger.warning("%s", message)


@attrs.frozen
class ChannelSecurity:
    """How one side of a channel authenticates its peer.

    Attributes:
        secret: the shared secret (at least 16 bytes); both sides prove
            they know it and every frame carries a MAC keyed from it. Never
            shown in ``repr``.
        ssl_context: a TLS context: server side on a listener, client side
            on :func:`~mhafail.channel.connect`. On a listener without a
            secret it must require client certificates (mutual TLS).
        server_hostname: the name a client checks the server's certificate
            against (default: the endpoint's host).
        allow_unauthenticated: listen or connect with neither secret nor
            TLS. Only accepted on loopback addresses; logs a warning once.
    """

    secret: bytes | None = attrs.field(default=None, converter=check_secret, repr=False)
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    allow_unauthenticated: bool = False

    @property
    def mode(self) -> str:
        """``"hmac"`` with a secret, else ``"tls"`` with TLS, else ``"none"``."""
        if self.secret is not None:
            return "hmac"
        return "tls" if self.ssl_context is not None else "none"

    def check_listen(self, service: str, host: str) -> None:
        """Refuse to serve ``host`` unless peers will be authenticated.

        Raises:
            ChannelInvalidArgument: no secret and no mutual TLS, except on
                loopback with ``allow_unauthenticated``.
        """
        if self.secret is not None or requires_client_cert(self.ssl_context):
            return
        if self.ssl_context is not None and not self.allow_unauthenticated:
            raise ChannelInvalidArgument(
                f"{service}: a TLS context that does not require client certificates "
                "authenticates nobody; set a shared secret or make the context require "
                "client certificates (verify_mode CERT_REQUIRED)"
            )
        if not is_loopback(host):
            raise ChannelInvalidArgument(
                f"{service}: refusing to listen on {host} without a shared secret or mutual "
                "TLS (unauthenticated listening is for loopback addresses only)"
            )
        if not self.allow_unauthenticated:
            raise ChannelInvalidArgument(
                f"{service}: no shared secret configured; to serve {host} unauthenticated "
                "(loopback only: any local user may connect) pass allow_unauthenticated=True"
            )
        warn_once(
            f"listen-{service}",
            f"{service}: serving {host} WITHOUT authentication: any local user may connect; "
            "configure a shared secret",
        )

    def check_connect(self, service: str, host: str) -> None:
        """Refuse to send to ``host`` unless the peer will be authenticated.

        Raises:
            ChannelInvalidArgument: no secret and no TLS towards a
                non-loopback host.
        """
        if self.secret is not None or self.ssl_context is not None:
            return
        if not is_loopback(host):
            raise ChannelInvalidArgument(
                f"{service}: refusing to connect to {host} without a shared secret or TLS "
                "(the peer could be anyone)"
            )
        warn_once(
            f"connect-{service}",
            f"{service}: connecting to {host} without a shared secret: the peer is not "
            "authenticated",
        )
