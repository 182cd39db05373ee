"""Console: the web UI and JSON API beside a manager, for one cluster.

Wiring::

    coordinator = Coordinator(hosts=..., cluster="mta",
                              credentials=Credentials.from_file("operator.auth")).start()
    console = Console(coordinator=coordinator, name="console-1",
                      users=Users.from_credentials(coordinator.credentials)).start()
    print(console.url)   # http://127.0.0.1:8480/
    ...
    console.stop()       # bounded: returns within a few seconds

Run one beside each manager: they share nothing but ZooKeeper, so any of
them shows the whole cluster, and a dead one takes nothing with it but its
browser sessions.
"""

from __future__ import annotations

import logging
import ssl
import threading
from typing import Any

import attrs

from mhafail.audit import QueryEngine
from mhafail.commands import CommandClient
from mhafail.console._api import Api
from mhafail.console._auth import Sessions, Users
from mhafail.console._cluster import ClusterData, VipVia, default_vip_via
from mhafail.console._http import App, is_loopback, make_server
from mhafail.console._sampler import Sampler
from mhafail.coordination import Coordinator, check_name
from mhafail.errors import ConsoleError, ConsoleInvalidArgument, InvalidArgument

logger = logging.getLogger(__name__)

DEFAULT_PORT = 8480


@attrs.define(kw_only=True, eq=False)
class Console:
    """The cluster console: an HTTP server with the JSON API and the pages.

    Args:
        coordinator: a started coordinator, with operator credentials (or
            open): the console reads everything and sends commands.
        users: who may log in, with which role.
        name: this console's name; it registers as a command manager under
            it, so it must differ from every other live manager's.
        host: address to listen on (default loopback).
        port: port (0: a free one; see :attr:`url`).
        audit: a CIDR query engine over the manager's audit snapshots.
        sample_period: seconds between status and log-lag samples.
        vip_via: how VIP actions are carried out (default: through commands
            when nodes may do it, see :class:`VipVia`).
        tls_cert: PEM certificate chain for HTTPS.
        tls_key: its private key (mode 0600).
        allow_plain_http: serve plain HTTP on a non-loopback address
            (passwords and session cookies then cross the network in clear
            text: only behind a TLS-terminating proxy).

    Raises:
        ConsoleInvalidArgument: bad name, no users, a non-loopback address
            without TLS (and without ``allow_plain_http``), bad TLS files.
    """

    coordinator: Coordinator
    users: Users
    name: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    audit: QueryEngine | None = None
    sample_period: float = 15.0
    vip_via: VipVia | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    allow_plain_http: bool = False

    sessions: Sessions = attrs.field(init=False, factory=Sessions)
    _server: Any = attrs.field(init=False, default=None)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _client: CommandClient | None = attrs.field(init=False, default=None)
    _sampler: Sampler | None = attrs.field(init=False, default=None)
    _scheme: str = attrs.field(init=False, default="http")

    def __attrs_post_init__(self) -> None:
        try:
            check_name("console name", self.name)
        except InvalidArgument as exc:
            raise ConsoleInvalidArgument(str(exc)) from None
        if not self.users.operators and not self.users.readers:
            raise ConsoleInvalidArgument(
                "the console has no users: run it with operator credentials (--zk-auth) "
                "or give a users file (--users)"
            )
        if not 0 <= self.port < 65536:
            raise ConsoleInvalidArgument(f"invalid port {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConsoleInvalidArgument("HTTPS needs both a certificate and its key")
        if not is_loopback(self.host) and self.tls_cert is None and not self.allow_plain_http:
            raise ConsoleInvalidArgument(
                f"refusing to serve plain HTTP on {self.host}: passwords and session cookies "
                "would cross the network in clear text; give a certificate and key (HTTPS), "
                "or listen on 127.0.0.1 behind a TLS proxy"
            )
        if not 0.2 <= self.sample_period <= 3600:
            raise ConsoleInvalidArgument("sample_period must be within [0.2, 3600] seconds")

    @property
    def url(self) -> str:
        """The console's base URL (after :meth:`start`)."""
        if self._server is None:
            raise ConsoleError("the console is not started")
        host, port = self._server.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"{self._scheme}://{shown}:{port}/"

    def start(self) -> Console:
        """Register as a command manager, start sampling and serving; returns self.

        Raises:
            ConsoleError: the address cannot be bound, or another live
                manager holds this name.
        """
        context = None
        if self.tls_cert is not None and self.tls_key is not None:
            from mhafail.coordination._auth import read_private_file

            try:
                read_private_file(self.tls_key, "console TLS key file")
            except InvalidArgument as exc:
                raise ConsoleInvalidArgument(str(exc)) from None
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            try:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            except (OSError, ssl.SSLError) as exc:
                raise ConsoleInvalidArgument(f"console TLS files: {exc}") from None
            self._scheme = "https"
        self._client = CommandClient(coordinator=self.coordinator, name=self.name).start()
        self._sampler = Sampler(
            client=self._client, period=self.sample_period, wait=min(3.0, self.sample_period)
        ).start()
        data = ClusterData(
            coordinator=self.coordinator,
            client=self._client,
            sampler=self._sampler,
            name=self.name,
            audit=self.audit,
            vip_via=self.vip_via or default_vip_via(self.coordinator),
        )
        app = App(
            api=Api(data=data),
            users=self.users,
            sessions=self.sessions,
            # Browsers treat loopback as a secure context, so Secure cookies work there.
            secure_cookie=context is not None or is_loopback(self.host),
            loopback=is_loopback(self.host),
        )
        try:
            self._server = make_server(self.host, self.port, app)
        except OSError as exc:
            self._stop_parts()
            raise ConsoleError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror}"
            ) from None
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"mhafail-console-{self.name}", daemon=True,
        )  # fmt: skip
        self._thread.start()
        logger.info("console %s serving on %s", self.name, self.url)
        return self

    def sample_now(self) -> None:
        """Take a status and lag sample at once (tests and demos)."""
        if self._sampler is not None:
            self._sampler.kick()

    def stop(self) -> None:
        """Stop serving, sampling and the manager registration (bounded: a few seconds)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(2.0)
        self._stop_parts()

    def _stop_parts(self) -> None:
        if self._sampler is not None:
            self._sampler.stop(2.0)
            self._sampler = None
        if self._client is not None:
            self._client.stop()
            self._client = None

    def __enter__(self) -> Console:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
