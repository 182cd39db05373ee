"""The cidr_cli query language: tokenizer and parser (pure: no I/O).

Grammar (keywords are case-insensitive; ``[]`` optional, ``*`` repeated;
each clause at most once, in any order)::

    query      ::= "show" "available"
                 | "show" "count" "for" target "in" series clause*
    target     ::= CIDR | ADDRESS | QUOTED          (QUOTED: a key of a string series)
    series     ::= NAME ("," NAME)*                 one count per series
                 | "union" "(" NAME ("," NAME)* ")" the sum of the series
    clause     ::= "from" DATE "to" DATE            [from, to]; a date-only "to" includes that day
                 | "since" DATE                     [since, now]
                 | "on" DAY                         that UTC day
                 | "cidrsize" NUM ["to" NUM]        one row per prefix of these lengths
                 | "order" "by" ("cidr" | "count")  default cidr; count sorts largest first
                 | "aggregate" ["daily" | "total"]  total (default) or one group per UTC day
                 | "limit" NUM                      at most NUM rows (per day), 1..1000000
                 | "threshold" NUM                  only rows whose count is >= NUM
    DATE       ::= YYYY-MM-DD ["T" HH:MM[:SS]] ["Z"]   UTC, years 1970..9999
    DAY        ::= YYYY-MM-DD

Every error is a :class:`~mhafail.errors.QuerySyntaxError` carrying the
0-based character position and what was expected there.
"""

from __future__ import annotations

import datetime as dt
import re

import attrs

from mhafail.audit._keys import KeyFamily, Prefix, parse_prefix
from mhafail.audit._series import SERIES_NAME
from mhafail.errors import AuditInvalidArgument, QuerySyntaxError

__all__ = ["CountQuery", "ShowAvailable", "parse_query"]

MAX_LIMIT = 1_000_000
MAX_THRESHOLD = (1 << 63) - 1
_TOKEN = re.compile(r'\s*(?:([(),])|("(?:[^"\\]|\\.)*")|([^\s(),"]+))')
# re.ASCII: \d would otherwise take any Unicode digit (fullwidth "2024" parsed as 2024).
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?)?Z?", re.ASCII)
_MIN_YEAR = 1970


@attrs.frozen
class ShowAvailable:
    """``show available``: list the series and their snapshot files."""


@attrs.frozen
class CountQuery:
    """A parsed ``show count`` query.

    Attributes:
        target: the CIDR (a :class:`Prefix`) or, for string series, the key.
        series: the series named, in order.
        union: sum the series into one count instead of one count each.
        start: epoch second, inclusive, or ``None`` for no lower bound.
        end: epoch second, exclusive, or ``None`` for no upper bound.
        cidrsize: ``(smallest, largest)`` prefix lengths to break down into,
            or ``None`` for one row for the target itself.
        order: ``"cidr"`` or ``"count"``.
        daily: group rows per UTC day.
        limit: at most this many rows (per day), or ``None``.
        threshold: only rows whose count reaches it, or ``None``.
    """

    target: Prefix | str
    series: tuple[str, ...]
    union: bool = False
    start: int | None = None
    end: int | None = None
    cidrsize: tuple[int, int] | None = None
    order: str = "cidr"
    daily: bool = False
    limit: int | None = None
    threshold: int | None = None


Query = ShowAvailable | CountQuery


@attrs.frozen
class _Tok:
    text: str
    pos: int
    quoted: bool = False


