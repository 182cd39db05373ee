"""CidrServer over real HTTP on 127.0.0.1."""

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from mhafail.audit import CidrServer, IntervalCounts, KeyFamily, QueryEngine, SnapshotStore
from mhafail.errors import AuditError

T0 = 1_717_200_000.0
V4 = 3323068416  # 198.18.0.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CidrServer]:
    store = SnapshotStore(root=tmp_path)
    store.write_interval(
        IntervalCounts("conn", KeyFamily.IPV4, T0, T0 + 60, {V4 + 1: 3, V4 + 300: 2})
    )
    with CidrServer(engine=QueryEngine(store=store), port=0) as srv:
        yield srv


def _call(
    server: CidrServer, path: str, *, body: bytes | None = None, accept: str | None = None
) -> tuple[int, str, str]:
    """Make one real HTTP request to the server and return status, content type and body."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port_bound, timeout=10)
    try:
        headers = {"Accept": accept} if accept else {}
        conn.request("POST" if body is not None else "GET", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read().decode()
    finally:
        conn.close()


def test_query_answers_in_text_and_json(server: CidrServer) -> None:
    """GET /query answers as a text table by default and as JSON on request."""
    q = quote("show count for 198.18.0.0/16 in conn cidrsize 24")
    status, ctype, body = _call(server, f"/query?q={q}")
    assert (status, ctype) == (200, "text/plain; charset=utf-8")
    assert body.splitlines() == [
        "cidr           conn",
        "198.18.0.0/24     3",
        "198.18.1.0/24     2",
    ]
    status, ctype, body = _call(server, f"/query?q={q}&format=json")
    assert (status, ctype) == (200, "application/json")
    assert [row["count"] for row in json.loads(body)["rows"]] == [3, 2]
    status, _, body = _call(server, f"/query?q={q}", accept="application/json")
    assert json.loads(body)["columns"] == ["conn"]


def test_post_and_available_and_health(server: CidrServer) -> None:
    """POST /query takes the query as the body; /available and /health answer too."""
    query = b"show count for 198.18.0.0/15 in conn"
    status, _, body = _call(server, "/query?format=json", body=query)
    assert status == 200 and json.loads(body)["rows"][0]["count"] == 5
    status, _, body = _call(server, "/available?format=json")
    assert status == 200
    assert json.loads(body)["series"][0]["series"] == "conn"
    assert _call(server, "/health")[:1] == (200,)


def test_syntax_errors_are_400_with_position(server: CidrServer) -> None:
    """A malformed query is a 400 whose JSON names the position and what was expected."""
    q = quote("show count for 198.18.0.0/15 in conn limit 0")
    status, ctype, body = _call(server, f"/query?q={q}&format=json")
    assert (status, ctype) == (400, "application/json")
    error = json.loads(body)
    assert (error["position"], error["expected"]) == (43, "a row limit (1..1000000)")
    status, _, body = _call(server, f"/query?q={q}")
    assert status == 400 and body.startswith("error: ")
    status, _, body = _call(server, "/query?format=json")
    assert status == 400 and json.loads(body)["expected"] == "a q parameter"


def test_unknown_series_and_paths_are_404(server: CidrServer) -> None:
    """Unknown series and unknown paths answer 404 with an error message."""
    q = quote("show count for 198.18.0.0/15 in nope")
    status, _, body = _call(server, f"/query?q={q}&format=json")
    assert status == 404 and "nope" in json.loads(body)["error"]
    assert _call(server, "/elsewhere")[0] == 404


def test_bad_family_is_400_and_huge_body_is_413(server: CidrServer) -> None:
    """A CIDR of the wrong family is 400; an oversized POST body is refused with 413."""
    status, _, _ = _call(server, f"/query?q={quote('show count for 2001:db8::/32 in conn')}")
    assert status == 400
    assert _call(server, "/query", body=b"x" * 20_000)[0] == 413


def test_stopped_server_refuses_and_port_is_reported(tmp_path: Path) -> None:
    """A stopped server has no port; a second bind to a taken port is an AuditError."""
    engine = QueryEngine(store=SnapshotStore(root=tmp_path))
    first = CidrServer(engine=engine, port=0)
    with pytest.raises(AuditError, match="not running"):
        _ = first.port_bound
    with first:
        clash = CidrServer(engine=engine, port=first.port_bound)
        with pytest.raises(AuditError, match="cannot listen"):
            clash.start()
    with pytest.raises(AuditError):
        _ = first.url
