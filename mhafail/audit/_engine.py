"""Answering parsed CIDR queries from a snapshot store.

For each series the store's plan picks the coarsest snapshot files that
cover the time range; each file is binary-searched for the target CIDR, so
the cost grows with the number of files and the number of matching keys,
not with the size of the files.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import attrs

from mhafail.audit._keys import KeyFamily, Prefix
from mhafail.audit._query import CountQuery, ShowAvailable, family_of, parse_query
from mhafail.audit._store import DAY, SnapshotRef, SnapshotStore
from mhafail.errors import AuditInvalidArgument, UnknownSeries

__all__ = ["QueryEngine", "QueryResult", "Row"]


@attrs.frozen
class Row:
    """One answer line: a prefix (or string key), optionally a day, and its counts.

    Attributes:
        cidr: the prefix text (``"198.18.0.0/16"``) or the string key.
        counts: one count per column of the result.
        day: the UTC day ``YYYY-MM-DD`` for ``aggregate daily``, else ``None``.
    """

    cidr: str
    counts: tuple[int, ...]
    day: str | None = None


@attrs.frozen
class QueryResult:
    """The answer to one query.

    Attributes:
        kind: ``"count"`` or ``"available"``.
        columns: the count columns: the series names, or one ``union(...)``.
        rows: the rows, in the order asked for.
        daily: rows are grouped per day.
        available: for ``show available``, one dict per series.
    """

    kind: str
    columns: tuple[str, ...] = ()
    rows: tuple[Row, ...] = ()
    daily: bool = False
    available: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Return the answer as a JSON-serialisable dict."""
        if self.kind == "available":
            return {"kind": "available", "series": list(self.available)}
        rows = []
        for row in self.rows:
            item: dict[str, Any] = {
                "cidr": row.cidr,
                "counts": dict(zip(self.columns, row.counts, strict=True)),
            }
            if len(row.counts) == 1:
                item["count"] = row.counts[0]
            if row.day is not None:
                item["day"] = row.day
            rows.append(item)
        return {"kind": "count", "columns": list(self.columns), "daily": self.daily, "rows": rows}

    def to_text(self) -> str:
        """Return the answer as an aligned text table, one line per row."""
        if self.kind == "available":
            fields = ("series", "family", "raw", "hourly", "daily", "first", "last")
            table = [list(fields)] + [[str(item[f]) for f in fields] for item in self.available]
        else:
            head = (["day"] if self.daily else []) + ["cidr", *self.columns]
            table = [head] + [
                ([row.day or ""] if self.daily else []) + [row.cidr, *map(str, row.counts)]
                for row in self.rows
            ]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        lines = []
        for line in table:
            cells = [
                cell.rjust(width) if cell.isdigit() and n > 0 else cell.ljust(width)
                for n, (cell, width) in enumerate(zip(line, widths, strict=True))
            ]
            lines.append("  ".join(cells).rstrip())
        return "\n".join(lines) + "\n"


