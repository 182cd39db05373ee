"""Values and checks shared by audit series: names, limits, interval counts, stats (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from mhafail.audit._batch import IncrementBatch
from mhafail.audit._keys import KeyFamily
from mhafail.errors import AuditInvalidArgument

__all__ = [
    "MAX_INCREMENT",
    "MAX_STRING_KEY_BYTES",
    "SERIES_NAME",
    "IntervalCounts",
    "SeriesStats",
    "check_batch",
    "check_name",
    "check_positive",
    "check_string_key",
    "to_family",
]

Key = int | str

SERIES_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
# One add() may count at most this many; with it, a u64 snapshot count only
# saturates after four billion maximal adds to one key in one interval.
MAX_INCREMENT = (1 << 32) - 1
# Snapshot files store a string key's UTF-8 bytes behind a 2-byte length.
MAX_STRING_KEY_BYTES = 0xFFFF
# A batch sums many adds, so it may carry up to what a snapshot count can hold.
_MAX_COUNT = (1 << 64) - 1


def check_name(_inst: object, _attr: object, value: Any) -> None:
    if not isinstance(value, str) or not SERIES_NAME.fullmatch(value):
        raise AuditInvalidArgument(
            f"series name {value!r} must be 1-64 letters, digits, '_' or '-' "
            "(no '.': it separates the snapshot timestamp)"
        )


def check_positive(_inst: object, attr: attrs.Attribute[int], value: Any) -> None:
    if type(value) is not int or value < 1:
        raise AuditInvalidArgument(f"{attr.name} must be a positive integer, not {value!r}")


def check_string_key(key: str) -> None:
    # A key that a snapshot file cannot hold would cost the whole interval
    # of every key at the next as_logger write: refuse it at add() instead.
    if key.isascii() and len(key) <= MAX_STRING_KEY_BYTES:
        return
    try:
        size = len(key.encode())
    except UnicodeEncodeError:
        raise AuditInvalidArgument(f"string key {key[:40]!r} is not valid Unicode text") from None
    if size > MAX_STRING_KEY_BYTES:
        raise AuditInvalidArgument(
            f"string key of {size} UTF-8 bytes is longer than {MAX_STRING_KEY_BYTES}"
        )


def to_family(value: KeyFamily | str) -> KeyFamily:
    try:
        return KeyFamily(value)
    except ValueError:
        raise AuditInvalidArgument(f"family must be ipv4, ipv6 or string, not {value!r}") from None


@attrs.frozen
class IntervalCounts:
    """The counts one series gathered between two as_logger snapshots.

    Attributes:
        series: the series name.
        family: its key family.
        start: epoch seconds the interval started.
        end: epoch seconds it ended (when it was taken).
        counts: increments per exact key.
        dropped: increments not in ``counts`` because ``max_keys`` was hit.
    """

    series: str
    family: KeyFamily
    start: float
    end: float
    counts: Mapping[Key, int]
    dropped: int = 0

    def total(self) -> int:
        """Return the sum of ``counts`` (``dropped`` excluded)."""
        return sum(self.counts.values())


@attrs.frozen
class SeriesStats:
    """Size and health of a series, for monitoring and capacity planning.

    Attributes:
        name: the series name.
        family: its key family.
        current_start: epoch second window 0 started.
        keys: distinct exact keys per window, window 0 first.
        dropped: per window, increments whose exact key was not stored
            because ``max_keys`` was reached (totals stay exact).
        exact_up_to: per window, the longest prefix length whose counts
            are still exact there: a level that drops entries makes every
            prefix answered from it (longer than the kept level before
            it, e.g. /9 to /16 once the /16 level is full) a lower bound.
            The family's width (32, 128; 0 for strings) when nothing was
            dropped.
        origins: remote origins whose batches are remembered.
    """

    name: str
    family: KeyFamily
    current_start: int
    keys: tuple[int, ...]
    dropped: tuple[int, ...]
    origins: int
    exact_up_to: tuple[int, ...] = ()


def check_batch(batch: IncrementBatch, name: str, family: KeyFamily, window_seconds: int) -> None:
    """Refuse a batch that cannot merge into series ``name`` (family, windows, keys, counts).

    Raises:
        AuditInvalidArgument: naming the first problem.
    """
    if batch.series != name or batch.family is not family:
        raise AuditInvalidArgument(
            f"batch for {batch.family.value} series {batch.series!r} cannot merge into "
            f"{family.value} series {name!r}"
        )
    if batch.window_seconds != window_seconds:
        raise AuditInvalidArgument(
            f"batch windows of {batch.window_seconds} s do not line up with "
            f"{window_seconds} s windows"
        )
    if batch.seq < 1:
        raise AuditInvalidArgument(f"batch sequence {batch.seq} must be at least 1")
    max_value = (1 << family.width) - 1 if family.width else -1
    for start, counts in batch.windows.items():
        if type(start) is not int or start % window_seconds:
            raise AuditInvalidArgument(f"batch window start {start!r} is not a window boundary")
        for key, n in counts.items():
            if type(n) is not int or n < 1 or n > _MAX_COUNT:
                raise AuditInvalidArgument(
                    f"batch increment {n!r} for {key!r} is not an integer from 1 to {_MAX_COUNT}"
                )
            if type(key) is int and 0 <= key <= max_value:
                continue
            # Batches carry parsed keys only: a str in an address batch is an error.
            if family is KeyFamily.STRING and isinstance(key, str):
                check_string_key(key)
                continue
            raise AuditInvalidArgument(f"batch key {key!r} is not a {family.value} key")
