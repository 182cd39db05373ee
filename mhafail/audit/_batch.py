"""Increment batches: how series counts travel between nodes (pure: no I/O).

A node's series records the increments it counted locally, grouped by the
start of the window they fell in. ``AuditSeries.take_batch`` hands them out
as an :class:`IncrementBatch` stamped with the node's :class:`Origin` and a
sequence number; ``AuditSeries.merge`` on a receiving node adds them to the
same windows there. The transport (ZooKeeper-coordinated, written
elsewhere) only has to move batches; correctness lives here:

* Re-sending is safe. A receiver remembers the highest sequence applied per
  origin and ignores any batch at or below it, so a batch re-sent after a
  reconnect is counted once.
* A restarted node is a new origin (its incarnation differs), so its old
  and new increments never overlap; receivers hand its earlier
  incarnations' counts back as whole totals (``AuditSeries.origin_counts``
  and ``merge_history``), which count once however often they arrive.
* A dead node's increments age out with their windows; the receiver forgets
  an origin once every window it contributed to has aged out, and a batch
  arriving later only names windows that aged out too, so it adds nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs

from mhafail.audit._keys import KeyFamily
from mhafail.errors import AuditInvalidArgument

__all__ = ["IncrementBatch", "MergeOutcome", "MergeStatus", "Origin"]

BATCH_FORMAT_VERSION = 1

Key = int | str


@attrs.frozen(order=True)
class Origin:
    """Who counted a batch: a node name and the incarnation of its process.

    Attributes:
        node: the node's name in the cluster.
        incarnation: differs for every start of the node's process (for
            example its start time in nanoseconds, or its ZooKeeper
            session id); a restarted node is a new origin.
    """

    node: str
    incarnation: int


@attrs.frozen
class IncrementBatch:
    """Increments of one series, counted by one origin, keyed by window start.

    Attributes:
        series: the series name.
        family: the key family of the series.
        window_seconds: the window length of the series; receivers refuse a
            batch whose windows do not line up with theirs.
        origin: who counted the increments.
        seq: position in the origin's stream of batches, from 1 up.
        windows: ``{window_start: {key: increment}}`` (starts are epoch
            seconds, multiples of ``window_seconds``).
    """

    series: str
    family: KeyFamily
    window_seconds: int
    origin: Origin
    seq: int
    windows: Mapping[int, Mapping[Key, int]]

    def total(self) -> int:
        """Return the sum of every increment in the batch."""
        return sum(sum(counts.values()) for counts in self.windows.values())

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-serialisable form (addresses as integers).

        Returns:
            A dict that :meth:`from_json` turns back into an equal batch.
        """
        return {
            "v": BATCH_FORMAT_VERSION,
            "series": self.series,
            "family": self.family.value,
            "window_seconds": self.window_seconds,
            "origin": {"node": self.origin.node, "incarnation": self.origin.incarnation},
            "seq": self.seq,
            "windows": [
                [start, list(map(list, counts.items()))]
                for start, counts in sorted(self.windows.items())
            ],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IncrementBatch:
        """Rebuild a batch from :meth:`to_json` output, validating every field.

        Args:
            data: the decoded JSON object.

        Returns:
            The batch.

        Raises:
            AuditInvalidArgument: a field is missing, has the wrong type or
                the format version is unknown.
        """
        try:
            if data["v"] != BATCH_FORMAT_VERSION:
                raise AuditInvalidArgument(f"increment batch format v{data['v']} is not supported")
            family = KeyFamily(data["family"])
            key_type: type = str if family is KeyFamily.STRING else int
            windows: dict[int, dict[Key, int]] = {}
            for start, pairs in data["windows"]:
                counts: dict[Any, int] = {}
                for pair in pairs:
                    key: Any = pair[0]
                    n: Any = pair[1]
                    if len(pair) != 2 or type(key) is not key_type or type(n) is not int or n < 1:
                        raise AuditInvalidArgument(f"bad increment {key!r}: {n!r}")
                    counts[key] = counts.get(key, 0) + n
                windows[_int(start, "window start")] = counts
            origin = data["origin"]
            return cls(
                series=str(data["series"]),
                family=family,
                window_seconds=_int(data["window_seconds"], "window_seconds"),
                origin=Origin(str(origin["node"]), _int(origin["incarnation"], "incarnation")),
                seq=_int(data["seq"], "seq"),
                windows=windows,
            )
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            if isinstance(exc, AuditInvalidArgument):
                raise
            raise AuditInvalidArgument(f"malformed increment batch: {exc!r}") from None


def _int(value: object, what: str) -> int:
    if type(value) is not int:
        raise AuditInvalidArgument(f"increment batch {what} must be an integer, not {value!r}")
    return value


class MergeStatus(enum.Enum):
    """What ``AuditSeries.merge`` did with a batch."""

    APPLIED = "applied"
    """The batch was new; its live increments were counted."""
    DUPLICATE = "duplicate"
    """This sequence (or a later one) from the origin was already applied; nothing changed."""


@attrs.frozen
class MergeOutcome:
    """The result of merging one batch.

    Attributes:
        status: applied or duplicate.
        applied: increments now counted.
        stale: increments dropped because their window had already aged out.
        too_new: increments dropped because their window starts more than
            one window after this node's current one (a clock far ahead).
        gap: the sequence jumped, so batches from that origin were lost in
            transit (counts are low by what they held; nothing double-counts).
    """

    status: MergeStatus
    applied: int = 0
    stale: int = 0
    too_new: int = 0
    gap: bool = False
