"""Fuzz: the CIDR query parser and engine raise only documented errors on any input."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.audit import IntervalCounts, KeyFamily, QueryEngine, SnapshotStore, parse_query
from mhafail.errors import AuditError

T0 = 1_717_200_000.0
V4 = 3323068416  # 198.18.0.0

# Fragments of the grammar, so random sequences reach deep into the parser.
_WORDS = [
    "show",
    "count",
    "available",
    "for",
    "in",
    "union",
    "(",
    ")",
    ",",
    "from",
    "to",
    "since",
    "on",
    "cidrsize",
    "order",
    "by",
    "cidr",
    "aggregate",
    "daily",
    "total",
    "limit",
    "threshold",
    "conn",
    "rcpt",
    "198.18.0.0/15",
    "198.18.0.1",
    "2001:db8::/32",
    "::/0",
    "0.0.0.0/0",
    "198.18.0.0/33",
    "1.2.3.4/",
    "/8",
    '"key"',
    '"un',
    '"a\\"b"',
    "2024-06-01",
    "2024-06-01T12:00",
    "2024-06-01T12:00:00Z",
    "2024-13-40",
    "1969-12-31",
    "9999-12-31",
    "\uff10",
    "٢",
    "32",
    "0",
    "-1",
    "99999999999999999999999",
    "24",
    "1e3",
    "Ⅻ",
    "\x00",
    "\u2028",
    "SHOW",
    "COUNT",
    "For",
    "IN",
]
_queries = st.one_of(
    st.text(max_size=200),
    st.lists(st.sampled_from(_WORDS), max_size=25).map(" ".join),
    st.lists(st.sampled_from(_WORDS), max_size=25).map("".join),
    st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
)


@settings(max_examples=300, deadline=1000)
@given(_queries)
def test_parse_query_raises_only_audit_errors(text: str) -> None:
    """Any text either parses or raises an AuditError subclass (QuerySyntaxError, ...)."""
    with contextlib.suppress(AuditError):
        parse_query(text)


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(_queries)
def test_engine_answers_or_raises_only_audit_errors(text: str) -> None:
    """Any text run against a real snapshot store answers or raises an AuditError subclass."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SnapshotStore(root=Path(tmp))
        store.write_interval(IntervalCounts("conn", KeyFamily.IPV4, T0, T0 + 60, {V4 + 1: 3}))
        store.write_interval(IntervalCounts("rcpt", KeyFamily.STRING, T0, T0 + 60, {"key": 2}))
        with contextlib.suppress(AuditError):
            QueryEngine(store=store).run(text)
