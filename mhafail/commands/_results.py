"""What a manager reads back: a request's replies so far, and waiting for all of them.

Waiting costs one round trip per change of the reply folder (the list
that re-arms its watch, ``Znodes.watch_list``) plus one read per new
reply, pipelined; the claims are read only when the wait times out.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

import attrs

from mhafail.commands._model import Reply, Request, check_request_id, claim_path, reply_path
from mhafail.commands._reading import read_replies, read_request
from mhafail.coordination import Znodes

NO_NEWS = 1.0
"""Seconds a wait goes without a list from its watch before it reads the folder itself."""


@attrs.frozen
class CommandResult:
    """A request and every answer so far.

    Attributes:
        request: the request.
        replies: node -> its reply.
        running: nodes that took the request and have not answered.
        pending: nodes asked that have neither taken nor answered it.
        malformed: nodes whose reply znode failed its checks (reported, skipped).
    """

    request: Request
    replies: Mapping[str, Reply]
    running: tuple[str, ...]
    pending: tuple[str, ...]
    malformed: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        """True when every node asked has answered."""
        return not self.running and not self.pending and not self.malformed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        req = attrs.asdict(self.request)
        return {
            "id": self.request.id,
            "request": req,
            "replies": {n: r.to_dict() for n, r in self.replies.items()},
            "running": list(self.running),
            "pending": list(self.pending),
            "malformed": list(self.malformed),
            "complete": self.complete,
        }


@attrs.frozen
class RequestSummary:
    """One line of :meth:`CommandClient.list_requests`."""

    id: str
    command: str
    nodes: int
    replies: int
    requester: str
    created: float
    expires: float
    cancelled: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return attrs.asdict(self)


def result_of(
    request: Request, replies: dict[str, Reply], malformed: set[str], claimed: set[str]
) -> CommandResult:
    """The result of ``request`` given its replies and the nodes that claimed it."""
    asked = request.nodes
    answered = replies.keys() | malformed
    return CommandResult(
        request=request,
        replies=dict(sorted(replies.items())),
        running=tuple(n for n in asked if n in claimed and n not in answered),
        pending=tuple(n for n in asked if n not in claimed and n not in answered),
        malformed=tuple(sorted(malformed)),
    )


def current(z: Znodes, rid: str) -> CommandResult:
    """The request and its replies so far (see ``CommandClient.get``)."""
    request = read_request(z, rid)
    lists = z.children_many([claim_path(rid), reply_path(rid)])
    replies: dict[str, Reply] = {}
    malformed: set[str] = set()
    read_replies(z, rid, lists.get(reply_path(rid)) or [], replies, malformed)
    return result_of(request, replies, malformed, set(lists.get(claim_path(rid)) or []))


def gather(z: Znodes, rid: str, timeout: float) -> CommandResult:
    """Block until every node asked answered or ``timeout`` passed; return what there is.

    Raises:
        UnknownRequest: no such request.
    """
    check_request_id(rid)
    end = time.monotonic() + timeout
    changed = threading.Event()
    lock = threading.Lock()
    latest: list[list[str]] = []

    def listed(names: list[str] | None) -> None:
        with lock:
            latest[:] = [names or []]
        changed.set()

    # The watch's first list and the request read share a round trip.
    watch = z.watch_list(reply_path(rid), listed)
    try:
        request = read_request(z, rid)
        asked = set(request.nodes)
        replies: dict[str, Reply] = {}
        malformed: set[str] = set()
        while True:
            changed.clear()
            with lock:
                names = latest.pop() if latest else None
            if names is not None:
                read_replies(z, rid, names, replies, malformed)
            if asked <= replies.keys() | malformed:
                return result_of(request, replies, malformed, set())
            left = end - time.monotonic()
            if left <= 0:
                claimed = set(z.children(claim_path(rid)) or [])
                return result_of(request, replies, malformed, claimed)
            if not changed.wait(min(left, NO_NEWS)) and time.monotonic() < end:
                # No news: a watch whose re-arm failed delivers nothing more.
                read_replies(z, rid, z.children(reply_path(rid)) or [], replies, malformed)
    finally:
        watch.cancel()
