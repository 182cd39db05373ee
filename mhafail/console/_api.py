"""The JSON API, version 1: routes, who may call them, and how errors read.

Every path starts with ``/api/v1``; a later incompatible change gets
``/api/v2`` beside it. Bodies are JSON objects; answers are JSON objects
(or arrays for lists). An error is ``{"error": {"code": ..., "message":
...}}`` with the HTTP status below; a CIDR query syntax error also carries
``position`` and ``expected``.

======  ===============================  ========  ==========================================
method  path                             role      what
======  ===============================  ========  ==========================================
GET     /api/v1                          anyone    this index
POST    /api/v1/login                    anyone    ``{user, password}``: a session cookie
POST    /api/v1/logout                   session   end the session
GET     /api/v1/session                  session   user, role, CSRF token
GET     /api/v1/cluster                  reader    members, roles, labels, lease, uptime
GET     /api/v1/vips                     reader    VIPs, owners, states; drained nodes
POST    /api/v1/vips/move                operator  ``{address, node}``
POST    /api/v1/vips/drain               operator  ``{node}``
POST    /api/v1/vips/undrain             operator  ``{node}``
GET     /api/v1/config                   reader    heads, per-node reports, drift
POST    /api/v1/config/pull              operator  ``{repo, node?}``
POST    /api/v1/config/rollback          operator  ``{repo, sha}``
GET     /api/v1/logs                     reader    subscriber lag and its last hour
GET     /api/v1/audit?q=QUERY            reader    a CIDR query's answer
GET     /api/v1/commands                 reader    request history
POST    /api/v1/commands                 operator  ``{command, args, target, ttl?, timeout?}``
GET     /api/v1/commands/ID              reader    a request and its replies
POST    /api/v1/commands/ID/cancel       operator  cancel it
======  ===============================  ========  ==========================================

Every POST but ``login`` needs the session's CSRF token in ``X-CSRF-Token``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import attrs

from mhafail.console._auth import ConsoleRole
from mhafail.console._cluster import ClusterData
from mhafail.errors import (
    AccessDenied,
    CoordinationError,
    FetchFailed,
    HeadConflict,
    MhafailError,
    QuerySyntaxError,
    UnknownRequest,
    UnknownSeries,
)

logger = logging.getLogger(__name__)

PREFIX = "/api/v1"
_REQUEST = re.compile(r"/commands/([0-9]{13}-[0-9a-f]{12})(/cancel)?")


@attrs.frozen
class ApiError(Exception):
    """An error answer: HTTP status, a stable code and a message for people."""

    status: int
    code: str
    message: str
    extra: dict[str, Any] = attrs.field(factory=dict)

    def body(self) -> dict[str, Any]:
        """The JSON error document."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


@attrs.frozen
class Route:
    """One endpoint: who may call it and the function that answers."""

    method: str
    role: ConsoleRole | None
    handler: Callable[..., Any]
    doc: str


def translate(exc: MhafailError) -> ApiError:  # noqa: PLR0911 (one return per error class)
    """The API error for a library error: bad input is 400, unknowns 404, and so on."""
    if isinstance(exc, QuerySyntaxError):
        return ApiError(
            400, "query_syntax", str(exc), {"position": exc.position, "expected": exc.expected}
        )
    if isinstance(exc, UnknownRequest | UnknownSeries):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, HeadConflict):
        return ApiError(409, "conflict", str(exc))
    if isinstance(exc, AccessDenied):
        return ApiError(403, "zookeeper_denied", str(exc))
    if isinstance(exc, FetchFailed):
        return ApiError(502, "fetch_failed", str(exc))
    if isinstance(exc, CoordinationError):
        return ApiError(503, "unavailable", f"ZooKeeper: {exc}")
    if isinstance(exc, ValueError):
        return ApiError(400, "bad_request", str(exc))
    return ApiError(500, "failed", str(exc))


def _field(body: dict[str, Any], name: str, *, required: bool = True) -> Any:
    value = body.get(name)
    if value is None and required:
        raise ApiError(400, "bad_request", f"missing field {name!r}")
    if value is not None and not isinstance(value, str):
        raise ApiError(400, "bad_request", f"field {name!r} must be a string")
    return value