def _tokenize(text: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    while True:
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            rest = text[pos:]
            if rest.strip():
                where = pos + len(rest) - len(rest.lstrip())
                raise QuerySyntaxError(
                    "unterminated string", position=where, expected='a closing "'
                )
            return tokens
        punct, quoted, word = match.groups()
        start = match.start(match.lastindex or 0)
        if quoted is not None:
            tokens.append(_Tok(re.sub(r"\\(.)", r"\1", quoted[1:-1]), start, quoted=True))
        else:
            tokens.append(_Tok(punct or word, start))
        pos = match.end()


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def fail(
        self, expected: str, tok: _Tok | None = None, message: str | None = None
    ) -> QuerySyntaxError:
        tok = tok if tok is not None else self.peek()
        if tok is None:
            return QuerySyntaxError(
                message or "unexpected end of query", position=len(self.text), expected=expected
            )
        return QuerySyntaxError(
            message or f"unexpected {tok.text!r}", position=tok.pos, expected=expected
        )

    def take(self, expected: str) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise self.fail(expected)
        self.i += 1
        return tok

    def keyword(self, *words: str) -> str:
        expected = " or ".join(repr(w) for w in words)
        tok = self.take(expected)
        if tok.quoted or tok.text.lower() not in words:
            raise self.fail(expected, tok)
        return tok.text.lower()

    def at(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and not tok.quoted and tok.text.lower() in words

    def number(self, what: str, low: int, high: int) -> int:
        expected = f"{what} ({low}..{high})"
        tok = self.take(expected)
        if tok.quoted or not tok.text.isascii() or not tok.text.isdigit():
            raise self.fail(expected, tok)
        if len(tok.text) > 20 or not low <= int(tok.text) <= high:
            raise self.fail(expected, tok, f"{tok.text} is out of range")
        return int(tok.text)

    def date(self, *, day_only: bool = False) -> tuple[int, bool, _Tok]:
        expected = "a date YYYY-MM-DD" + ("" if day_only else "[THH:MM[:SS]]") + " (UTC)"
        tok = self.take(expected)
        match = _DATE.fullmatch(tok.text)
        if tok.quoted or match is None or (day_only and match[4] is not None):
            raise self.fail(expected, tok)
        year, month, day, hour, minute, second = (
            int(p) if p is not None else 0 for p in match.groups()
        )
        if year < _MIN_YEAR:
            raise self.fail(expected, tok, f"{tok.text} is before {_MIN_YEAR}")
        try:
            when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.UTC)
        except ValueError as exc:
            raise self.fail(expected, tok, f"{tok.text} is not a valid date ({exc})") from None
        return int(when.timestamp()), match[4] is None, tok

    def series_name(self, seen: list[str]) -> str:
        tok = self.take("a series name")
        if tok.quoted or not SERIES_NAME.fullmatch(tok.text):
            raise self.fail("a series name (letters, digits, '_', '-')", tok)
        if tok.text in seen:
            raise self.fail("distinct series names", tok, f"series {tok.text!r} is named twice")
        return tok.text

    def series_list(self) -> tuple[str, ...]:
        names: list[str] = []
        names.append(self.series_name(names))
        while (tok := self.peek()) is not None and tok.text == "," and not tok.quoted:
            self.i += 1
            names.append(self.series_name(names))
        return tuple(names)

    def parse(self) -> Query:
        self.keyword("show")
        if self.keyword("available", "count") == "available":
            self.end()
            return ShowAvailable()
        self.keyword("for")
        target_tok = self.take("a CIDR such as 198.18.0.0/15 or 2001:db8::/32")
        target: Prefix | str
        if target_tok.quoted:
            target = target_tok.text
        else:
            try:
                target = parse_prefix(target_tok.text)
            except AuditInvalidArgument as exc:
                raise self.fail(
                    "a CIDR such as 198.18.0.0/15 or 2001:db8::/32", target_tok, str(exc)
                ) from None
        self.keyword("in")
        union = False
        if self.at("union"):
            self.i += 1
            if self.take("'('").text != "(":
                raise self.fail("'('", self.tokens[self.i - 1])
            names = self.series_list()
            close = self.take("',' or ')'")
            if close.text != ")":
                raise self.fail("',' or ')'", close)
            union = True
        else:
            names = self.series_list()
        return self._clauses(CountQuery(target=target, series=names, union=union))

    def _clauses(self, query: CountQuery) -> CountQuery:
        seen: set[str] = set()
        clauses = ("from", "since", "on", "cidrsize", "order", "aggregate", "limit", "threshold")
        while self.peek() is not None:
            tok = self.peek()
            assert tok is not None
            word = self.keyword(*clauses)
            group = "date" if word in ("from", "since", "on") else word
            if group in seen:
                raise self.fail(f"at most one {group} clause", tok, f"a second {group} clause")
            seen.add(group)
            query = self._clause(word, query)
        return query

    def _clause(self, word: str, query: CountQuery) -> CountQuery:
        handler = getattr(self, f"_clause_{word}")
        result: CountQuery = handler(query)
        return result

    def _clause_from(self, query: CountQuery) -> CountQuery:
        start, _, _ = self.date()
        self.keyword("to")
        end, day_only, tok = self.date()
        end = end + 86400 if day_only else end
        if end <= start:
            raise self.fail("a 'to' date after the 'from' date", tok, "the time range is empty")
        return attrs.evolve(query, start=start, end=end)

    def _clause_since(self, query: CountQuery) -> CountQuery:
        return attrs.evolve(query, start=self.date()[0])

    def _clause_on(self, query: CountQuery) -> CountQuery:
        day, _, _ = self.date(day_only=True)
        return attrs.evolve(query, start=day, end=day + 86400)

    def _clause_cidrsize(self, query: CountQuery) -> CountQuery:
        if not isinstance(query.target, Prefix):
            raise self.fail("no cidrsize for a string key", self.tokens[self.i - 1])
        width = query.target.family.width
        low = self.number("a prefix length", query.target.length, width)
        high = low
        if self.at("to"):
            self.i += 1
            high = self.number("a prefix length", low, width)
        return attrs.evolve(query, cidrsize=(low, high))

    def _clause_order(self, query: CountQuery) -> CountQuery:
        self.keyword("by")
        return attrs.evolve(query, order=self.keyword("cidr", "count"))

    def _clause_aggregate(self, query: CountQuery) -> CountQuery:
        mode = self.keyword("daily", "total") if self.at("daily", "total") else "total"
        return attrs.evolve(query, daily=mode == "daily")

    def _clause_limit(self, query: CountQuery) -> CountQuery:
        return attrs.evolve(query, limit=self.number("a row limit", 1, MAX_LIMIT))

    def _clause_threshold(self, query: CountQuery) -> CountQuery:
        return attrs.evolve(query, threshold=self.number("a count", 0, MAX_THRESHOLD))

    def end(self) -> None:
        if self.peek() is not None:
            raise self.fail("end of query")


def parse_query(text: str) -> Query:
    """Parse one query line.

    Args:
        text: e.g. ``show count for 198.18.0.0/15 in conn since 2024-05-01 cidrsize 24``.

    Returns:
        A :class:`ShowAvailable` or a :class:`CountQuery`.

    Raises:
        QuerySyntaxError: the text does not parse; ``position`` and
            ``expected`` say where and what.
    """
    if not isinstance(text, str):
        raise QuerySyntaxError("query must be text", position=0, expected="a query string")
    if len(text) > 10_000:
        raise QuerySyntaxError(
            "query is too long", position=10_000, expected="at most 10000 characters"
        )
    return _Parser(text).parse()


def family_of(query: CountQuery) -> KeyFamily:
    """Return the key family a query's target selects."""
    return query.target.family if isinstance(query.target, Prefix) else KeyFamily.STRING
