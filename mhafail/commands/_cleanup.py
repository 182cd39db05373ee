"""Keeping the command folders small: retiring answered requests and garbage collection.

Once every node asked has answered, a request leaves ``requests/`` (its
cache entry in ``results/`` stays): the folder every node watches then
holds only unanswered requests. Retirements are batched (``RETIRE_DELAY``)
and deleted in one transaction, so a burst of answered requests reaches
each node as one change of its watch, not one per request.

The garbage collector deletes requests past ``keep_until``, result folders
whose request never arrived, requests without results, and retires
answered requests another manager did not.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mhafail.commands._model import REQUESTS, RESULTS, reply_path, request_path
from mhafail.commands._reading import cached_requests
from mhafail.coordination import Znodes
from mhafail.errors import CoordinationError

logger = logging.getLogger(__name__)

ORPHAN_AGE = 600.0
"""Seconds after which a results folder without its request is garbage."""
RETIRE_DELAY = 0.5
"""Seconds a manager gathers answered requests before it takes them out of the node folder."""


def retire(z: Znodes, rids: list[str]) -> None:
    """Take answered requests out of the folder nodes watch, in one transaction."""
    try:
        z.delete_all([request_path(rid) for rid in rids])
    except CoordinationError as exc:  # the garbage collector retires them later
        logger.info("%d requests stay in the node folder for now: %s", len(rids), exc)


class Retirer:
    """Retires answered requests off the caller's path, batched on a short-lived thread.

    Thread safety: :meth:`add` may be called from any thread.
    """

    def __init__(self, znodes: Callable[[], Znodes]) -> None:
        self._znodes = znodes
        self._lock = threading.Lock()
        self._queue: list[str] = []
        self._thread: threading.Thread | None = None

    def add(self, rid: str) -> None:
        """Retire ``rid`` within about ``RETIRE_DELAY`` seconds."""
        with self._lock:
            self._queue.append(rid)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="mhafail-command-retire", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(RETIRE_DELAY)
            with self._lock:
                batch, self._queue = self._queue, []
                if not batch:
                    self._thread = None
                    return
            retire(self._znodes(), batch)


def collect_garbage(z: Znodes, now: float, delete: Callable[[str], bool]) -> int:
    """One garbage-collection pass over the command folders (see the module docstring).

    Args:
        z: the cluster's znodes (operator credentials).
        now: wall-clock time.
        delete: deletes a request and its results; True if it existed.

    Returns:
        How many requests were deleted.
    """
    names = z.children(RESULTS) or []
    pending = set(z.children(REQUESTS) or [])
    cached = cached_requests(z, names, malformed_too=True)
    removed = 0
    for rid in names:
        request = cached.get(rid)
        keep_until = id_time(rid) + 7 * 86400 if request is None else request.keep_until
        if now > keep_until and delete(rid):
            removed += 1
        elif request is None and rid not in pending and now - id_time(rid) > ORPHAN_AGE:
            z.delete(f"{RESULTS}/{rid}", recursive=True)  # a send that never finished
    for rid in pending - set(names):  # a request without results: it cannot be answered
        if now - id_time(rid) > ORPHAN_AGE:
            z.delete(request_path(rid))
    expired = {rid for rid, request in cached.items() if now > request.keep_until}
    still = sorted(pending & (set(cached) - expired))
    answered = z.children_many([reply_path(rid) for rid in still])
    done = [
        rid for rid in still if set(cached[rid].nodes) <= set(answered.get(reply_path(rid)) or [])
    ]
    if done:
        retire(z, done)
    return removed


def id_time(rid: str) -> float:
    """The creation time a request id carries (seconds; 0 when it carries none)."""
    head = rid.partition("-")[0]
    return int(head) / 1000 if head.isdigit() else 0.0