def _day(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d")


@attrs.define(kw_only=True)
class QueryEngine:
    """Runs cidr_cli queries against a :class:`SnapshotStore`.

    Thread-safe: it keeps no state between queries, and the store's files
    are replaced atomically.

    Args:
        store: where the snapshot files are.
    """

    store: SnapshotStore

    def run(self, text: str) -> QueryResult:
        """Parse and answer one query.

        Args:
            text: the query, e.g. ``show count for 198.18.0.0/15 in conn``.

        Returns:
            The answer.

        Raises:
            QuerySyntaxError: the query does not parse.
            UnknownSeries: a named series has no snapshot files.
            AuditInvalidArgument: the target does not fit a series' family.
            SnapshotCorrupt: a snapshot file needed for the answer is damaged.
        """
        query = parse_query(text)
        if isinstance(query, ShowAvailable):
            return QueryResult(kind="available", available=tuple(self.store.available()))
        return self.execute(query)

    def execute(self, query: CountQuery) -> QueryResult:
        """Answer a parsed ``show count`` query (see :meth:`run`)."""
        index = self.store.index()
        known = set(index)
        for name in query.series:
            if name not in known:
                listing = ", ".join(sorted(known)) or "none"
                raise UnknownSeries(f"no snapshots for series {name!r} (available: {listing})")
        # per series: {day or None: {key or prefix-bucket: count}}
        per_series = [self._gather(query, name, index) for name in query.series]
        if query.union:
            columns: tuple[str, ...] = ("union(" + ",".join(query.series) + ")",)
            merged: dict[int | None, dict[Any, int]] = {}
            for groups in per_series:
                for day, counts in groups.items():
                    into = merged.setdefault(day, {})
                    for key, n in counts.items():
                        into[key] = into.get(key, 0) + n
            per_series = [merged]
        else:
            columns = query.series
        days = sorted({day for groups in per_series for day in groups}, key=lambda d: d or 0)
        if not query.daily and not days:
            days = [None]
        rows: list[Row] = []
        for day in days:
            rows.extend(self._rows(query, [groups.get(day, {}) for groups in per_series], day))
        return QueryResult(kind="count", columns=columns, rows=tuple(rows), daily=query.daily)

    def _gather(
        self, query: CountQuery, name: str, index: dict[str, dict[str, list[SnapshotRef]]]
    ) -> dict[int | None, dict[Any, int]]:
        family = family_of(query)
        target = query.target
        groups: dict[int | None, dict[Any, int]] = {}
        for ref in self.store.plan(name, query.start, query.end, index):
            snap = self.store.read(ref)
            if snap.family is not family:
                what = (
                    "a quoted key"
                    if snap.family is KeyFamily.STRING
                    else f"an {snap.family.value} CIDR"
                )
                raise AuditInvalidArgument(
                    f"series {name!r} counts {snap.family.value} keys; query it with {what}"
                )
            day = ref.start - ref.start % DAY if query.daily else None
            counts = groups.setdefault(day, {})
            if isinstance(target, str):
                counts[target] = counts.get(target, 0) + snap.string_count(target)
            elif query.cidrsize is None:
                counts[target] = counts.get(target, 0) + snap.range_total(target.first, target.last)
            else:
                keys, values = snap.range_items(target.first, target.last)
                for key, n in zip(keys, values, strict=True):
                    counts[key] = counts.get(key, 0) + n
        return groups

    def _rows(self, query: CountQuery, columns: list[dict[Any, int]], day: int | None) -> list[Row]:
        target = query.target
        if query.cidrsize is None or isinstance(target, str):
            cells = {target: tuple(col.get(target, 0) for col in columns)}
        else:
            cells = _break_down(target.family, query.cidrsize, columns)
        day_text = _day(day) if day is not None else None
        metric = (lambda c: c[0]) if len(columns) == 1 else max
        threshold = query.threshold
        kept = [(key, c) for key, c in cells.items() if threshold is None or metric(c) >= threshold]
        if query.order == "count":
            kept.sort(key=lambda kc: (-metric(kc[1]), _sort_key(kc[0])))
        else:
            kept.sort(key=lambda kc: _sort_key(kc[0]))
        if query.limit is not None:
            kept = kept[: query.limit]
        return [Row(str(key), counts, day_text) for key, counts in kept]


def _sort_key(key: Prefix | str) -> tuple[int, int, str]:
    if isinstance(key, Prefix):
        return key.value, key.length, ""
    return 0, 0, key


def _break_down(
    family: KeyFamily, sizes: tuple[int, int], columns: Iterable[dict[Any, int]]
) -> dict[Prefix | str, tuple[int, ...]]:
    width = family.width
    columns = list(columns)
    cells: dict[Prefix | str, list[int]] = {}
    for length in range(sizes[0], sizes[1] + 1):
        shift = width - length
        for i, col in enumerate(columns):
            grouped: dict[int, int] = {}
            for key, n in col.items():
                bucket = key >> shift
                grouped[bucket] = grouped.get(bucket, 0) + n
            for bucket, n in grouped.items():
                if n:
                    prefix = Prefix(family, bucket << shift, length)
                    cells.setdefault(prefix, [0] * len(columns))[i] = n
    return {key: tuple(c) for key, c in cells.items()}
