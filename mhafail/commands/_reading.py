"""Reading the command cache: requests and replies, each checked as shared data."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from mhafail.commands._model import (
    RESULTS,
    Reply,
    Request,
    check_request_id,
    reply_path,
    request_path,
)
from mhafail.coordination import Znodes
from mhafail.errors import MalformedData, UnknownRequest

logger = logging.getLogger(__name__)


def read_request(z: Znodes, rid: str) -> Request:
    """The request of a cache entry (older entries: from ``requests/``).

    Raises:
        UnknownRequest: no such request.
        CommandInvalidArgument: not a request id.
        MalformedData: the request fails its checks.
    """
    check_request_id(rid)
    znode = z.get(f"{RESULTS}/{rid}")
    if znode is not None and not znode.data:
        znode = z.get(request_path(rid))  # sent by a manager that kept no copy
    if znode is None:
        raise UnknownRequest(f"no command request {rid} (never sent, collected or expired)")
    return Request.from_json(znode.data, what=f"command request {rid}")


def read_replies(
    z: Znodes, rid: str, names: Sequence[str], replies: dict[str, Reply], malformed: set[str]
) -> None:
    """Read the replies in ``names`` not read yet into ``replies`` (or ``malformed``)."""
    new = [n for n in names if n not in replies and n not in malformed]
    if not new:
        return
    docs = z.get_many([reply_path(rid, n) for n in new])
    for node in new:
        doc = docs.get(reply_path(rid, node))
        if doc is None:
            continue
        try:
            reply = Reply.from_json(doc.data, what=f"reply of {node} to {rid}")
            if reply.node != node or reply.id != rid:
                raise MalformedData(f"reply znode {node} of {rid} names {reply.node}/{reply.id}")
        except MalformedData as exc:
            logger.warning("skipping a reply: %s", exc)
            malformed.add(node)
            continue
        replies[node] = reply


def cached_requests(
    z: Znodes, names: Sequence[str], *, malformed_too: bool = False
) -> dict[str, Request]:
    """The requests of these cache entries (older entries: from ``requests/``).

    Malformed ones are logged and left out; with ``malformed_too`` they
    are left out silently (the garbage collector judges them by age).
    """
    docs = z.get_many([f"{RESULTS}/{rid}" for rid in names])
    bare = [rid for rid in names if (d := docs.get(f"{RESULTS}/{rid}")) and not d.data]
    old = z.get_many([request_path(rid) for rid in bare])
    found: dict[str, Request] = {}
    for rid in names:
        doc = docs.get(f"{RESULTS}/{rid}")
        if doc is not None and not doc.data:
            doc = old.get(request_path(rid))
        if doc is None:
            continue
        try:
            found[rid] = Request.from_json(doc.data, what=f"command request {rid}")
        except MalformedData as exc:
            if not malformed_too:
                logger.warning("skipping request %s: %s", rid, exc)
    return found
