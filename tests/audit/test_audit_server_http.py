"""CidrServer's HTTP edges over real sockets: methods, body framing, idle and excess connections."""

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mhafail.audit import CidrServer, IntervalCounts, KeyFamily, QueryEngine, SnapshotStore
from mhafail.errors import AuditInvalidArgument

T0 = 1_717_200_000.0
V4 = 3323068416  # 198.18.0.0
QUERY = b"show count for 198.18.0.0/16 in conn"


def _store(tmp_path: Path) -> SnapshotStore:
    store = SnapshotStore(root=tmp_path)
    store.write_interval(IntervalCounts("conn", KeyFamily.IPV4, T0, T0 + 60, {V4 + 1: 3}))
    return store


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CidrServer]:
    with CidrServer(engine=QueryEngine(store=_store(tmp_path)), port=0) as srv:
        yield srv


def _connect(server: CidrServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port_bound), timeout=5)


def _response(reader: Any, *, head: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response: status, headers (lower-case names) and body."""
    status = reader.readline()
    if not status:
        raise EOFError("connection closed")
    headers = {}
    while (line := reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b"" if head else reader.read(int(headers.get("content-length", "0")))
    return int(status.split()[1]), headers, body


def _exchange(
    server: CidrServer, raw: bytes, count: int = 1
) -> list[tuple[int, dict[str, str], bytes]]:
    """Send raw bytes on one connection and read ``count`` responses, then expect EOF or more."""
    with _connect(server) as sock:
        sock.sendall(raw)
        with sock.makefile("rb") as reader:
            return [_response(reader) for _ in range(count)]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/query", "GET, HEAD, POST"),
        ("DELETE", "/health", "GET, HEAD"),
        ("POST", "/health", "GET, HEAD"),
        ("PATCH", "/available", "GET, HEAD"),
        ("BREW", "/query", "GET, HEAD, POST"),
    ],
)
def test_wrong_methods_get_a_json_405_with_allow(
    server: CidrServer, method: str, path: str, allow: str
) -> None:
    """A method a path does not take is answered 405 in JSON with an Allow header, not HTML 501."""
    ((status, headers, body),) = _exchange(
        server, f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert status == 405
    assert headers["allow"] == allow
    assert headers["content-type"] == "application/json"
    assert f"method {method} is not allowed" in json.loads(body)["error"]


def test_head_answers_like_get_without_a_body(server: CidrServer) -> None:
    """HEAD /health and HEAD /available answer 200 with headers only."""
    with _connect(server) as sock:
        sock.sendall(
            b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        with sock.makefile("rb") as reader:
            status, headers, _ = _response(reader, head=True)
            assert (status, headers["content-length"]) == (200, "3")
            assert _response(reader)[::2] == (200, b"ok\n")


def test_chunked_post_is_read_as_one_request(server: CidrServer) -> None:
    """A chunked POST is decoded as the query; the next request on the connection is answered."""
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(QUERY), QUERY)
    raw = (
        b"POST /query?format=json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked
        + b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    first, second = _exchange(server, raw, count=2)
    assert first[0] == 200 and json.loads(first[2])["rows"][0]["count"] == 3
    assert (second[0], second[2]) == (200, b"ok\n")


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: abc\r\n", 400),
        (b"Content-Length: -5\r\n", 400),
        (b"Content-Length: +5\r\n", 400),
        (b"Content-Length: 5_0\r\n", 400),
        (b"Content-Length: \xd9\xa5\r\n", 400),
        (b"Content-Length: 10001\r\n", 413),
        (b"Transfer-Encoding: gzip\r\n", 400),
        (b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", 400),
    ],
)
def test_bad_body_framing_is_refused_and_the_connection_closed(
    server: CidrServer, headers: bytes, status: int
) -> None:
    """Unusable Content-Length or Transfer-Encoding get 400 (413 if too big) and close."""
    raw = b"POST /query HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nGET /health HTTP/1.1\r\n\r\n"
    with _connect(server) as sock:
        sock.sendall(raw)
        with sock.makefile("rb") as reader:
            got, answer_headers, _ = _response(reader)
            assert got == status
            assert answer_headers["connection"] == "close"
            assert reader.read() == b""  # the trailing bytes were never parsed as a request


def test_bad_chunks_are_refused(server: CidrServer) -> None:
    """A malformed or oversized chunked body gets 400 or 413 and nothing of it runs as a query."""
    base = b"POST /query HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for body, status in (
        (b"zz\r\nabc\r\n0\r\n\r\n", 400),
        (b"-3\r\nabc\r\n0\r\n\r\n", 400),
        (b"5\r\nabc\r\n0\r\n\r\n", 400),
        (b"%x\r\n" % 20_000 + b"a" * 20_000 + b"\r\n0\r\n\r\n", 413),
    ):
        ((got, _, _),) = _exchange(server, base + body)
        assert got == status


def test_malformed_request_lines_get_json_errors(server: CidrServer) -> None:
    """Protocol errors from the HTTP parser are answered in JSON, not the stdlib's HTML."""
    ((status, headers, body),) = _exchange(server, b"GET /health HTTP/1.1 extra\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "error" in json.loads(body)


def test_idle_connections_are_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    """A connection that sends nothing is closed after idle_timeout, freeing its thread."""
    engine = QueryEngine(store=_store(tmp_path))
    with (
        CidrServer(engine=engine, port=0, idle_timeout=0.3) as server,
        _connect(server) as idle,
        _connect(server) as partial,
    ):
        partial.sendall(b"GET /hea")
        started = time.monotonic()
        assert idle.recv(1) == b""
        assert partial.recv(1) == b""
        assert time.monotonic() - started < 3


def test_many_idle_connections_never_lock_out_health(tmp_path: Path) -> None:
    """130 idle connections (over the cap) leave /health answering at once, threads bounded."""
    engine = QueryEngine(store=_store(tmp_path))
    before = threading.active_count()
    with CidrServer(engine=engine, port=0, max_connections=16) as server:
        idle = [_connect(server) for _ in range(130)]
        try:
            started = time.monotonic()
            ((status, _, body),) = _exchange(server, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (status, body) == (200, b"ok\n")
            assert time.monotonic() - started < 2
            assert threading.active_count() <= before + 16 + 2
        finally:
            for sock in idle:
                sock.close()


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(tmp_path: Path) -> None:
    """When every connection is answering a query, one more is refused with a JSON 503."""
    release = threading.Event()

    class SlowEngine(QueryEngine):
        def run(self, text: str) -> Any:
            release.wait(10)
            return super().run(text)

    engine = SlowEngine(store=_store(tmp_path))
    with CidrServer(engine=engine, port=0, max_connections=2) as server:
        busy = [_connect(server) for _ in range(2)]
        try:
            for sock in busy:
                sock.sendall(b"GET /available HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.3)
            ((status, headers, body),) = _exchange(server, b"GET /health HTTP/1.1\r\n\r\n")
            assert (status, headers["retry-after"]) == (503, "1")
            assert "too many connections" in json.loads(body)["error"]
        finally:
            release.set()
            for sock in busy:
                sock.close()


def test_bad_limits_are_refused(tmp_path: Path) -> None:
    """A non-positive idle timeout or connection cap is refused when the server is built."""
    engine = QueryEngine(store=_store(tmp_path))
    with pytest.raises(AuditInvalidArgument, match="idle_timeout"):
        CidrServer(engine=engine, idle_timeout=0)
    with pytest.raises(AuditInvalidArgument, match="max_connections"):
        CidrServer(engine=engine, max_connections=0)
