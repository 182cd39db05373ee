"""Property-based fuzzing of every parser of shared spool data: only documented errors escape."""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import zlib
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.coordination import Znode
from mhafail.errors import MalformedData
from mhafail.spool import LockRecord
from mhafail.spool._journal import read_journal
from mhafail.spool._message import MAGIC, Envelope, apply_state, decode_header, encode_header
from mhafail.spool._znodes import LockHolder, Order, TakeoverRecord

FAST = settings(
    max_examples=200, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
documents = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(["id", "sender", "recipients", "origin", "created", "size", "crc32",
                         "attempts", "next_try", "reason", "count", "holder", "token",
                         "purpose", "by", "state", "moved", "action", "to", "op", "n", "ids"]),
        json_values, max_size=8,
    ).map(lambda d: json.dumps(d).encode()),
)  # fmt: skip
_, MESSAGE = encode_header(
    "0" * 26, Envelope(sender="a@x", recipients=("b@x",)), origin="n1", created=1.0, data=b""
)


@FAST
@given(documents)
def test_message_headers_and_state_files(raw: bytes) -> None:
    """A header or state file of any bytes parses or raises MalformedData."""
    for candidate in (MAGIC + raw + b"\n", raw):
        with contextlib.suppress(MalformedData):
            decode_header(candidate, what="fuzz")
    with contextlib.suppress(MalformedData):
        apply_state(MESSAGE, raw, what="fuzz")


@FAST
@given(documents)
def test_lock_file_and_znode_records(raw: bytes) -> None:
    """Lock files and spool znodes of any bytes parse or raise MalformedData."""
    with contextlib.suppress(MalformedData):
        LockRecord.from_json(raw, what="fuzz")
    node = Znode(path="spool/x", data=raw, version=0, ephemeral_owner=1, created_zxid=5,
                 modified_ms=0)  # fmt: skip
    for parse in (LockHolder.from_znode, TakeoverRecord.from_znode, Order.from_znode):
        with contextlib.suppress(MalformedData):
            parse(node)


@settings(max_examples=100, deadline=1000)
@given(st.lists(documents, max_size=6))
def test_import_journal(lines: list[bytes]) -> None:
    """A journal of any lines is read with bad lines skipped and reported, never raised."""
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        (Path(tmp) / "import.journal").write_bytes(b"\n".join(lines))
        view = read_journal(Path(tmp))
    view.open_batch()
    assert view.moved() >= 0
    assert isinstance(view.complete, bool)


addresses = st.text(
    st.characters(blacklist_characters="<>", min_codepoint=33).filter(lambda c: ord(c) != 127),
    min_size=1,
    max_size=12,
)


@FAST
@given(
    sender=st.one_of(st.just(""), addresses),
    recipients=st.lists(addresses, min_size=1, max_size=4, unique=True),
    created=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(0, 2**40)),
    data=st.binary(max_size=64),
)
def test_a_header_is_the_line_json_would_write(
    sender: str, recipients: list[str], created: float, data: bytes
) -> None:
    """The hand-built header line is byte for byte json's compact encoding, and reads back."""
    envelope = Envelope(sender=sender, recipients=tuple(recipients))
    raw, message = encode_header("0" * 26, envelope, origin="n-1.a", created=created, data=data)
    expected = {
        "id": "0" * 26,
        "sender": sender,
        "recipients": recipients,
        "origin": "n-1.a",
        "created": created,
        "size": len(data),
        "crc32": zlib.crc32(data),
    }
    assert raw == MAGIC + json.dumps(expected, separators=(",", ":")).encode() + b"\n"
    if math.isfinite(created) and created >= 0:  # what a reader accepts
        decoded, start = decode_header(raw + data, what="header")
        assert decoded == message
        assert start == len(raw)
