"""Parsers of outside input: command-line arguments, selectors, schemas, request and
reply znodes. Unit tests, then hypothesis fuzz tests (only documented errors escape)."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mhafail.commands import (
    Arg,
    ArgKind,
    Blob,
    Reply,
    ReplyStatus,
    Request,
    Requester,
    Schema,
    Selector,
    parse_cli_args,
)
from mhafail.commands._model import MAX_CHANNEL_OUTPUT, MAX_OUTPUT, encode_output
from mhafail.commands._schema import node_labels
from mhafail.errors import CommandInvalidArgument, MalformedData

FUZZ = settings(max_examples=200, deadline=1000)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def test_cli_arguments_are_text_unless_typed() -> None:
    """``k=v`` gives text, ``k:=json`` a typed value; malformed items name the problem."""
    assert parse_cli_args(["a=1", "b:=2", "c:=true", "d:=[\"x\"]", "e=x=y"]) == {
        "a": "1", "b": 2, "c": True, "d": ["x"], "e": "x=y",
    }  # fmt: skip
    for bad, message in [
        (["novalue"], "KEY=VALUE"),
        (["a=1", "a=2"], "twice"),
        (["a:={"], "bad JSON"),
        (['a:={"b": 1}'], "not a string"),
        (["A=1"], "invalid argument name"),
        (["a:=NaN"], "bad JSON"),
    ]:
        with pytest.raises(CommandInvalidArgument, match=message):
            parse_cli_args(bad)


def test_schema_converts_text_and_refuses_everything_else() -> None:
    """A schema converts exact text spellings and refuses unknown, missing and mistyped values."""
    schema = Schema(
        args=(
            Arg("n", ArgKind.INT, minimum=1, maximum=5),
            Arg("f", ArgKind.FLOAT, required=False, default=0.5),
            Arg("b", ArgKind.BOOL, required=False),
            Arg("s", choices=("a", "b"), required=False),
            Arg("l", ArgKind.STRS, required=False, pattern=r"[a-z]+"),
        )
    )
    assert schema.validate({"n": "3", "b": "true", "l": "x,y"}) == {
        "n": 3, "f": 0.5, "b": True, "s": None, "l": ["x", "y"],
    }  # fmt: skip
    for bad in [{}, {"n": 0}, {"n": True}, {"n": "3.0"}, {"n": 1, "s": "c"}, {"n": 1, "z": 1},
                {"n": 1, "l": ["X"]}, {"n": 1, "f": "inf"}]:  # fmt: skip
        with pytest.raises(CommandInvalidArgument):
            schema.validate(bad)
    with pytest.raises(CommandInvalidArgument, match="twice"):
        Schema(args=(Arg("a"), Arg("a")))
    with pytest.raises(CommandInvalidArgument, match="argument name"):
        Arg("Bad-Name")


def test_selector_matches_names_roles_and_labels() -> None:
    """Selectors match name globs, roles and ``key=value`` labels, all terms together."""
    labels = node_labels("mta-1", "host1", ("mta", "dc=east"), "1.0")
    assert Selector.parse("mta-*").matches(labels)
    assert Selector.parse("role=mta,dc=east").matches(labels)
    assert not Selector.parse("role=mta,dc=west").matches(labels)
    assert not Selector.parse("rack=1").matches(labels)
    for bad in ["", " ", "a b", "=x", "dc=", "k=v;rm"]:
        with pytest.raises(CommandInvalidArgument):
            Selector.parse(bad)


def test_output_cap_keeps_the_encoded_reply_within_the_cap() -> None:
    """Cut output, once JSON-encoded again in the reply, still fits the cap (escapes included)."""
    value, cut = encode_output('"\u00e9' * 1000, 100)
    assert cut and len(json.dumps(value).encode()) <= 100
    assert encode_output({"a": 1}, 100) == ({"a": 1}, False)
    with pytest.raises(CommandInvalidArgument):
        encode_output(object(), 100)


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=6))
def test_fuzz_cli_arguments(items: list[str]) -> None:
    """Any command line gives plain arguments or CommandInvalidArgument, nothing else."""
    try:
        args = parse_cli_args(items)
    except CommandInvalidArgument:
        return
    json.dumps(args)


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_selector(text: str) -> None:
    """Any selector text parses or raises CommandInvalidArgument; parsed ones can match."""
    try:
        selector = Selector.parse(text)
    except CommandInvalidArgument:
        return
    selector.matches(node_labels("n1", "h", ("mta", "dc=e"), "1"))


@FUZZ
@given(st.dictionaries(st.text(max_size=10), json_values, max_size=5))
def test_fuzz_schema_validation(args: dict[str, Any]) -> None:
    """Any argument mapping is validated or refused with CommandInvalidArgument."""
    schema = Schema(
        args=(Arg("a", ArgKind.INT, required=False), Arg("b", ArgKind.STRS, required=False))
    )
    with contextlib.suppress(CommandInvalidArgument):
        schema.validate(args)


VALID = Request(
    id="1700000000000-0123456789ab", command="ping", args={}, nodes=("n1",),
    requester=Requester(user="o", role="operator"),
    created=1.0, expires=2.0, keep_until=3.0, timeout=1.0,
)  # fmt: skip


@FUZZ
@given(
    st.dictionaries(st.sampled_from(sorted(json.loads(VALID.to_json()))), json_values, max_size=6)
)
def test_fuzz_request_znode(changes: dict[str, Any]) -> None:
    """A request znode with any fields replaced decodes or raises MalformedData, nothing else."""
    doc = json.loads(VALID.to_json())
    doc.update(changes)
    with contextlib.suppress(MalformedData):
        Request.from_json(json.dumps(doc).encode())


@FUZZ
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_reply_znode(data: bytes) -> None:
    """Any bytes in a reply znode decode or raise MalformedData, nothing else."""
    with contextlib.suppress(MalformedData):
        Reply.from_json(data)
    ok = Reply(id=VALID.id, node="n1", status=ReplyStatus.OK, output=[1])
    assert Reply.from_json(ok.to_json()) == ok


BLOB = {"endpoint": "127.0.0.1:7411", "size": 100_000, "sha256": "ab" * 32}


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(BLOB)), json_values, max_size=3) | json_values)
def test_fuzz_reply_blob(changes: Any) -> None:
    """A reply whose blob has any fields replaced (or is any value) decodes with a checked
    blob or raises MalformedData, nothing else."""
    doc = json.loads(Reply(id=VALID.id, node="n1", status=ReplyStatus.OK).to_json())
    doc["blob"] = {**BLOB, **changes} if isinstance(changes, dict) else changes
    with contextlib.suppress(MalformedData):
        reply = Reply.from_json(json.dumps(doc).encode())
        if reply.blob is not None:
            assert MAX_OUTPUT < reply.blob.size <= MAX_CHANNEL_OUTPUT
            assert len(reply.blob.sha256) == 64


def test_blob_round_trips_and_bad_blobs_name_the_problem() -> None:
    """A reply with a blob survives its JSON form; a bad size, hash or endpoint is named."""
    good = Reply(id=VALID.id, node="n1", status=ReplyStatus.OK, blob=Blob(**BLOB))
    assert Reply.from_json(good.to_json()) == good
    for field, value, words in (
        ("size", MAX_CHANNEL_OUTPUT + 1, "blob size"),
        ("size", 10, "blob size"),
        ("size", True, "blob size"),
        ("sha256", "xyz", "sha256"),
        ("endpoint", "no port or/slash", "endpoint"),
    ):
        doc = json.loads(good.to_json())
        doc["blob"][field] = value
        with pytest.raises(MalformedData, match=words):
            Reply.from_json(json.dumps(doc).encode())