@attrs.define(kw_only=True, eq=False)
class Api:
    """Dispatches API requests to :class:`ClusterData`.

    Args:
        data: the console's cluster data.
    """

    data: ClusterData
    routes: dict[str, Route] = attrs.field(init=False, factory=dict)

    def __attrs_post_init__(self) -> None:
        d = self.data
        reader, operator = ConsoleRole.READER, ConsoleRole.OPERATOR
        self.routes = {
            "/cluster": Route("GET", reader, lambda s, b, q: d.cluster(), "members and status"),
            "/vips": Route("GET", reader, lambda s, b, q: d.vips(), "VIPs and drained nodes"),
            "/vips/move": Route(
                "POST", operator,
                lambda s, b, q: d.move_vip(_field(b, "address"), _field(b, "node"), s.user),
                "move a VIP: {address, node}",
            ),
            "/vips/drain": Route(
                "POST", operator, lambda s, b, q: d.drain(_field(b, "node"), user=s.user),
                "drain: {node}",
            ),
            "/vips/undrain": Route(
                "POST", operator,
                lambda s, b, q: d.drain(_field(b, "node"), undo=True, user=s.user),
                "undrain: {node}",
            ),
            "/config": Route("GET", reader, lambda s, b, q: d.config(), "heads and drift"),
            "/config/pull": Route(
                "POST", operator,
                lambda s, b, q: d.config_pull(
                    _field(b, "repo"), _field(b, "node", required=False), s.user
                ),
                "nodes apply the head now: {repo, node?}",
            ),
            "/config/rollback": Route(
                "POST", operator,
                lambda s, b, q: d.config_rollback(_field(b, "repo"), _field(b, "sha"), s.user),
                "publish an old tree: {repo, sha}",
            ),
            "/logs": Route("GET", reader, lambda s, b, q: d.logs(), "subscriber lag"),
            "/audit": Route("GET", reader, self._audit, "CIDR query: ?q=QUERY"),
            "/commands": Route("GET", reader, lambda s, b, q: {"requests": d.history()}, "history"),
            "/commands#send": Route(
                "POST", operator,
                lambda s, b, q: d.send(
                    b.get("command"), b.get("args"), b.get("target"),
                    {k: b[k] for k in ("ttl", "timeout") if k in b}, s.user,
                ),
                "send: {command, args, target, ttl?, timeout?}",
            ),
        }  # fmt: skip

    def index(self) -> dict[str, Any]:
        """The list of endpoints (``GET /api/v1``)."""
        endpoints = [
            {"method": r.method, "path": PREFIX + p.partition("#")[0],
             "role": r.role.value if r.role else None, "doc": r.doc}
            for p, r in self.routes.items()
        ]  # fmt: skip
        endpoints += [
            {"method": "GET", "path": f"{PREFIX}/commands/ID", "role": "reader",
             "doc": "a request and its replies"},
            {"method": "POST", "path": f"{PREFIX}/commands/ID/cancel", "role": "operator",
             "doc": "cancel a request"},
        ]  # fmt: skip
        return {"version": 1, "endpoints": endpoints}

    def _audit(self, session: Any, body: Any, query: dict[str, list[str]]) -> Any:
        texts = query.get("q") or []
        if len(texts) != 1 or not texts[0].strip():
            raise ApiError(400, "bad_request", "give one query: ?q=QUERY")
        if len(texts[0]) > 4096:
            raise ApiError(400, "bad_request", "query longer than 4096 characters")
        return self.data.audit_query(texts[0])

    def find(self, method: str, path: str) -> tuple[Route, tuple[str, ...]]:
        """The route for ``method path`` (``path`` after ``/api/v1``) and its parameters.

        Raises:
            ApiError: 404 for an unknown path, 405 for a known path and another method.
        """
        match = _REQUEST.fullmatch(path)
        if match is not None:
            rid, cancel = match.group(1), match.group(2)
            if cancel:
                route = Route("POST", ConsoleRole.OPERATOR,
                              lambda s, b, q: self.data.cancel(rid), "cancel")  # fmt: skip
            else:
                route = Route("GET", ConsoleRole.READER,
                              lambda s, b, q: self.data.request(rid), "request")  # fmt: skip
            if route.method != method:
                raise ApiError(405, "method_not_allowed", f"{path} takes {route.method} only")
            return route, (rid,)
        if path.startswith("/commands/"):
            raise ApiError(
                400, "bad_request",
                "invalid request id: expected 13 digits, '-', 12 hex digits",
            )  # fmt: skip
        candidates = [r for p, r in self.routes.items() if p.partition("#")[0] == path]
        if not candidates:
            raise ApiError(404, "not_found", f"no API endpoint {PREFIX}{path}")
        for route in candidates:
            if route.method == method:
                return route, ()
        allowed = ", ".join(sorted({r.method for r in candidates}))
        raise ApiError(405, "method_not_allowed", f"{PREFIX}{path} takes {allowed} only")

    def call(self, route: Route, session: Any, body: Any, query: dict[str, list[str]]) -> Any:
        """Run ``route``'s handler, translating library errors to API errors."""
        try:
            return route.handler(session, body, query)
        except ApiError:
            raise
        except MhafailError as exc:
            error = translate(exc)
            if error.status >= 500:
                logger.warning("console API: %s", exc)
            raise error from None
