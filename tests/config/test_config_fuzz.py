"""Property-based fuzz tests for every config parser of outside input.

Heads and reports (ZooKeeper data anyone with access could write), paths
and shas (operators and peers), raw git tree objects (peers) and the
confined file writer: whatever the input, only :class:`InvalidChange`
escapes, accepted values obey the documented rules, and each case runs
within a deadline.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.config import Head, NodeReport, check_path
from mhafail.config._paths import check_component, check_sha
from mhafail.config._safefs import read_regular, remove_file, write_file
from mhafail.config._serve import repo_url
from mhafail.config._trees import _entries
from mhafail.errors import InvalidChange

FAST = settings(max_examples=200, deadline=timedelta(milliseconds=500))
SHA = re.compile(r"[0-9a-f]{40}")

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
shas = st.one_of(
    st.text(alphabet="0123456789abcdef", min_size=40, max_size=40),
    st.text(alphabet="0123456789abcdefABCDEFx- \n\u0663", min_size=38, max_size=42),
    st.text(max_size=45),
)
head_like = st.fixed_dictionaries(
    {},
    optional={
        "sha": shas | json_values,
        "parent": shas | json_values,
        "origin": st.text(max_size=70) | json_values,
        "author": st.text(max_size=30) | json_values,
        "message": st.text(max_size=30) | json_values,
        "time": json_values,
    },
)
report_like = st.fixed_dictionaries(
    {},
    optional={
        "sha": shas | json_values,
        "target": shas | json_values,
        "state": st.sampled_from(["applied", "pending", "rejected", "held", "x"]) | json_values,
        "mode": st.sampled_from(["always", "if_unchanged", "frozen", "y"]) | json_values,
        "error": st.text(max_size=30) | json_values,
        "time": json_values,
    },
)


def _encode(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


raw_bytes = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda n: b"[" * n, st.integers(0, 20_000)),
    st.builds(_encode, json_values),
)


@FAST
@given(st.builds(_encode, head_like) | raw_bytes)
def test_head_parser_raises_only_invalid_change(data: bytes) -> None:
    """Any bytes give a checked Head or InvalidChange; an accepted head obeys every rule."""
    try:
        head = Head.from_json(data)
    except InvalidChange:
        return
    assert SHA.fullmatch(head.sha)
    assert head.parent is None or SHA.fullmatch(head.parent)
    assert head.origin == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", head.origin)
    assert head.time >= 0 and head.time != float("inf")
    assert Head.from_json(head.to_json()) == head


@FAST
@given(
    st.text(max_size=70) | st.sampled_from(["n1", "node-2", "a.b_c"]),
    st.builds(_encode, report_like) | raw_bytes,
)
def test_report_parser_raises_only_invalid_change(node: str, data: bytes) -> None:
    """Any node name and bytes give a checked NodeReport or InvalidChange; it round-trips."""
    try:
        report = NodeReport.from_json(node, data)
    except InvalidChange:
        return
    assert report.sha is None or SHA.fullmatch(report.sha)
    assert report.target is None or SHA.fullmatch(report.target)
    assert NodeReport.from_json(node, report.to_json()) == report


@FAST
@given(shas | st.text(max_size=45))
def test_check_sha_accepts_exactly_forty_lower_case_ascii_hex(value: str) -> None:
    """check_sha accepts a string iff it is 40 ASCII [0-9a-f]; otherwise InvalidChange."""
    try:
        assert check_sha(value) == value
    except InvalidChange:
        assert SHA.fullmatch(value) is None
    else:
        assert SHA.fullmatch(value)


path_parts = st.sampled_from(
    ["a", "..", ".", "", ".git", ".GiT", "b c", "x\\y", "\x00", "é", "\udcff"]
)
paths = st.one_of(
    st.text(max_size=80),
    st.lists(path_parts | st.text(max_size=8), min_size=1, max_size=6).map("/".join),
)


@FAST
@given(paths)
def test_check_path_accepts_only_safe_relative_paths(path: str) -> None:
    """An accepted path has only safe components; everything else is InvalidChange."""
    try:
        check_path(path)
    except InvalidChange:
        return
    assert not path.startswith("/")
    for part in path.split("/"):
        assert part not in ("", ".", "..") and part.lower() != ".git"
        assert not any(ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in part)
        assert check_component(part) == part
    path.encode()  # UTF-8 encodable


entry = st.tuples(
    st.sampled_from([b"100644", b"100755", b"40000", b"120000", b"160000", b"1", b""]),
    st.binary(max_size=12) | st.sampled_from([b"..", b".", b".git", b"a/b", b"ok", b"\xff"]),
    st.binary(min_size=20, max_size=20),
)


@FAST
@given(st.lists(entry, max_size=8), st.binary(max_size=30))
def test_raw_tree_parser_raises_only_invalid_change(
    entries: list[tuple[bytes, bytes, bytes]], tail: bytes
) -> None:
    """Any raw tree object parses into safe names or raises InvalidChange."""
    body = b"".join(mode + b" " + name + b"\0" + oid for mode, name, oid in entries) + tail
    try:
        parsed = list(_entries(body, "global/"))
    except InvalidChange:
        return
    names = [name for _, name, _ in parsed]
    assert len(set(names)) == len(names)
    for name in names:
        assert check_component(name) == name


@settings(
    max_examples=100,
    deadline=timedelta(seconds=2),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.tuples(paths, st.binary(max_size=20) | st.none()), max_size=6))
def test_confined_writes_never_leave_the_root(ops: list[tuple[str, bytes | None]]) -> None:
    """Writes, removals and reads under a root with a planted symlink stay inside the root."""
    with tempfile.TemporaryDirectory() as top:
        outside = Path(top) / "outside"
        outside.mkdir()
        (outside / "secret").write_bytes(b"secret")
        root = Path(top) / "root"
        root.mkdir()
        (root / "link").symlink_to(outside)
        (root / "pw").symlink_to(outside / "secret")
        for path, data in ops:
            try:
                if data is None:
                    remove_file(root, path)
                else:
                    write_file(root, path, data)
                    assert read_regular(root, path) == data
            except InvalidChange:
                pass
        assert sorted(os.listdir(outside)) == ["secret"]
        assert (outside / "secret").read_bytes() == b"secret"
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                real = os.path.realpath(os.path.join(dirpath, name))
                assert real.startswith(str(root) + "/") or name in ("link", "pw")


@FAST
@given(
    st.text(max_size=60)
    | st.sampled_from(["127.0.0.1:9418", "[::1]:9418", "h/x:1", "-u:1", "a:1/../b", "a@b:1"])
)
def test_member_git_endpoints_are_host_port_only(endpoint: str) -> None:
    """A member's git endpoint becomes a git:// URL only when it is a plain host:port."""
    try:
        url = repo_url(endpoint, "mta")
    except InvalidChange:
        return
    host, _, port = endpoint.rpartition(":")
    assert url == f"git://{endpoint}/mta/export" and port.isascii() and port.isdigit()
    assert not any(ch in host for ch in "/@?#\\ ") and not host.startswith("-")
