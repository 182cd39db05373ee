"""History of a restarted node: its earlier incarnations' counts, moved between nodes.

A restarted node is a new origin; its receivers still hold what its earlier
incarnations sent (``AuditSeries.origin_counts``). Two messages move those
counts, both as whole per-origin totals that ``AuditSeries.merge_history``
applies once (a total at or below what is known from that origin changes
nothing; a larger one adds only its difference):

* The restarted node's first ``hello`` on each connection asks for them
  (``"history": max_bytes``); the receiver adds ``"history": [batch...]``
  to each series' entry of its reply, within that many bytes and its own
  frame cap. The node merges them into its own series, never to export
  them again as its own increments.
* A node that holds such history pushes it, as ``{"history": true,
  "batch": ...}`` items, to every receiver that did not report it, so a
  receiver that restarted (or joined) after the node did is refilled with
  those counts too.

Every history batch is checked like any batch from a peer, and must be
counted by another incarnation of the node it comes from or goes to.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mhafail.audit._batch import IncrementBatch, Origin
from mhafail.audit._series import AuditSeries
from mhafail.audit._wire import check_increments, encode_message
from mhafail.errors import AuditInvalidArgument, AuditProtocolError

__all__ = ["add_history", "check_history", "history_items", "read_history"]

log = logging.getLogger(__name__)

# Room in a message for a "history" key or item wrapper and its separators.
SLACK = 32


def check_history(data: object, name: str, node: Origin) -> IncrementBatch:
    """Return the history batch in ``data``, counted by an earlier incarnation of ``node``.

    Raises:
        AuditInvalidArgument: malformed, another series, or another node's
            (or ``node``'s current incarnation's) counts.
    """
    if not isinstance(data, dict):
        raise AuditInvalidArgument("a history entry is not a batch object")
    check_increments(data)
    batch = IncrementBatch.from_json(data)
    if batch.series != name:
        raise AuditInvalidArgument(f"a history of {batch.series!r} came as one of {name!r}")
    if batch.origin.node != node.node or batch.origin == node:
        raise AuditInvalidArgument(f"{batch.origin} is no earlier incarnation of {node}")
    return batch


def read_history(
    entry: Mapping[str, Any], name: str, node: Origin, peer: str
) -> list[IncrementBatch]:
    """Return the valid history batches in one series entry of a hello reply.

    Invalid batches are logged and left out; the others count.

    Raises:
        AuditProtocolError: ``history`` is there but is not a list.
    """
    history = entry.get("history", [])
    if not isinstance(history, list):
        raise AuditProtocolError(f"{peer} sent a history of {name} that is no list")
    batches = []
    for data in history:
        try:
            batches.append(check_history(data, name, node))
        except AuditInvalidArgument as exc:
            log.warning("ignored a history of %s from %s: %s", name, peer, exc)
    return batches


def add_history(
    reply: dict[str, Any], by_name: Mapping[str, AuditSeries], origin: Origin, limit: int
) -> int:
    """Add to each series entry of a hello ``reply`` what earlier incarnations of ``origin`` sent.

    The reply stays within ``limit`` bytes; batches that do not fit are
    left out (and logged): the restarted node then undercounts by them.

    Returns:
        How many history batches were added.
    """
    states: dict[str, dict[str, Any]] = reply["series"]
    used = len(encode_message(reply))
    added = left_out = 0
    for name, state in states.items():
        series = by_name.get(name)
        if series is None or "error" in state:
            continue
        history = []
        used += SLACK
        for batch in series.origin_counts(origin.node, origin.incarnation):
            data = batch.to_json()
            size = len(encode_message(data)) + 1
            if used + size > limit:
                left_out += 1
                continue
            used += size
            history.append(data)
        if history:
            state["history"] = history
            added += len(history)
    if left_out:
        log.warning(
            "left %d history batch(es) for %s out of a hello reply: over %d bytes",
            left_out,
            origin,
            limit,
        )
    return added


def history_items(
    series: AuditSeries, node: Origin, known: Mapping[Origin, int], budget: int
) -> list[dict[str, Any]]:
    """Return push items of the history ``series`` holds of ``node``'s earlier incarnations.

    Left out: origins the receiver reported (``known``: origin to the
    sequence it holds) at or past the same sequence, and what does not fit
    in ``budget`` bytes (logged).
    """
    items: list[dict[str, Any]] = []
    used = left_out = 0
    for batch in series.origin_counts(node.node, node.incarnation):
        if known.get(batch.origin, 0) >= batch.seq:
            continue
        item = {"history": True, "batch": batch.to_json()}
        size = len(encode_message(item)) + 1
        if used + size > budget:
            left_out += 1
            continue
        used += size
        items.append(item)
    if left_out:
        log.warning(
            "left %d history batch(es) of %s out of a push: over %d bytes",
            left_out,
            series.name,
            budget,
        )
    return items
