"""The node's JlogService in-process: streaming, acknowledgements, resume, and bad clients."""

from __future__ import annotations

import json
import os
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mhafail.errors import AuthenticationFailed, LogsInvalidArgument, StreamRefused
from mhafail.jlog import Jlog, MessageId
from mhafail.logs import JlogService, query_status
from mhafail.logs._client import Opened, open_request
from mhafail.logs._protocol import (
    FrameType,
    decode_json,
    decode_records,
    encode_ack,
    encode_json,
)
from mhafail.logs._wire import PeerClosed

from .conftest import SECRET, record


@pytest.fixture
def service(tmp_path: Path) -> Iterator[JlogService]:
    """A service for node n1 with logs mainlog and acctlog, subscriber m1, and a secret."""
    svc = JlogService(
        node="n1",
        logs={"mainlog": tmp_path / "mainlog", "acctlog": tmp_path / "acctlog"},
        managers=["m1"],
        secret=SECRET,
        heartbeat=0.2,
        poll_interval=0.01,
        handshake_timeout=1.0,
    ).start()
    try:
        yield svc
    finally:
        svc.stop()


def _write(svc: JlogService, count: int, start: int = 0) -> None:
    with Jlog.open(svc.logs["mainlog"]).writer() as writer:
        writer.write_many([record("n1", i) for i in range(start, start + count)])


def _stream(svc: JlogService, after: MessageId | None = None, **kw: object) -> Opened:
    request = {"op": "stream", "subscriber": "m1", "log": "mainlog", "after": None}
    if after is not None:
        request["after"] = str(after)
    return open_request(svc.endpoint, request, secret=SECRET, heartbeat=0.2, **kw)  # type: ignore[arg-type]


def _receive(opened: Opened, count: int) -> list[tuple[MessageId, bytes]]:
    got: list[tuple[MessageId, bytes]] = []
    end = time.monotonic() + 10
    while len(got) < count and time.monotonic() < end:
        for frame in opened.conn.recv(0.2):
            if frame.type is FrameType.RECORDS:
                records = decode_records(frame.body)
                got.extend(zip(records.ids(), records.payloads, strict=True))
    return got


def _still_serving(svc: JlogService) -> None:
    names = {(s.log, s.subscriber) for s in query_status(svc.endpoint, secret=SECRET)}
    assert names == {("mainlog", "m1"), ("acctlog", "m1")}


def test_stream_checkpoints_only_on_ack_and_resumes_after_position(service: JlogService) -> None:
    """The node moves the checkpoint on acknowledgement only, and a manager's own position
    (ahead of the checkpoint) decides where the next stream starts."""
    _write(service, 100)
    opened = _stream(service)
    got = _receive(opened, 100)
    assert [p for _, p in got] == [record("n1", i) for i in range(100)]
    jlog = Jlog.open(service.logs["mainlog"])
    assert jlog.checkpoint("m1") == MessageId(0, 0)
    opened.conn.send(encode_ack(got[9][0]), 1.0)
    deadline = time.monotonic() + 5
    while jlog.checkpoint("m1") != got[9][0] and time.monotonic() < deadline:
        opened.conn.recv(0.05)
    assert jlog.checkpoint("m1") == got[9][0]
    opened.conn.close()
    # The manager says it holds 60 durably, although only 10 were acknowledged.
    resumed = _stream(service, after=got[59][0])
    assert resumed.accept["start"] == str(got[59][0])
    again = _receive(resumed, 40)
    assert [p for _, p in again] == [record("n1", i) for i in range(60, 100)]
    resumed.conn.close()


def test_a_reconnect_supersedes_the_old_stream(service: JlogService) -> None:
    """A second stream for the same subscriber and log ends the first, so one reader moves it."""
    _write(service, 10)
    first = _stream(service)
    _receive(first, 10)
    second = _stream(service)
    assert len(_receive(second, 10)) == 10
    with pytest.raises(PeerClosed):
        end = time.monotonic() + 5
        while time.monotonic() < end:
            first.conn.recv(0.1)
    first.conn.close()
    second.conn.close()


