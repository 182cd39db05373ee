"""Fuzzing the audit cluster protocol's parsers: only AuditProtocolError may escape."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.audit import AuditSeries, ClusterAudit
from mhafail.audit._wire import check_increments, decode_message
from mhafail.errors import AuditInvalidArgument, AuditProtocolError

FUZZ = settings(max_examples=200, deadline=5000)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4)
    ),
    max_leaves=25,
)
_origin = st.fixed_dictionaries({"node": st.sampled_from(["a", "b"]), "incarnation": st.integers()})
_batch = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 2]),
        "series": st.sampled_from(["conn", "other"]),
        "family": st.sampled_from(["ipv4", "ipv6", "string", "x"]),
        "window_seconds": st.sampled_from([60, 0, "60"]),
        "origin": _origin,
        "seq": st.integers(-1, 5),
        "windows": st.lists(
            st.tuples(
                st.integers(0, 2**40), st.lists(st.tuples(_json, st.integers()), max_size=3)
            ).map(lambda w: [w[0], [list(p) for p in w[1]]]),
            max_size=3,
        ),
    }
)
_message = st.fixed_dictionaries(
    {
        "v": st.sampled_from([2, 1, "2"]),
        "type": st.sampled_from(["hello", "push", "x"]),
        "origin": _origin | _json,
        "series": st.lists(st.text(max_size=5), max_size=3) | _json,
        "items": st.lists(
            st.fixed_dictionaries(
                {"snapshot": st.booleans() | _json, "batch": _batch | _json},
                optional={"history": st.booleans() | _json},
            ),
            max_size=3,
        )
        | _json,
    },
    optional={"history": st.integers(-5, 1 << 20) | _json},
)


@pytest.fixture(scope="module")
def audit() -> ClusterAudit:
    """A receiver-side ClusterAudit that is never started (its parser needs no sockets)."""
    return ClusterAudit(node="m", series=[AuditSeries("conn", export_increments=True)])


@FUZZ
@given(st.binary(max_size=400))
def test_fuzzed_payloads_decode_or_raise_protocol_errors(data: bytes) -> None:
    """Any bytes as a message: a JSON object, or AuditProtocolError."""
    with contextlib.suppress(AuditProtocolError):
        assert isinstance(decode_message(data), dict)


@FUZZ
@given(_message)
def test_fuzzed_requests_are_answered_or_refused(audit: ClusterAudit, message: Any) -> None:
    """Any request shape: an answer, or AuditProtocolError; bad batches are refused by name."""
    with contextlib.suppress(AuditProtocolError):
        reply = audit._answer(decode_message(json.dumps(message).encode()))
        assert reply["ok"] is True


@FUZZ
@given(_batch | _json)
def test_fuzzed_batches_pass_or_fail_the_increment_bound(batch: Any) -> None:
    """check_increments accepts or raises AuditInvalidArgument on any batch-like JSON."""
    if isinstance(batch, dict):
        with contextlib.suppress(AuditInvalidArgument):
            check_increments(batch)
