"""Issue 13, log aggregation items 8-10: big records, unambiguous output, the smaller defects."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail import channel
from mhafail.cli import main
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.errors import LogsError, ProtocolError
from mhafail.jlog import Jlog, Message, MessageId
from mhafail.logs import Framing, JlogService, LogAggregator, StreamState, read_records
from mhafail.logs._client import open_request
from mhafail.logs._framing import frame_records
from mhafail.logs._protocol import (
    MIN_MAX_FRAME,
    FrameType,
    Reassembly,
    decode_records,
    encode_ack,
    encode_parts,
    encode_records,
)
from mhafail.logs._session import encode_run, split_frames
from mhafail.logs._wire import Connection, PeerClosed
from mhafail.testing._children import reap, spawn

from .conftest import SECRET

LIMIT = MIN_MAX_FRAME  # 64 KiB: big records are cheap to make
BIG = b"big record\n" * 30_000  # 330 KB, newlines inside


def _message(marker: int, payload: bytes) -> Message:
    return Message(MessageId(1, marker), 1_700_000_000 + marker, marker, payload)


# --- item 8: a record over the frame limit ----------------------------------------------


@settings(max_examples=200, deadline=2000)
@given(st.integers(1, 300_000), st.integers(LIMIT, 3 * LIMIT))
def test_parts_carry_any_record_within_the_limit(size: int, limit: int) -> None:
    """A record of any size travels as PART frames that each fit the limit and join back
    into exactly that record, with its id and time."""
    message = _message(7, bytes(range(256)) * (size // 256) + b"x" * (size % 256))
    frames = list(encode_parts(message, limit))
    assert all(len(f) + 4 + 32 <= limit for f in frames)  # with the channel length and MAC
    parts = Reassembly()
    results = [parts.add(f[1:]) for f in frames]
    assert all(r is None for r in results[:-1])
    whole = results[-1]
    assert whole is not None and not parts.pending
    assert whole.payloads == [message.payload]
    assert (whole.first_id, whole.secs, whole.usecs) == (message.id, [message.sec], [message.usec])


def test_split_frames_gives_a_big_record_a_run_of_its_own() -> None:
    """The records before and after a big one still go in RECORDS frames; the big one
    goes in parts, so nothing is held back (it was refused, stalling the log)."""
    batch = [_message(1, b"a"), _message(2, b"b"), _message(3, BIG), _message(4, b"c")]
    runs = split_frames(batch, LIMIT)
    assert [[m.id.marker for m in run] for run in runs] == [[1, 2], [3], [4]]
    assert [len(encode_run(run, LIMIT)) for run in runs] == [1, 6, 1]


@pytest.mark.parametrize(
    ("bodies", "match"),
    [
        ([b"\x00" * 24], "without a header"),
        ([b"\x00\x00\x00\x01" * 4 + b"\x00\x00\x00\x05\x00\x00\x00\x01" + b"x"], "starts at"),
        ([b"\x00\x00\x00\x01" * 4 + b"\x00\x00\x00\x01\x00\x00\x00\x00" + b"xy"], "longer"),
        ([b"\x00\x00\x00\x00" * 4 + b"\x00\x00\x00\x01\x00\x00\x00\x00" + b"x"], "bad header"),
    ],
)
def test_malformed_parts_are_protocol_errors(bodies: list[bytes], match: str) -> None:
    """A part without a header, starting mid-record, longer than announced or for marker 0
    is refused with a precise reason."""
    parts = Reassembly()
    with pytest.raises(ProtocolError, match=match):
        for body in bodies:
            parts.add(body)


def test_parts_out_of_order_or_interleaved_are_refused() -> None:
    """A skipped piece, or a piece of another record before this one ends, is a protocol error."""
    a = [f[1:] for f in encode_parts(_message(1, b"a" * 200_000), LIMIT)]
    b = [f[1:] for f in encode_parts(_message(2, b"b" * 200_000), LIMIT)]
    parts = Reassembly()
    parts.add(a[0])
    with pytest.raises(ProtocolError, match="out of order"):
        parts.add(a[2])
    parts = Reassembly()
    parts.add(a[0])
    with pytest.raises(ProtocolError, match="out of order"):
        parts.add(b[0])


@settings(max_examples=200, deadline=2000)
@given(st.binary(max_size=80))
def test_fuzzed_parts_raise_only_protocol_errors(body: bytes) -> None:
    """Any bytes as a PART body: at most a ProtocolError, never anything else."""
    with contextlib.suppress(ProtocolError):
        Reassembly().add(body)


def _service(tmp_path: Path) -> JlogService:
    return JlogService(
        node="n1",
        logs={"mainlog": tmp_path / "mainlog"},
        managers=["m1"],
        secret=SECRET,
        max_frame=LIMIT,
        heartbeat=0.2,
        poll_interval=0.01,
    ).start()


def test_a_big_record_streams_in_parts_and_the_checkpoint_moves_past_it(tmp_path: Path) -> None:
    """Records before, at and after one over the frame limit reach the manager in order,
    and acknowledging the last moves the checkpoint: the log no longer stalls."""
    service = _service(tmp_path)
    try:
        payloads = [b"before", BIG, b"after"]
        with Jlog.open(service.logs["mainlog"]).writer() as writer:
            writer.write_many(payloads)
        request = {"op": "stream", "subscriber": "m1", "log": "mainlog", "after": None}
        opened = open_request(service.endpoint, request, secret=SECRET, max_frame=LIMIT)
        parts = Reassembly()
        got: list[tuple[MessageId, bytes]] = []
        end = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < end:
            for frame in opened.conn.recv(0.2):
                assert frame.type is not FrameType.ERROR, opened.conn.reason(frame)
                if frame.type is FrameType.RECORDS:
                    records = decode_records(frame.body)
                elif frame.type is FrameType.PART:
                    maybe = parts.add(frame.body)
                    if maybe is None:
                        continue
                    records = maybe
                else:
                    continue
                got.extend(zip(records.ids(), records.payloads, strict=True))
        assert [p for _, p in got] == payloads
        opened.conn.send(encode_ack(got[-1][0]), 1.0)
        jlog = Jlog.open(service.logs["mainlog"])
        end = time.monotonic() + 5
        while jlog.checkpoint("m1") != got[-1][0] and time.monotonic() < end:
            opened.conn.recv(0.05)
        assert jlog.checkpoint("m1") == got[-1][0]
        opened.conn.close()
    finally:
        service.stop()


def test_manager_writes_big_and_multiline_records_exactly(
    tmp_path: Path, coordinator_factory: Callable[..., Coordinator]
) -> None:
    """End to end through a real aggregator: a record over the frame limit and records with
    newlines, backslashes or nothing in them read back from the output exactly."""
    service = _service(tmp_path)
    node = Membership(
        coordinator=coordinator_factory(),
        info=NodeInfo(name="n1", endpoints={"jlog": service.endpoint}),
    ).start()
    mgr_coord = coordinator_factory()
    members = Membership(coordinator=mgr_coord, info=NodeInfo(name="m1")).start()
    agg = LogAggregator(
        coordinator=mgr_coord,
        membership=members,
        name="m1",
        base=tmp_path / "out",
        secret=SECRET,
        max_frame=LIMIT,
        heartbeat=0.2,
    ).start()
    try:
        payloads = [b"one\ntwo", b"three", b"", BIG, b"back\\slash\\n", b"last"]
        with Jlog.open(service.logs["mainlog"]).writer() as writer:
            writer.write_many(payloads)
        agg.wait_for(lambda st: any(s.records == len(payloads) for s in st), timeout=20)
        (status,) = agg.status()
        assert status.file is not None
        data = (tmp_path / "out" / status.file).read_bytes()
        assert read_records(data) == payloads
        assert read_records(data, "escaped") == payloads
    finally:
        agg.stop()
        members.stop()
        node.stop()
        service.stop()


# --- item 9: unambiguous output ----------------------------------------------------------


@settings(max_examples=200, deadline=2000)
@given(st.lists(st.binary(max_size=40), max_size=12), st.sampled_from(["escaped", "length"]))
def test_unambiguous_framings_read_back_any_records(payloads: list[bytes], name: str) -> None:
    """Escaped and length-prefixed output decodes to exactly the records written, whatever
    bytes they hold (newlines, backslashes, empty records)."""
    framing = Framing(name)
    assert read_records(frame_records(payloads, framing), framing) == payloads


def test_plain_lines_are_ambiguous_and_only_an_explicit_choice() -> None:
    """The issue's example: in plain lines two different record sets give the same bytes;
    escaped (the default) and length framing tell them apart."""
    one = [b"one\ntwo", b"three", b""]
    other = [b"one", b"two", b"three", b""]
    assert frame_records(one, Framing.LINES) == frame_records(other, Framing.LINES)
    for framing in (Framing.ESCAPED, Framing.LENGTH):
        assert frame_records(one, framing) != frame_records(other, framing)
    assert LogAggregator.__attrs_attrs__.framing.default is Framing.ESCAPED  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("data", "framing", "match"),
    [
        (b"a\\x\n", "escaped", "bad escape"),
        (b"a\\\n", "escaped", "lone"),
        (b"abc", "escaped", "middle of a record"),
        (b"3:ab\n", "length", "does not end"),
        (b"x:ab\n", "length", "no record length"),
    ],
)
def test_damaged_output_is_reported_not_misread(data: bytes, framing: str, match: str) -> None:
    """Output that is not in the framing raises LogsError naming the problem."""
    with pytest.raises(LogsError, match=match):
        read_records(data, framing)


def test_unknown_framing_is_refused() -> None:
    """A framing name that does not exist is refused with the valid names."""
    with pytest.raises(LogsError, match="escaped, length, lines"):
        read_records(b"", "csv")


def test_records_frames_unchanged_for_small_batches() -> None:
    """Batches that fit one frame still travel as one RECORDS frame (no parts)."""
    batch = [_message(1, b"x" * 100), _message(2, b"y")]
    (run,) = split_frames(batch, LIMIT)
    assert encode_run(run, LIMIT) == [encode_records(batch)]


# --- item 10: the smaller ones -----------------------------------------------------------


def test_a_connection_over_the_cap_is_told_why(tmp_path: Path) -> None:
    """A client turned away at accept gets an ERROR saying the node is busy (it was closed
    without a word), as a transient failure, not an authentication refusal."""
    service = JlogService(
        node="n1", logs={"mainlog": tmp_path / "mainlog"}, secret=SECRET, max_connections=1
    ).start()
    host, port = service.endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=5):  # holds the one slot
            time.sleep(0.2)
            with pytest.raises(PeerClosed, match="too many connections"):
                open_request(service.endpoint, {"op": "list"}, secret=SECRET)
        assert service._listener is not None and service._listener.refused_connections == 1
    finally:
        service.stop()


def test_ack_before_open_is_reported_as_such(tmp_path: Path) -> None:
    """A client whose first frame is an ACK hears "expected OPEN, got ACK" (it was told its
    frame was not valid JSON)."""
    service = _service(tmp_path)
    try:
        chan = channel.connect(service.endpoint, "logs", channel.ChannelSecurity(secret=SECRET))
        conn = Connection(chan)
        conn.send(encode_ack(MessageId(0, 1)), 1.0)
        frames = conn.recv(5.0)
        assert [f.type for f in frames] == [FrameType.ERROR]
        assert conn.reason(frames[0]) == "protocol error: expected OPEN, got ACK"
        conn.close()
    finally:
        service.stop()


@pytest.fixture
def node_in_zk(
    tmp_path: Path, coordinator_factory: Callable[..., Coordinator]
) -> Iterator[tuple[JlogService, Coordinator]]:
    """Node n1 serving one log with the secret, registered as a member with its endpoint."""
    service = JlogService(
        node="n1", logs={"mainlog": tmp_path / "mainlog"}, managers=["m1"], secret=SECRET
    ).start()
    coordinator = coordinator_factory()
    member = Membership(
        coordinator=coordinator, info=NodeInfo(name="n1", endpoints={"jlog": service.endpoint})
    ).start()
    try:
        yield service, coordinator
    finally:
        member.stop()
        service.stop()


def test_status_says_authentication_failed_not_unreachable(
    node_in_zk: tuple[JlogService, Coordinator], capsys: pytest.CaptureFixture[str]
) -> None:
    """``logs status`` without the secret labels the node's refusal an authentication
    failure; it called it "unreachable"."""
    _, coordinator = node_in_zk
    zk = ["--zk", coordinator.hosts, "--cluster", coordinator.cluster]
    assert main(["logs", "status", *zk]) == 1
    text = capsys.readouterr().out
    assert "n1: authentication failed:" in text
    assert "unreachable" not in text


def test_hostile_member_znodes_do_not_crash_status(
    node_in_zk: tuple[JlogService, Coordinator],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Attack: member znodes nested 5000 deep or oversized are skipped by ``logs status``
    (it died of RecursionError); the real node is still reported."""
    _, coordinator = node_in_zk
    coordinator.znodes.create("members/deep", b"[" * 5000)
    big = json.dumps({"name": "big", "endpoints": {"jlog": "127.0.0.1:1"}, "pad": "x" * 200_000})
    coordinator.znodes.create("members/big", big.encode())
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    zk = ["--zk", coordinator.hosts, "--cluster", coordinator.cluster]
    assert main(["logs", "status", *zk, "--secret-file", str(secret), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {r["node"] for r in data["subscribers"]} == {"n1"}
    assert data["errors"] == {}


def test_hostile_state_file_is_an_error_not_a_crash() -> None:
    """A state file nested 5000 deep or oversized is a LogsError (never RecursionError)."""
    with pytest.raises(LogsError, match="malformed"):
        StreamState.from_json(b"[" * 5000)
    with pytest.raises(LogsError, match="malformed"):
        StreamState.from_json(b" " * 100_000 + b"{}")


def test_second_manager_of_a_name_gets_manager_name_taken(
    node_in_zk: tuple[JlogService, Coordinator],
    coordinator_factory: Callable[..., Coordinator],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A second ``logs manager`` with a live manager's name fails with ManagerNameTaken's
    message (it failed on the member name, "held by a live process")."""
    coord = coordinator_factory()
    members = Membership(coordinator=coord, info=NodeInfo(name="m1"))
    agg = LogAggregator(
        coordinator=coord, membership=members, name="m1", base=tmp_path / "a", secret=SECRET
    ).start()
    members.start()
    try:
        argv = ["logs", "manager", "--zk", coord.hosts, "--cluster", coord.cluster]
        argv += ["--name", "m1", "--base", str(tmp_path / "b"), "--session-timeout", "0.5"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "manager name 'm1' is held by another live session" in err
    finally:
        agg.stop()
        members.stop()


_KILL_MID_WRITE = """
import os, sys
from mhafail.logs import _stream

class _Os:
    # The manager's own os: its first big output write stops halfway, as a SIGKILL would.
    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(fd, data):
        if len(data) > 1000:
            os.write(fd, bytes(data[: len(data) // 2 + 7]))  # inside a record
            os._exit(137)
        return os.write(fd, data)

_stream.os = _Os()
from mhafail.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_manager_killed_mid_write_cuts_the_torn_tail_and_loses_nothing(
    node_in_zk: tuple[JlogService, Coordinator], tmp_path: Path
) -> None:
    """A manager that dies inside the write of a batch (half of it in the file, no fsync,
    no state) leaves a torn tail; the next manager cuts it and the output holds every
    record exactly once, in order."""
    service, coordinator = node_in_zk
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    base = tmp_path / "out"
    args = ["logs", "manager", "--zk", coordinator.hosts, "--cluster", coordinator.cluster]
    args += ["--name", "m1", "--base", str(base), "--secret-file", str(secret)]
    args += ["--session-timeout", "0.5", "--heartbeat", "0.2", "--retry", "0.2"]
    state_path = base / ".mhafail-state/n1/mainlog.json"
    records = [f"record {i:04d} ".encode() + b"x" * 40 for i in range(110)]
    jlog = Jlog.open(service.logs["mainlog"])

    def output() -> bytes:
        files = sorted(p for p in base.glob("*/*/*/mainlog/*/n1") if p.is_file())
        return b"".join(f.read_bytes() for f in files)

    log = (tmp_path / "first.out").open("wb")
    first = spawn([sys.executable, "-c", _KILL_MID_WRITE, *args], stdout=log, stderr=log)
    try:
        with jlog.writer() as writer:
            writer.write_many(records[:10])  # 10 small writes: under the 1000-byte trigger
        _until(lambda: state_path.exists() and _records(state_path) == 10, "10 records saved")
        with jlog.writer() as writer:
            writer.write_many(records[10:])  # one big batch: the manager dies inside it
        assert first.wait(15) == 137
    finally:
        reap(first)
        log.close()
    state = StreamState.from_json(state_path.read_bytes())
    assert state.file is not None and (base / state.file).stat().st_size > state.offset
    assert not output().endswith(b"\n")  # torn inside a record

    log = (tmp_path / "second.out").open("wb")
    second = spawn([sys.executable, "-m", "mhafail", *args], stdout=log, stderr=log)
    try:
        _until(lambda: _records(state_path) == 110, "all 110 records saved", 30)
        assert read_records(output()) == records
    finally:
        reap(second)
        log.close()


def _records(state_path: Path) -> int:
    return StreamState.from_json(state_path.read_bytes()).records


def _until(predicate: Callable[[], bool], what: str, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)