def test_ack_outside_the_sent_range_closes_the_stream(service: JlogService) -> None:
    """An acknowledgement for records never sent is a protocol error: the stream is closed."""
    _write(service, 5)
    opened = _stream(service)
    _receive(opened, 5)
    opened.conn.send(encode_ack(MessageId(0, 500)), 1.0)
    reasons = []
    with pytest.raises(PeerClosed):
        end = time.monotonic() + 5
        while time.monotonic() < end:
            reasons += [f for f in opened.conn.recv(0.1) if f.type is FrameType.ERROR]
    assert "outside the unacknowledged range" in str(decode_json(reasons[0]))
    opened.conn.close()
    assert Jlog.open(service.logs["mainlog"]).checkpoint("m1") == MessageId(0, 0)
    _still_serving(service)


@pytest.mark.parametrize(
    ("request_doc", "match"),
    [
        ({"op": "stream", "subscriber": "m1", "log": "nolog"}, "unknown log"),
        ({"op": "stream", "subscriber": "m9", "log": "mainlog"}, "unknown subscriber"),
        ({"op": "stream", "log": "mainlog"}, "needs a subscriber"),
        ({"op": "delete"}, "unknown op"),
        ({"op": "stream", "subscriber": "m1", "log": "mainlog", "after": "0:99"}, "not in log"),
        ({"op": "tail", "log": "mainlog", "back": -1}, "non-negative"),
    ],
)
def test_bad_requests_are_refused_and_the_service_keeps_running(
    service: JlogService, request_doc: dict[str, object], match: str
) -> None:
    """Unknown logs, subscribers, ops and impossible positions are refused with a reason."""
    with pytest.raises(StreamRefused, match=match):
        open_request(service.endpoint, request_doc, secret=SECRET)
    _still_serving(service)


def test_wrong_or_missing_secret_is_refused(service: JlogService, tmp_path: Path) -> None:
    """A wrong secret, no secret, or a node without auth facing a client with one: refused."""
    with pytest.raises(AuthenticationFailed, match="authentication failed"):
        open_request(service.endpoint, {"op": "list"}, secret=b"w" * 20)
    with pytest.raises(AuthenticationFailed, match="authentication required"):
        open_request(service.endpoint, {"op": "list"})
    with JlogService(
        node="n2", logs={"l": tmp_path / "l"}, allow_unauthenticated=True
    ) as open_node:
        with pytest.raises(AuthenticationFailed, match="does not authenticate"):
            open_request(open_node.endpoint, {"op": "list"}, secret=SECRET)
        listed = open_request(open_node.endpoint, {"op": "list"})
        listed.conn.close()
        assert listed.accept["logs"] == ["l"]
    _still_serving(service)


def test_tail_and_stream_without_the_secret_are_refused(service: JlogService) -> None:
    """Attack: a local user without the secret tries to tail a log, or to move the manager's
    checkpoint with after=; both are refused in the handshake and nothing moves."""
    _write(service, 30)
    with pytest.raises(AuthenticationFailed, match="authentication required"):
        open_request(service.endpoint, {"op": "tail", "log": "mainlog", "back": 10})
    stream = {"op": "stream", "subscriber": "m1", "log": "mainlog", "after": "00000000:0000001e"}
    with pytest.raises(AuthenticationFailed):
        open_request(service.endpoint, stream, secret=b"guessed-secret-0123")
    assert Jlog.open(service.logs["mainlog"]).checkpoint("m1") == MessageId(0, 0)


@pytest.mark.parametrize("tag", [b"", os.urandom(32)], ids=["no-mac", "forged-mac"])
def test_injected_ack_is_rejected_and_the_checkpoint_stays(
    service: JlogService, tag: bytes
) -> None:
    """Attack: an ACK injected into a manager's authenticated stream (no MAC, or a forged one)
    ends the connection and does not move the checkpoint."""
    _write(service, 100)
    opened = _stream(service)
    got = _receive(opened, 100)
    assert len(got) == 100
    payload = encode_ack(got[-1][0])
    sock = opened.conn.channel.sock
    sock.sendall(struct.pack(">I", len(payload) + len(tag)) + payload + tag)
    with pytest.raises(PeerClosed):
        end = time.monotonic() + 5
        while time.monotonic() < end:
            opened.conn.recv(0.1)
    opened.conn.close()
    assert Jlog.open(service.logs["mainlog"]).checkpoint("m1") == MessageId(0, 0)
    _still_serving(service)


