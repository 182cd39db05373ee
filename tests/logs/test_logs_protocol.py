"""The pure parts: log frames, record codec, secrets, output path patterns, state values."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mhafail.logs
from mhafail.errors import LogsError, LogsInvalidArgument, ProtocolError
from mhafail.jlog import Message, MessageId
from mhafail.logs import PathPattern, StreamState
from mhafail.logs import _auth as auth
from mhafail.logs._protocol import (
    FrameType,
    decode_ack,
    decode_frame,
    decode_json,
    decode_records,
    encode_ack,
    encode_frame,
    encode_json,
    encode_records,
    parse_id,
)
from mhafail.logs._session import split_frames


def test_public_names() -> None:
    """``mhafail.logs.__all__`` lists exactly the public names the package defines."""
    # pytest rewrites the installed package (its plugin lives in it): skip "@py_..." names.
    public = {n for n in vars(mhafail.logs) if n.isidentifier() and not n.startswith("_")}
    assert set(mhafail.logs.__all__) == public
    assert sorted(mhafail.logs.__all__) == [
        "Commit", "DEFAULT_PATTERN", "Framing", "JlogService", "LogAggregator", "PathPattern",
        "StreamState", "StreamStatus", "SubscriberStatus", "ensure_log", "query_status",
        "read_records", "read_secret_file",
    ]  # fmt: skip


def _batch(log: int, first: int, payloads: list[bytes]) -> list[Message]:
    return [Message(MessageId(log, first + i), 1000 + i, i, p) for i, p in enumerate(payloads)]


@given(
    st.integers(0, 2**32 - 1),
    st.integers(1, 2**31),
    st.lists(st.binary(max_size=300), min_size=1, max_size=40),
)
def test_records_round_trip(log: int, first: int, payloads: list[bytes]) -> None:
    """A RECORDS frame decodes to the same ids, times and payloads."""
    frame = decode_frame(encode_records(_batch(log, first, payloads)))
    assert frame.type is FrameType.RECORDS
    records = decode_records(frame.body)
    assert records.payloads == payloads
    assert records.first_id == MessageId(log, first)
    assert records.last_id == MessageId(log, first + len(payloads) - 1)
    assert records.secs == [1000 + i for i in range(len(payloads))]
    assert list(records.ids()) == [MessageId(log, first + i) for i in range(len(payloads))]


def test_drop_through_keeps_only_records_after_the_position() -> None:
    """A resent prefix is dropped record by record; an older position keeps everything."""
    records = decode_records(encode_records(_batch(2, 10, [b"a", b"b", b"c"]))[1:])
    assert records.drop_through(MessageId(2, 11)).payloads == [b"c"]
    assert records.drop_through(MessageId(2, 11)).first_id == MessageId(2, 12)
    assert records.drop_through(MessageId(1, 99)).payloads == [b"a", b"b", b"c"]
    assert records.drop_through(MessageId(2, 12)).payloads == []
    assert records.drop_through(MessageId(3, 0)).payloads == []


def test_non_consecutive_batch_is_refused() -> None:
    """Records from two segments cannot share a frame (their ids would be wrong)."""
    batch = [Message(MessageId(1, 5), 0, 0, b"a"), Message(MessageId(2, 1), 0, 0, b"b")]
    with pytest.raises(ProtocolError, match="consecutive"):
        encode_records(batch)


@pytest.mark.parametrize(("data", "match"), [(b"", "empty"), (b"\x63", "unknown frame type")])
def test_malformed_frames_are_refused(data: bytes, match: str) -> None:
    """Empty payloads and unknown frame types raise ProtocolError."""
    with pytest.raises(ProtocolError, match=match):
        decode_frame(data)


@settings(max_examples=200, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzzed_log_frames_raise_only_protocol_errors(data: bytes) -> None:
    """Any bytes as a log frame: decoding it as its type says raises at most ProtocolError."""
    try:
        frame = decode_frame(data)
        if frame.type is FrameType.RECORDS:
            decode_records(frame.body)
        elif frame.type is FrameType.ACK:
            decode_ack(frame.body)
        elif frame.type is not FrameType.HEARTBEAT:
            doc = decode_json(frame)
            parse_id(doc.get("after"), "after")
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=5000)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
        ),
        max_leaves=30,
    )
)
def test_fuzzed_json_control_frames_raise_only_protocol_errors(doc: object) -> None:
    """Any JSON value in a control frame decodes to an object or raises ProtocolError."""
    import json

    payload = encode_frame(FrameType.OPEN, json.dumps(doc).encode())
    with contextlib.suppress(ProtocolError):
        assert isinstance(decode_json(decode_frame(payload)), dict)


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00",  # shorter than the header
        struct.pack(">III", 1, 0, 1) + bytes(12) + b"",  # marker 0
        struct.pack(">III", 1, 1, 2) + bytes(24),  # lengths 0,0 but nothing left? fine -> ok
        struct.pack(">III", 1, 1, 1) + struct.pack("<III", 0, 0, 5) + b"abc",  # short payload
        struct.pack(">III", 1, 1, 1000),  # arrays missing
    ],
)
def test_malformed_records_bodies(body: bytes) -> None:
    """Truncated or inconsistent RECORDS bodies raise ProtocolError (except a valid empty pair)."""
    if body == struct.pack(">III", 1, 1, 2) + bytes(24):
        assert decode_records(body).payloads == [b"", b""]
        return
    with pytest.raises(ProtocolError):
        decode_records(body)


def test_control_frames_and_acks() -> None:
    """JSON control frames and ACKs round-trip; non-object JSON and bad ACK sizes are refused."""
    frame = decode_frame(encode_json(FrameType.OPEN, {"op": "list"}))
    assert decode_json(frame) == {"op": "list"}
    bad = decode_frame(encode_frame(FrameType.OPEN, b"[1, 2]"))
    with pytest.raises(ProtocolError, match="object"):
        decode_json(bad)
    with pytest.raises(ProtocolError, match="nests too deeply"):
        decode_json(decode_frame(encode_frame(FrameType.OPEN, b"[" * 50000)))
    ack = decode_frame(encode_ack(MessageId(3, 7)))
    assert decode_ack(ack.body) == MessageId(3, 7)
    with pytest.raises(ProtocolError, match="ACK"):
        decode_ack(b"\x00")
    assert parse_id(None, "after") is None
    with pytest.raises(ProtocolError, match="not an id"):
        parse_id("zz", "after")
    with pytest.raises(ProtocolError, match="string"):
        parse_id(5, "after")


def test_split_frames_respects_the_limit() -> None:
    """Batches are cut so every frame fits; a record too big for any frame gets its own run."""
    batch = _batch(1, 1, [b"x" * 1000] * 10)
    runs = split_frames(batch, 3500)
    assert [len(r) for r in runs] == [3, 3, 3, 1]
    assert all(len(encode_records(r)) + 4 + 32 <= 3500 for r in runs)  # with the channel MAC
    assert [len(r) for r in split_frames(_batch(1, 1, [b"x" * 5000]), 3500)] == [1]


def test_secret_checks_and_files(tmp_path: Path) -> None:
    """Short secrets are refused; a secret file open to group or others is refused, like ssh."""
    with pytest.raises(LogsInvalidArgument, match="at least 16"):
        auth.check_secret(b"short")
    path = tmp_path / "secret"
    path.write_bytes(b"0123456789abcdef-secret\n")
    path.chmod(0o644)
    with pytest.raises(LogsInvalidArgument, match=r"mode 0644.*chmod 600"):
        mhafail.logs.read_secret_file(path)
    path.chmod(0o640)
    with pytest.raises(LogsInvalidArgument, match="group or others"):
        mhafail.logs.read_secret_file(path)
    path.chmod(0o600)
    assert mhafail.logs.read_secret_file(path) == b"0123456789abcdef-secret"
    with pytest.raises(LogsInvalidArgument, match="cannot read"):
        mhafail.logs.read_secret_file(tmp_path / "missing")


@pytest.mark.parametrize(
    ("pattern", "match"),
    [
        ("%Y/{log}", "must contain"),
        ("%Y/%M/{log}/{node}", "only %Y"),
        ("/abs/{log}/{node}", "relative"),
        ("%Y/../{log}/{node}", "relative"),
        ("{log}/{node}/{host}", "placeholders"),
    ],
)
def test_bad_output_patterns_are_refused(pattern: str, match: str) -> None:
    """Patterns that could mix streams or escape the base directory are refused with a reason."""
    with pytest.raises(LogsInvalidArgument, match=match):
        PathPattern(pattern, "c1")


def test_pattern_render_and_period() -> None:
    """The default pattern is Momentum's tree; a file's period holds exactly its day (or hour)."""
    import time

    when = time.mktime((2024, 3, 9, 13, 30, 0, 0, 0, -1))
    daily = PathPattern(cluster="c1")
    assert daily.render(when, node="n1", log="mainlog") == "2024/03/09/mainlog/c1/n1"
    lo, hi = daily.period(when)
    assert daily.render(lo, node="n", log="l") == daily.render(hi - 1, node="n", log="l")
    assert daily.render(hi, node="n", log="l") != daily.render(lo, node="n", log="l")
    hourly = PathPattern("%Y%m%d%H-{node}-{log}", "c1")
    assert hourly.render(when, node="n1", log="acct") == "2024030913-n1-acct"
    assert hourly.period(when)[1] - hourly.period(when)[0] == 3600


def test_stream_state_round_trip_and_damage() -> None:
    """A state file round-trips; a damaged one is an error, never a silent fresh start."""
    state = StreamState(last_id=MessageId(1, 2), file="a/b", offset=10, records=5)
    assert StreamState.from_json(state.to_json()) == state
    assert StreamState.from_json(StreamState().to_json()) == StreamState()
    with pytest.raises(LogsError, match="malformed"):
        StreamState.from_json(b'{"last_id": "x"}')
