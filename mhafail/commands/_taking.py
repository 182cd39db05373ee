"""Taking a batch of requests: claim znodes and run-once markers, before any handler runs.

A node claims the requests of a pass in one transaction and, while
ZooKeeper works on it, appends their markers with one ``fdatasync``
(the sync and the round trip overlap). Both must succeed before a
handler starts; either one alone already means "taken", so a request
whose claim or marker exists is never run again (``abandoned``). The
order between the two therefore does not matter for safety: a crash
between them leaves one of them, and the request is never run.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Sequence

import attrs

from mhafail.commands._journal import Markers
from mhafail.commands._model import claim_path
from mhafail.coordination import Znodes


@attrs.frozen
class Taken:
    """What :func:`take` did for each id.

    Attributes:
        run: ids both claimed and marked now: run these, once.
        marked_before: ids whose marker existed (never run them).
        claimed_before: ids another process had claimed under this node's name.
    """

    run: tuple[str, ...]
    marked_before: tuple[str, ...]
    claimed_before: tuple[str, ...]


def take(znodes: Znodes, markers: Markers, node: str, ids: Sequence[str], now: float) -> Taken:
    """Claim and mark ``ids`` at once (one transaction, one sync).

    Raises:
        CommandError: the markers could not be written (run none; claims
            that landed make them ``abandoned`` later).
        CoordinationError: the claims could not be made (run none; the
            markers stay, so these never run).
    """
    claim = {"node": node, "host": socket.gethostname(), "pid": os.getpid(), "at": now}
    data = json.dumps(claim).encode()
    marked: set[str] = set()

    def mark() -> None:
        marked.update(markers.take_many(list(ids)))

    created = znodes.create_each([(claim_path(rid, node), data) for rid in ids], meanwhile=mark)
    return Taken(
        run=tuple(r for r in ids if r in marked and created.get(claim_path(r, node))),
        marked_before=tuple(r for r in ids if r not in marked),
        claimed_before=tuple(
            r for r in ids if r in marked and not created.get(claim_path(r, node))
        ),
    )