def _read_hello(sock: socket.socket) -> dict[str, object]:
    header = sock.recv(4, socket.MSG_WAITALL)
    (length,) = struct.unpack(">I", header)
    doc: dict[str, object] = json.loads(sock.recv(length, socket.MSG_WAITALL))
    return doc


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # an oversized length field
        struct.pack(">I", 0),  # zero-length frame
        struct.pack(">I", 9) + b"{not json",
        struct.pack(">I", 15) + b'{"type":"auth"}',  # no nonce, no proof
        struct.pack(">I", 50) + b"short",  # a frame that never completes
    ],
)
def test_malformed_frames_close_the_connection_only(service: JlogService, garbage: bytes) -> None:
    """Garbage, oversized, incomplete or misplaced frames end that connection, not the service."""
    port = int(service.endpoint.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        assert _read_hello(sock)["type"] == "hello"
        sock.sendall(garbage)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert len(data) < 1000  # at most an error message, then the node hangs up
    _still_serving(service)


def test_unauthenticated_non_loopback_service_is_refused(tmp_path: Path) -> None:
    """Serving a non-loopback address without a secret or mutual TLS is refused, even with
    allow_unauthenticated (which is for loopback only)."""
    for allow in (False, True):
        svc = JlogService(
            node="n1", logs={"l": tmp_path / "l"}, host="198.18.0.1", allow_unauthenticated=allow
        )
        with pytest.raises(LogsInvalidArgument, match="without a shared secret or mutual TLS"):
            svc.start()
    with pytest.raises(LogsInvalidArgument, match="allow_unauthenticated=True"):
        JlogService(node="n1", logs={"l": tmp_path / "l"}).start()
    with pytest.raises(LogsInvalidArgument, match="log name"):
        JlogService(node="n1", logs={"bad/name": tmp_path / "x"})


def test_poll_intervals_must_be_positive(tmp_path: Path) -> None:
    """A zero idle or busy poll interval is refused when the service is configured."""
    for field in ("poll_interval", "busy_poll_interval"):
        with pytest.raises(LogsInvalidArgument, match="busy_poll_interval"):
            JlogService(node="n1", logs={"l": tmp_path / "l"}, **{field: 0.0})


def test_the_secret_stays_out_of_repr(service: JlogService) -> None:
    """The shared secret never appears in the service's repr (logs, tracebacks)."""
    assert SECRET.decode() not in repr(service)
    assert "secret=" not in repr(service)


def test_tail_streams_new_records_without_a_checkpoint(service: JlogService) -> None:
    """A tail gets the newest records and what follows, and moves no subscriber."""
    _write(service, 20)
    opened = open_request(
        service.endpoint, {"op": "tail", "log": "mainlog", "back": 5}, secret=SECRET
    )
    _write(service, 3, start=20)
    got = _receive(opened, 8)
    opened.conn.send(encode_json(FrameType.ERROR, {"reason": "done"}), 1.0)
    opened.conn.close()
    assert [p for _, p in got] == [record("n1", i) for i in range(15, 23)]
    assert Jlog.open(service.logs["mainlog"]).checkpoint("m1") == MessageId(0, 0)


def test_status_reports_backlog_and_decommission_releases_it(tmp_path: Path) -> None:
    """Status shows pending records, bytes and lag per subscriber; decommissioning the only
    subscriber that still needs old segments deletes them."""
    jlog = Jlog.create(tmp_path / "mainlog", unit_limit=4096)
    with JlogService(
        node="n1", logs={"mainlog": jlog.path}, managers=["m1", "m2"], allow_unauthenticated=True
    ) as svc:
        with jlog.writer() as writer:
            writer.write_many([record("n1", i) for i in range(600)])
        st = {s.subscriber: s for s in query_status(svc.endpoint)}
        assert st["m1"].pending_records == st["m2"].pending_records == 600
        assert st["m1"].pending_bytes >= 600 * 60
        assert st["m1"].lag_seconds >= 0
        jlog.set_checkpoint("m1", jlog.last_id())
        segments = len(jlog.segments())
        freed = svc.decommission("m2")
        assert len(freed["mainlog"]) == segments - 1
        assert [s.name for s in jlog.subscribers()] == ["m1"]
        assert svc.managers == ("m1",)
        assert {s.subscriber: s.pending_records for s in svc.status()} == {"m1": 0}
