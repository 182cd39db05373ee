"""Shared data parsers (issue 11, finding 4): only MalformedData escapes, caps hold.

Property-based: the JSON helper, member info, claims and node documents.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail._json import decode_object, nesting_depth
from mhafail.coordination import NodeInfo
from mhafail.errors import MalformedData
from mhafail.vip._paths import Claim, node_from_json

_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_JSON = st.recursive(
    _LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
_BYTES = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps(v, allow_nan=True).encode(), _JSON),
    st.builds(
        lambda n, c: c * n,
        st.integers(0, 30000),
        st.sampled_from([b"[", b"{", b'{"a":', b'["', b"\\"]),
    ),
)
_MEMBER_FIELDS = st.fixed_dictionaries(
    {"name": st.one_of(st.just("n1"), _JSON)},
    optional={
        k: _JSON
        for k in (
            "addresses",
            "interfaces",
            "roles",
            "version",
            "started_at",
            "host",
            "pid",
            "endpoints",
        )
    },
)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"[" * 5000, "nested 5000 deep"),
        (b"[]", "not an object"),
        (b"x" * 70000, "over the 65536 cap"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": 1e400}', "out of range"),
        (b"\xff", "codec"),
    ],
)
def test_known_poison_is_malformed_data(data: bytes, fragment: str) -> None:
    """Each poison of the security review gives MalformedData naming the problem."""
    with pytest.raises(MalformedData, match=fragment):
        decode_object(data, what="x")


def test_member_info_poison_is_malformed_data() -> None:
    """A member znode of ``[]`` or with mistyped fields is MalformedData, not AttributeError."""
    for data in (b"[]", b'{"name": "n1", "addresses": "abc"}', b'{"name": "n1", "pid": true}'):
        with pytest.raises(MalformedData):
            NodeInfo.from_json(data)


@settings(max_examples=300, deadline=1000)
@given(_BYTES)
def test_fuzz_decode_object_raises_only_malformed_data(data: bytes) -> None:
    """Any bytes decode to a dict or raise MalformedData; nothing else escapes."""
    with contextlib.suppress(MalformedData):
        assert isinstance(decode_object(data, what="fuzz"), dict)


@settings(max_examples=200, deadline=1000)
@given(_JSON)
def test_fuzz_nesting_depth_is_exact_for_valid_json(value: object) -> None:
    """The pre-parse depth scan equals the real nesting of valid JSON."""

    def depth(v: object) -> int:
        if isinstance(v, list):
            return 1 + max((depth(x) for x in v), default=0)
        if isinstance(v, dict):
            return 1 + max((depth(x) for x in v.values()), default=0)
        return 0

    assert nesting_depth(json.dumps(value).encode()) == depth(value)


@settings(max_examples=300, deadline=1000)
@given(_MEMBER_FIELDS | _JSON)
def test_fuzz_member_info_raises_only_malformed_data(raw: object) -> None:
    """Any JSON document as member info decodes (and round-trips) or raises MalformedData."""
    try:
        info = NodeInfo.from_json(json.dumps(raw).encode())
    except MalformedData:
        return
    assert NodeInfo.from_json(info.to_json()) == info


@settings(max_examples=200, deadline=1000)
@given(_BYTES)
def test_fuzz_member_bytes_raise_only_malformed_data(data: bytes) -> None:
    """Any znode bytes as member info raise at most MalformedData."""
    with contextlib.suppress(MalformedData):
        NodeInfo.from_json(data)


@settings(max_examples=200, deadline=1000)
@given(_BYTES | st.builds(lambda v: json.dumps(v).encode(), _MEMBER_FIELDS))
def test_fuzz_claims_and_node_documents_never_raise(data: bytes) -> None:
    """Claim and move-target/drain documents read as a value or None, never an exception."""
    claim = Claim.from_json(data, 7)
    assert claim is None or claim.session == 7
    node_from_json(data)
