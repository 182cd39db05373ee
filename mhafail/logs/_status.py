"""Backlog per (node, log, subscriber): what ``mhafail logs status`` shows."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import attrs

from mhafail.jlog import Jlog, MessageId

from ._protocol import parse_id


@attrs.frozen
class SubscriberStatus:
    """One subscriber's position and backlog in one node's log.

    Attributes:
        node: the node holding the log.
        log: the log name.
        subscriber: the subscriber (a manager name, or any other reader).
        position: the subscriber's checkpoint: the last record it acknowledged.
        pending_records: records written after ``position``.
        pending_bytes: on-disk bytes after ``position`` (whole segments, plus
            the checkpoint's segment prorated by record count: an estimate).
        lag_seconds: age of the oldest pending record (0 when caught up).
    """

    node: str
    log: str
    subscriber: str
    position: MessageId
    pending_records: int
    pending_bytes: int
    lag_seconds: float

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the id printed as ``LLLLLLLL:MMMMMMMM``)."""
        doc = attrs.asdict(self)
        doc["position"] = str(self.position)
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SubscriberStatus:
        """Decode :meth:`to_json` output (as received in a STATUS reply).

        Raises:
            ProtocolError: a field is missing or has the wrong type.
        """
        from mhafail.errors import ProtocolError

        try:
            position = parse_id(doc["position"], "position")
            assert position is not None
            return cls(
                node=str(doc["node"]),
                log=str(doc["log"]),
                subscriber=str(doc["subscriber"]),
                position=position,
                pending_records=int(doc["pending_records"]),
                pending_bytes=int(doc["pending_bytes"]),
                lag_seconds=float(doc["lag_seconds"]),
            )
        except (KeyError, TypeError, ValueError, AssertionError) as exc:
            raise ProtocolError(f"malformed status entry {doc!r}: {exc}") from None


def log_status(
    node: str, name: str, jlog: Jlog, *, clock: Callable[[], float] = time.time
) -> list[SubscriberStatus]:
    """Return every subscriber's backlog in one jlog, sorted by subscriber.

    Reads without moving any checkpoint (a ghost tail finds the oldest
    pending record's time), so it is safe while managers stream.

    Raises:
        JlogError: the jlog cannot be read.
    """
    segments = jlog.segments()
    out = []
    with jlog.tail() as tail:
        for sub in jlog.subscribers():
            pos = sub.position
            pending_bytes = 0
            for seg in segments:
                if seg.log > pos.log:
                    pending_bytes += seg.size
                elif seg.log == pos.log and seg.records:
                    left = max(0, seg.records - pos.marker)
                    pending_bytes += seg.size * left // seg.records
            lag = 0.0
            if sub.pending:
                tail.position = pos
                first = tail.read_batch(1)
                if first:
                    lag = max(0.0, clock() - first[0].time)
            out.append(
                SubscriberStatus(
                    node=node,
                    log=name,
                    subscriber=sub.name,
                    position=pos,
                    pending_records=sub.pending,
                    pending_bytes=pending_bytes,
                    lag_seconds=round(lag, 3),
                )
            )
    return out
