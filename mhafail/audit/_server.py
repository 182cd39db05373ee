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
expected only for syntax errors). Status codes: 400 malformed query or
argument, 404 unknown series or path, 413 query too long, 500 unreadable
snapshot files.
"""

from __future__ import annotations

import json
import logging
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    engine: QueryEngine


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "mhafail-cidr/1"

    def log_message(self, format: str, *args: Any) -> None:
        # The stdlib writes every request to stderr; a library logs instead.
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        if url.path == "/health":
            self._send(HTTPStatus.OK, "text/plain; charset=utf-8", b"ok\n")
        elif url.path == "/available":
            self._answer("show available", params)
        elif url.path == "/query":
            queries = params.get("q")
            if not queries:
                self._error(
                    params, QuerySyntaxError("missing query", position=0, expected="a q parameter")
                )
                return
            self._answer(queries[0], params)
        else:
            self._error(params, None, HTTPStatus.NOT_FOUND, f"no such path {url.path!r}")

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        params = parse_qs(url.query)
        if url.path != "/query":
            self._error(params, None, HTTPStatus.NOT_FOUND, f"no such path {url.path!r}")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_QUERY_BYTES:
            self.close_connection = True
            self._error(
                params, None, HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "query body too long or unsized"
            )
            return
        body = self.rfile.read(length)
        try:
            text = body.decode()
        except UnicodeDecodeError:
            self._error(params, None, HTTPStatus.BAD_REQUEST, "query body is not UTF-8")
            return
        self._answer(text, params)

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
    ) -> None:
        payload: dict[str, Any] = {"error": message or str(exc)}
        if isinstance(exc, QuerySyntaxError):
            payload["position"] = exc.position
            payload["expected"] = exc.expected
        if self._wants_json(params):
            self._send(status, "application/json", json.dumps(payload, sort_keys=True).encode())
        else:
            self._send(status, "text/plain; charset=utf-8", f"error: {payload['error']}\n".encode())

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@attrs.define(kw_only=True)
class CidrServer:
    """An HTTP server answering CIDR queries from a :class:`QueryEngine`.

    Each request runs on its own thread; the engine is thread-safe. Bind to
    loopback (the default) or a management address: there is no
    authentication.

    Args:
        engine: answers the queries.
        host: address to listen on.
        port: TCP port; 0 picks a free one (see :attr:`port_bound`).
    """

    engine: QueryEngine
    host: str = "127.0.0.1"
    port: int = 9000
    _server: _Server | None = attrs.field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False, repr=False)

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
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="mhafail-cidr-server", daemon=True
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
