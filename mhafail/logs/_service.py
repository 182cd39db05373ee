"""JlogService: a node offers its jlogs to managers over TCP.

Concurrency: one acceptor thread, and one thread per connection (a
:class:`~mhafail.logs._session.Session`). At most one stream per
(subscriber, log) is live: a manager that reconnects (after a crash or a
network cut the node has not noticed yet) supersedes its old stream, which
stops before the new one reads, so two readers never move one checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from mhafail.channel import Channel, ChannelSecurity, Listener
from mhafail.coordination import check_name
from mhafail.errors import (
    ChannelError,
    ChannelInvalidArgument,
    InvalidArgument,
    JlogError,
    JlogSubscriberExists,
    LogsError,
    LogsInvalidArgument,
)
from mhafail.jlog import Jlog, Whence

from . import _auth
from ._client import SERVICE
from ._protocol import DEFAULT_MAX_FRAME, MIN_MAX_FRAME
from ._session import Session
from ._status import SubscriberStatus, log_status
from ._wire import Connection

logger = logging.getLogger(__name__)


def check_log_name(name: str) -> str:
    """Return ``name`` if it is a valid log name (it becomes a path segment on managers).

    Raises:
        LogsInvalidArgument: it is empty, too long or has characters outside
            ``A-Z a-z 0-9 . _ -``.
    """
    try:
        return check_name("log name", name)
    except InvalidArgument as exc:
        raise LogsInvalidArgument(str(exc)) from None


def ensure_log(path: str | os.PathLike[str], managers: Sequence[str]) -> Jlog:
    """Open the jlog at ``path``, creating it if missing, with a subscriber per manager.

    Subscribers are added at the oldest data, so a manager added later still
    gets everything the node holds; existing subscribers are left alone.

    Returns:
        The jlog.

    Raises:
        JlogError: the jlog cannot be created or opened.
    """
    path = Path(path)
    if path.exists():
        jlog = Jlog.open(path)
    else:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JlogError(f"cannot create {path.parent}: {exc.strerror}") from None
        jlog = Jlog.create(path)
    for manager in managers:
        with contextlib.suppress(JlogSubscriberExists):
            jlog.add_subscriber(manager, Whence.BEGIN)
    return jlog


def _paths(value: Mapping[str, str | os.PathLike[str]]) -> dict[str, Path]:
    return {name: Path(path) for name, path in value.items()}


@attrs.define(kw_only=True, eq=False)
class JlogService:
    """Serves a node's jlogs to log managers (see ``docs/logs.md`` for the protocol).

    Args:
        node: this node's name (as in its member info).
        logs: log name -> jlog directory. Missing jlogs are created by
            :meth:`start`, each with a subscriber per name in ``managers``.
        managers: subscriber names created together with each log, so that
            nothing is purged before a manager first reads.
        host: address to listen on.
        port: port to listen on (0: any free port; see :attr:`endpoint`).
        secret: shared secret; every client must prove it in the channel
            handshake and every frame carries a MAC (see ``docs/channel.md``).
            Never shown in ``repr``.
        ssl_context: server-side TLS context; combines with ``secret``.
            Without a secret it must require client certificates (mutual
            TLS), or :meth:`start` refuses.
        allow_unauthenticated: serve without secret or mutual TLS; accepted
            on a loopback address only (any local user may then read every
            log and move checkpoints), and logged as a warning.
        max_frame: largest frame sent or accepted (bytes).
        batch_records: records read from the jlog per batch.
        window_records: unacknowledged records allowed in flight per stream.
        window_bytes: unacknowledged bytes allowed in flight per stream.
        heartbeat: seconds of silence before sending a heartbeat; a peer
            silent for three heartbeats (its or ours, the longer) is dropped.
        poll_interval: seconds between jlog polls when a stream is idle.
        busy_poll_interval: seconds between jlog polls while a stream is
            busy (it sent records within the last second): what bounds the
            wait of a record written just after a poll that found nothing.
        handshake_timeout: seconds a client has for the channel handshake,
            and again for its OPEN.
        max_connections: connections open at once (handshakes included);
            more are closed at accept.

    Thread safety: :meth:`start`, :meth:`stop` and :meth:`decommission` may
    be called from any thread; sessions run on their own threads.
    """

    node: str
    logs: Mapping[str, Path] = attrs.field(converter=_paths)
    managers: Sequence[str] = attrs.field(default=(), converter=tuple)
    host: str = "127.0.0.1"
    port: int = 0
    secret: bytes | None = attrs.field(default=None, converter=_auth.check_secret, repr=False)
    ssl_context: ssl.SSLContext | None = None
    allow_unauthenticated: bool = False
    max_frame: int = DEFAULT_MAX_FRAME
    batch_records: int = 2048
    window_records: int = 32768
    window_bytes: int = 16 * 1024 * 1024
    heartbeat: float = 1.0
    poll_interval: float = 0.05
    busy_poll_interval: float = 0.005
    handshake_timeout: float = 5.0
    max_connections: int = 128

    _listener: Listener | None = attrs.field(init=False, default=None)
    _stopping: threading.Event = attrs.field(init=False, factory=threading.Event)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _sessions: set[Session] = attrs.field(init=False, factory=set)
    _streams: dict[tuple[str, str], Session] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        check_name("node name", self.node)
        for name in self.logs:
            check_log_name(name)
        if self.max_frame < MIN_MAX_FRAME:
            raise LogsInvalidArgument(f"max_frame must be at least {MIN_MAX_FRAME} bytes")
        if (
            self.heartbeat <= 0
            or self.poll_interval <= 0
            or self.busy_poll_interval <= 0
            or self.batch_records <= 0
        ):
            raise LogsInvalidArgument(
                "heartbeat, poll_interval, busy_poll_interval and batch_records must be > 0"
            )

    @property
    def endpoint(self) -> str:
        """``host:port`` the service listens on (after :meth:`start`).

        Raises:
            LogsError: the service is not started.
        """
        if self._listener is None:
            raise LogsError("the jlog service is not started")
        return self._listener.endpoint

    def start(self) -> JlogService:
        """Create missing logs and subscribers, listen, and start accepting.

        Returns:
            The service.

        Raises:
            LogsInvalidArgument: peers would not be authenticated: no secret
                and no mutual TLS, unless ``allow_unauthenticated`` on loopback.
            LogsError: the address cannot be bound.
            JlogError: a log cannot be created or opened.
        """
        listener = Listener(
            service=SERVICE,
            host=self.host,
            port=self.port,
            security=ChannelSecurity(
                secret=self.secret,
                ssl_context=self.ssl_context,
                allow_unauthenticated=self.allow_unauthenticated,
            ),
            handler=self._serve,
            max_connections=self.max_connections,
            handshake_timeout=self.handshake_timeout,
            max_frame=self.max_frame,
            name=f"mhafail-logs-{self.node}",
        )
        try:
            listener.security.check_listen(SERVICE, self.host)
        except ChannelInvalidArgument as exc:
            raise LogsInvalidArgument(str(exc)) from None
        for path in self.logs.values():
            ensure_log(path, self.managers)
        try:
            self._listener = listener.start()
        except ChannelError as exc:
            raise LogsError(str(exc)) from None
        logger.info("%s: serving logs %s on %s", self.node, sorted(self.logs), self.endpoint)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, end every session and wait for their threads."""
        self._stopping.set()
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.stop.set()
        if self._listener is not None:
            self._listener.stop(timeout)

    def __enter__(self) -> JlogService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> list[SubscriberStatus]:
        """Every subscriber's backlog in every log of this node.

        Raises:
            JlogError: a log cannot be read.
        """
        out = []
        for name, path in sorted(self.logs.items()):
            out.extend(log_status(self.node, name, Jlog.open(path)))
        return out

    def decommission(self, manager: str) -> dict[str, list[int]]:
        """Remove ``manager``'s subscriber from every log, releasing what it held.

        Its live streams end first. Drop the name from ``managers`` in the
        node's configuration too, or the next :meth:`start` adds it back.

        Returns:
            Per log, the segment ids deleted as a result.
        """
        self.managers = tuple(m for m in self.managers if m != manager)
        with self._lock:
            doomed = [s for k, s in self._streams.items() if k[0] == manager]
        for session in doomed:
            session.stop.set()
            session.done.wait(5)
        freed: dict[str, list[int]] = {}
        for name, path in sorted(self.logs.items()):
            jlog = Jlog.open(path)
            if any(sub.name == manager for sub in jlog.subscribers()):
                freed[name] = jlog.remove_subscriber(manager)
        logger.info("%s: decommissioned manager %s: %s", self.node, manager, freed)
        return freed

    # --- internals ------------------------------------------------------------------

    def _serve(self, channel: Channel) -> None:
        session = Session(self, Connection(channel))
        with self._lock:
            self._sessions.add(session)
        session.run()

    def _claim(self, session: Session) -> None:
        """Make ``session`` the only live stream for its key, stopping an older one."""
        assert session.key is not None
        with self._lock:
            old = self._streams.get(session.key)
            self._streams[session.key] = session
        if old is not None and old is not session:
            logger.info("%s: stream %s superseded by %s", self.node, session.key, session.conn.peer)
            old.stop.set()
            old.done.wait(10)

    def _session_ended(self, session: Session) -> None:
        with self._lock:
            self._sessions.discard(session)
            if session.key is not None and self._streams.get(session.key) is session:
                del self._streams[session.key]
