"""The HTTP side of the console: a threaded standard-library server with the checks in front.

Before any handler runs, every request passes:

* a ``Host`` check when bound to loopback (only loopback names: a DNS
  rebinding page gets 421, not the API);
* body limits: POST bodies must be ``application/json`` (which a
  cross-site form cannot send) and at most 64 KiB;
* an ``Origin`` check on POST: when the browser sends one it must be this
  console's own origin;
* the session cookie (401 without a live session), the role (403 for an
  operator endpoint with the reader role) and, on every POST but login,
  the session's CSRF token in ``X-CSRF-Token`` (403 ``csrf``).

Answers carry a Content-Security-Policy that allows only the console's
own scripts and styles (no inline script, no CDN), ``nosniff``,
``no-referrer`` and ``frame-ancestors 'none'``.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import socket
import threading
import time
from http.cookies import CookieError, SimpleCookie
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mhafail.console._api import PREFIX, Api, ApiError
from mhafail.console._auth import ConsoleRole, Session, Sessions, Users

logger = logging.getLogger(__name__)

COOKIE = "mhafail_console"
MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 64
SOCKET_TIMEOUT = 10.0
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/charts.js": ("charts.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_only(header: str) -> str:
    header = header.strip().lower()
    if header.startswith("["):
        return header[: header.find("]") + 1] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], app: App, family: int) -> None:
        self.address_family = family
        self.app = app
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            # Over the cap: close at once rather than queue without bound.
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class App:
    """What the handler needs: the API, the sessions, the users, the cookie policy."""

    def __init__(
        self, *, api: Api, users: Users, sessions: Sessions, secure_cookie: bool, loopback: bool
    ) -> None:
        self.api = api
        self.users = users
        self.sessions = sessions
        self.secure_cookie = secure_cookie
        self.loopback = loopback
        self.static: dict[str, bytes] = {}
        folder = resources.files("mhafail.console") / "static"
        for path, (name, _kind) in STATIC.items():
            self.static[path] = (folder / name).read_bytes()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "mhafail-console"
    sys_version = ""
    timeout = SOCKET_TIMEOUT

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    # --- plumbing ----------------------------------------------------------------

    def _send(
        self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Content-Security-Policy", CSP)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, doc: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        self._send(status, body, "application/json", headers)

    def _error(self, error: ApiError) -> None:
        headers = {"Connection": "close"} if error.status in (400, 413) else None
        if error.code == "login_throttled":
            headers = {"Retry-After": str(error.extra.get("retry_after", 60))}
        self._json(error.status, error.body(), headers)

    def _cookie_token(self) -> str | None:
        raw = self.headers.get("Cookie")
        if not raw:
            return None
        try:
            cookie = SimpleCookie(raw)
        except CookieError:
            return None
        morsel = cookie.get(COOKIE)
        return None if morsel is None else morsel.value

    def _set_cookie(self, value: str, max_age: int) -> str:
        parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict", f"Max-Age={max_age}"]
        if self.server.app.secure_cookie:
            parts.append("Secure")
        return "; ".join(parts)

    def _body(self) -> dict[str, Any]:
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise ApiError(415, "unsupported_media_type", "POST bodies must be application/json")
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            raise ApiError(400, "bad_request", "invalid Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise ApiError(413, "too_large", f"bodies are at most {MAX_BODY} bytes")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError(400, "bad_request", "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "the body must be a JSON object")
        return body

    def _check_host(self) -> None:
        if self.server.app.loopback:
            host = _host_only(self.headers.get("Host") or "")
            if not is_loopback(host):
                raise ApiError(421, "wrong_host", "this console answers to loopback names only")

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is None:
            return
        parts = urlsplit(origin)
        if (parts.netloc or "").lower() != (self.headers.get("Host") or "").lower():
            raise ApiError(403, "bad_origin", f"cross-origin request from {origin!r} refused")

    # --- methods -----------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        try:
            self._check_host()
            parts = urlsplit(self.path)
            path = parts.path
            if path == PREFIX or path.startswith(PREFIX + "/"):
                self._api(method, path[len(PREFIX) :], parse_qs(parts.query))
            elif path in STATIC and method == "GET":
                kind = STATIC[path][1]
                self._send(200, self.server.app.static[path], kind)
            elif path in STATIC:
                raise ApiError(405, "method_not_allowed", f"{path} takes GET only")
            else:
                raise ApiError(404, "not_found", f"no page {path}")
        except ApiError as error:
            self._error(error)
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception:
            logger.exception("console: unexpected error on %s %s", method, self.path)
            self._error(ApiError(500, "internal", "internal error (logged by the console)"))

    def _api(self, method: str, path: str, query: dict[str, list[str]]) -> None:  # noqa: PLR0912
        app = self.server.app
        body: dict[str, Any] = {}
        if method == "POST":
            self._check_origin()
            body = self._body()
        if path in ("", "/"):
            if method != "GET":
                raise ApiError(405, "method_not_allowed", f"{PREFIX} takes GET only")
            self._json(200, app.api.index())
            return
        if path == "/login":
            if method != "POST":
                raise ApiError(405, "method_not_allowed", f"{PREFIX}/login takes POST only")
            self._login(body)
            return
        session = app.sessions.get(self._cookie_token())
        if path == "/logout":
            if method != "POST":
                raise ApiError(405, "method_not_allowed", f"{PREFIX}/logout takes POST only")
            if session is not None:
                self._check_csrf(session)
                app.sessions.end(session.token)
            self._json(200, {"ok": True}, {"Set-Cookie": self._set_cookie("", 0)})
            return
        if path == "/session":
            if session is None:
                raise ApiError(401, "unauthorized", "not logged in")
            self._json(200, _session_doc(session))
            return
        route, _params = app.api.find(method, path)
        if session is None:
            raise ApiError(401, "unauthorized", "log in first (POST /api/v1/login)")
        if route.role is ConsoleRole.OPERATOR and session.role is not ConsoleRole.OPERATOR:
            raise ApiError(403, "forbidden", f"the {session.role.value} role may not do this")
        if method == "POST":
            self._check_csrf(session)
        started = time.monotonic()
        result = app.api.call(route, session, body, query)
        logger.debug("%s %s took %.3f s", method, path, time.monotonic() - started)
        if method == "POST":
            logger.info("console: %s %s by %s", method, path, session.user)
        self._json(200, result)

    def _check_csrf(self, session: Session) -> None:
        if not session.check_csrf(self.headers.get("X-CSRF-Token")):
            raise ApiError(403, "csrf", "missing or wrong X-CSRF-Token header")

    def _login(self, body: dict[str, Any]) -> None:
        app = self.server.app
        client = self.client_address[0]
        wait = app.sessions.throttled(client)
        if wait > 0:
            raise ApiError(
                429, "login_throttled", f"too many failed logins; try again in {wait:.0f} s",
                {"retry_after": int(wait) + 1},
            )  # fmt: skip
        user, password = body.get("user"), body.get("password")
        if not isinstance(user, str) or not isinstance(password, str):
            raise ApiError(400, "bad_request", "give 'user' and 'password' as strings")
        role = app.users.role_of(user, password)
        if role is None:
            app.sessions.failed(client)
            raise ApiError(401, "login_failed", "unknown user or wrong password")
        app.sessions.succeeded(client)
        session = app.sessions.create(user, role)
        max_age = int(app.sessions.max_age)
        logger.info("console: %s logged in (%s) from %s", user, role.value, client)
        self._json(
            200, _session_doc(session), {"Set-Cookie": self._set_cookie(session.token, max_age)}
        )


def _session_doc(session: Session) -> dict[str, Any]:
    return {"user": session.user, "role": session.role.value, "csrf": session.csrf}


def make_server(host: str, port: int, app: App) -> _Server:
    """Bind the console's HTTP server (not yet serving)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return _Server((host, port), app, family)


__all__ = ["App", "make_server"]
