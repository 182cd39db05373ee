"""``CidrServer``: CIDR queries over HTTP (Momentum's cidr_server).

Endpoints::

    GET  /query?q=<query>[&format=json|text]   answer one query
    POST /query                                the query is the request body (UTF-8)
    GET  /available[?format=...]               same as "show available"
    GET  /health                               200 "ok"

The answer is JSON when ``format=json`` is given or the ``Accept`` header
names ``application/json``, else an aligned text table. Errors use the
same format negotiation; in JSON they read
``{"error": "...", "position": 12, "expected": "..."}`` (position and
expected only for syntax errors). Status codes: 400 malformed query,
argument or body framing, 404 unknown series or path, 405 wrong method
(JSON, with an ``Allow`` header), 413 query too long, 500 unreadable
snapshot files, 503 every connection busy. ``HEAD`` works wherever ``GET``
does. Idle connections are closed after ``idle_timeout``; at most
``max_connections`` are open at once (idle ones are evicted first).
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs

from mhafail.audit._engine import QueryEngine, QueryResult
from mhafail.errors import AuditError, AuditInvalidArgument, QuerySyntaxError, UnknownSeries

__all__ = ["CidrServer"]

log = logging.getLogger(__name__)

MAX_QUERY_BYTES = 10_000
# What each path answers to; any other method gets 405 with this Allow list.
_ALLOWED = {
    "/health": ("GET", "HEAD"),
    "/available": ("GET", "HEAD"),
    "/query": ("GET", "HEAD", "POST"),
}
_BUSY_BODY = b'{"error": "too many connections; try again"}'


class _Server(ThreadingHTTPServer):
    """A threading HTTP server with a connection cap that evicts idle connections.

    Every connection is tracked as *idle* (waiting for, or still reading, a
    request line and headers) or *busy* (answering). At the cap, a new
    connection closes the oldest idle one; if every connection is busy, it
    is answered 503 and closed. So idle or slow clients can never lock out
    a health check, and threads and file descriptors stay bounded.
    """

    daemon_threads = True
    # The stdlib's backlog of 5 drops SYNs under a burst of connections,
    # which then wait out TCP's retransmit timer (seconds) before the cap
    # logic even sees them.
    request_queue_size = 128
    engine: QueryEngine
    idle_timeout: float
    max_connections: int

    def server_activate(self) -> None:
        self._conns: dict[socket.socket, bool] = {}
        self._conns_lock = threading.Lock()
        super().server_activate()

    def process_request(self, request: Any, client_address: Any) -> None:
        victim = None
        refuse = False
        with self._conns_lock:
            if len(self._conns) >= self.max_connections:
                victim = next((c for c, idle in self._conns.items() if idle), None)
                if victim is None:
                    refuse = True
                else:
                    del self._conns[victim]
            if not refuse:
                self._conns[request] = True
        if refuse:
            self._refuse(request)
            return
        if victim is not None:
            log.info("CIDR server at %d connections: closing an idle one", self.max_connections)
            with contextlib.suppress(OSError):
                victim.shutdown(socket.SHUT_RDWR)
        super().process_request(request, client_address)

    def _refuse(self, request: socket.socket) -> None:
        log.warning("CIDR server at %d busy connections: refusing one", self.max_connections)
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(_BUSY_BODY)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        with contextlib.suppress(OSError):
            request.settimeout(1.0)
            request.sendall(head.encode() + _BUSY_BODY)
        self.shutdown_request(request)

    def set_idle(self, request: socket.socket, idle: bool) -> None:
        """Mark a tracked connection idle or busy (an evicted one stays untracked)."""
        with self._conns_lock:
            if request in self._conns:
                self._conns[request] = idle

    def shutdown_request(self, request: Any) -> None:
        with self._conns_lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)


class _BadBody(Exception):
    """A request body that cannot be read: (status, message)."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "mhafail-cidr/1"

    def setup(self) -> None:
        # A read that waits longer than this (an idle keep-alive connection,
        # a client that stalls mid-request) closes the connection.
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib writes every request to stderr; a library logs instead.
        log.debug("%s " + format, self.address_string(), *args)

    def handle_one_request(self) -> None:
        # The stdlib's version, except: idle/busy tracking for the connection
        # cap, and 405 (JSON, with Allow) instead of an HTML 501 for methods.
        self.server.set_idle(self.connection, True)
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.requestline = self.request_version = self.command = ""
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            self.server.set_idle(self.connection, False)
            self._dispatch()
            self.wfile.flush()
        except OSError as exc:  # TimeoutError included: an idle or stalled client
            log.debug("closing CIDR connection from %s: %r", self.address_string(), exc)
            self.close_connection = True

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        allowed = _ALLOWED.get(url.path)
        if allowed is None:
            self.close_connection = self.command not in ("GET", "HEAD")  # an unread body
            self._error(params, None, HTTPStatus.NOT_FOUND, f"no such path {url.path!r}")
        elif self.command not in allowed:
            self.close_connection = True  # a body may follow that we will not read
            self._error(
                params,
                None,
                HTTPStatus.METHOD_NOT_ALLOWED,
                f"method {self.command} is not allowed on {url.path} (allowed: "
                f"{', '.join(allowed)})",
                allow=", ".join(allowed),
            )
        elif self.command == "POST":
            self._post(params)
        else:
            self._get(url.path, params)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Answer a protocol error (bad request line, headers) in JSON, then close."""
        self.close_connection = True
        if self.request_version == "HTTP/0.9":
            # The stdlib leaves 0.9 (no status line) when the request line
            # did not parse; every client we serve speaks HTTP/1.x.
            self.request_version = "HTTP/1.0"
        status = HTTPStatus(code)
        body = json.dumps({"error": message or status.phrase}, sort_keys=True).encode()
        self.send_response(status)
        self.send_header("Connection", "close")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _get(self, path: str, params: dict[str, list[str]]) -> None:
        if path == "/health":
            self._send(HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n")
        elif path == "/available":
            self._answer("show available", params)
        else:
            queries = params.get("q")
            if not queries:
                self._error(
                    params, QuerySyntaxError("missing query", position=0, expected="a q parameter")
                )
                return
            self._answer(queries[0], params)

    def _post(self, params: dict[str, list[str]]) -> None:
        try:
            body = self._read_body()
        except _BadBody as exc:
            # The rest of the body is unread: the connection cannot carry another request.
            self.close_connection = True
            self._error(params, None, exc.status, str(exc))
            return
        try:
            text = body.decode()
        except UnicodeDecodeError:
            self._error(params, None, HTTPStatus.BAD_REQUEST, "query body is not UTF-8")
            return
        self._answer(text, params)

    def _read_body(self) -> bytes:
        encoding = self.headers.get("Transfer-Encoding")
        length = self.headers.get("Content-Length")
        if encoding is not None:
            if length is not None or encoding.strip().lower() != "chunked":
                raise _BadBody(
                    HTTPStatus.BAD_REQUEST,
                    f"unsupported Transfer-Encoding {encoding!r} (only chunked, "
                    "without Content-Length)",
                )
            return self._read_chunked()
        if length is None:
            return b""
        value = length.strip()
        if not (value.isascii() and value.isdigit() and len(value) <= 12):
            raise _BadBody(HTTPStatus.BAD_REQUEST, f"Content-Length {length!r} is not a number")
        if int(value) > MAX_QUERY_BYTES:
            raise _BadBody(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"query body of {int(value)} bytes is over {MAX_QUERY_BYTES}",
            )
        return self.rfile.read(int(value))

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024)
            text = line.split(b";", 1)[0].strip()
            if (
                not line.endswith(b"\n")
                or not text
                or any(c not in b"0123456789abcdefABCDEF" for c in text)
            ):
                raise _BadBody(HTTPStatus.BAD_REQUEST, "malformed chunk size line")
            chunk = int(text, 16)
            if chunk == 0:
                break
            size += chunk
            if size > MAX_QUERY_BYTES:
                raise _BadBody(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    f"query body is over {MAX_QUERY_BYTES} bytes",
                )
            data = self.rfile.read(chunk)
            if len(data) != chunk or self.rfile.readline(3) not in (b"\r\n", b"\n"):
                raise _BadBody(HTTPStatus.BAD_REQUEST, "truncated or malformed chunk")
            parts.append(data)
        for _ in range(100):  # trailer fields, up to the blank line
            trailer = self.rfile.readline(8192)
            if trailer in (b"\r\n", b"\n"):
                return b"".join(parts)
            if not trailer.endswith(b"\n"):
                break
        raise _BadBody(HTTPStatus.BAD_REQUEST, "malformed chunked trailer")

    def _wants_json(self, params: dict[str, list[str]]) -> bool:
        fmt = params.get("format", [""])[0].lower()
        if fmt in ("json", "text"):
            return fmt == "json"
        return "application/json" in self.headers.get("Accept", "")

    def _answer(self, text: str, params: dict[str, list[str]]) -> None:
        if len(text.encode()) > MAX_QUERY_BYTES:
            self._error(params, None, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "query too long")
            return
        try:
            result: QueryResult = self.server.engine.run(text)
        except QuerySyntaxError as exc:
            self._error(params, exc)
        except UnknownSeries as exc:
            self._error(params, exc, HTTPStatus.NOT_FOUND)
        except AuditInvalidArgument as exc:
            self._error(params, exc)
        except AuditError as exc:
            log.warning("query %r failed: %s", text, exc)
            self._error(params, exc, HTTPStatus.INTERNAL_SERVER_ERROR)
        else:
            if self._wants_json(params):
                body = json.dumps(result.to_json(), sort_keys=True).encode()
                self._send(HTTPStatus.OK, "application/json", body)
            else:
                self._send(HTTPStatus.OK, "text/plain; charset=utf-8", result.to_text().encode())

    def _error(
        self,
        params: dict[str, list[str]],
        exc: Exception | None,
        status: HTTPStatus = HTTPStatus.BAD_REQUEST,
        message: str | None = None,
        *,
        allow: str | None = None,
    ) -> None:
        payload: dict[str, Any] = {"error": message or str(exc)}
        if isinstance(exc, QuerySyntaxError):
            payload["position"] = exc.position
            payload["expected"] = exc.expected
        extra = {"Allow": allow} if allow else {}
        # Methods and framing errors answer JSON whatever was asked: no
        # client negotiated a format for a request we did not understand.
        if self._wants_json(params) or status == HTTPStatus.METHOD_NOT_ALLOWED:
            body = json.dumps(payload, sort_keys=True).encode()
            self._send(status, "application/json", body, extra)
        else:
            body = f"error: {payload['error']}\n".encode()
            self._send(status, "text/plain; charset=utf-8", body, extra)

    def _send(
        self,
        status: HTTPStatus,
        content_type: str,
        body: bytes,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@attrs.define(kw_only=True)
class CidrServer:
    """An HTTP server answering CIDR queries from a :class:`QueryEngine`.

    Each connection runs on its own thread; the engine is thread-safe.
    Bind to loopback (the default) or a management address: there is no
    authentication.

    Args:
        engine: answers the queries.
        host: address to listen on.
        port: TCP port; 0 picks a free one (see :attr:`port_bound`).
        idle_timeout: seconds a connection may wait for (or dawdle over) a
            request before it is closed.
        max_connections: open connections at most (one thread each); at
            the cap a new connection closes the oldest idle one, or is
            answered 503 if all are busy answering.

    Raises:
        AuditInvalidArgument: a non-positive timeout or cap.
    """

    engine: QueryEngine
    host: str = "127.0.0.1"
    port: int = 9000
    idle_timeout: float = 10.0
    max_connections: int = 64
    _server: _Server | None = attrs.field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.idle_timeout > 0:
            raise AuditInvalidArgument(f"idle_timeout must be positive, not {self.idle_timeout!r}")
        if type(self.max_connections) is not int or self.max_connections < 1:
            raise AuditInvalidArgument(
                f"max_connections must be a positive integer, not {self.max_connections!r}"
            )

    @property
    def port_bound(self) -> int:
        """The port actually listened on (useful with ``port=0``).

        Raises:
            AuditError: the server is not running.
        """
        if self._server is None:
            raise AuditError("the CIDR server is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:9000``."""
        return f"http://{self.host}:{self.port_bound}"

    def start(self) -> None:
        """Listen and serve on a background thread.

        Raises:
            AuditError: the address cannot be bound.
        """
        if self._server is not None:
            return
        try:
            server = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise AuditError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        server.engine = self.engine
        server.idle_timeout = self.idle_timeout
        server.max_connections = self.max_connections
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},  # how long stop() may wait
            name="mhafail-cidr-server",
            daemon=True,
        )
        self._thread.start()
        log.info("CIDR server listening on %s", self.url)

    def serve_forever(self) -> None:
        """Listen and serve on the calling thread until interrupted."""
        self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        server, self._server = self._server, None
        thread, self._thread = self._thread, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> CidrServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
