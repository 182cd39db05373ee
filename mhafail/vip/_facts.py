"""The VIP manager's caches of ZooKeeper facts, and how watch events update them.

Placement runs on these caches; ownership never rests on them. A claim
is won only by creating its ephemeral znode, so a cache that is behind
costs at most a create that fails (or a wait), never a second owner.

A watch hands over what its re-arming read saw (``Znodes.watch_seen``).
Most of a failover is told completely by that: a vanished claim, a
shrunken declaration list, a claim created in a session whose node is
already known. Those are applied here without another read, which is
what lets survivors claim a crashed node's VIPs straight from the expiry's
watch events. The rest (a claim by an unknown session, a new declaration
whose content must be read, a read that failed) is marked dirty for the
next pass to read, pipelined.

A read that started before an event may finish after it. The event's fact
then wins (:meth:`Facts.fresher`): whatever changed after its re-arming read
fires the watch that read armed, so the latest event is never older than
the last change, and nothing has to be read twice.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from mhafail.coordination import Seen, Znode, Znodes
from mhafail.errors import InvalidVipSpec
from mhafail.vip._paths import Claim, declared_path, owner_path
from mhafail.vip._spec import Vip

logger = logging.getLogger(__name__)


@attrs.define
class Facts:
    """What the manager knows of claims and declarations (guarded by its lock).

    Attributes:
        owners: address -> the claim as last known (None: unclaimed).
        declared: address -> node -> that node's declaration (others only).
        dirty_owners: addresses whose claim must be read again.
        dirty_declared: addresses whose declaration list must be read again.
        sessions: session id -> node name, learned from claims read, so a
            claim created in a known session needs no read.
        events: how many watch events were applied so far.
        owner_event: address -> ``events`` when its claim watch last applied.
        declared_event: address -> ``events`` when its list watch last applied.
        vanished: address -> monotonic time its claim was last seen to go
            (the planned successor's turn: see ``ConvergePass._carry_out``).
        taking: addresses this node owns by its reservation and is turning
            into a claim (see :mod:`mhafail.vip._reserve`): no read showing
            the old owner's claim gone may take them from the cache.
    """

    owners: dict[str, Claim | None] = attrs.field(factory=dict)
    declared: dict[str, dict[str, Vip]] = attrs.field(factory=dict)
    dirty_owners: set[str] = attrs.field(factory=set)
    dirty_declared: set[str] = attrs.field(factory=set)
    sessions: dict[int, str] = attrs.field(factory=dict)
    events: int = 0
    owner_event: dict[str, int] = attrs.field(factory=dict)
    declared_event: dict[str, int] = attrs.field(factory=dict)
    vanished: dict[str, float] = attrs.field(factory=dict)
    taking: set[str] = attrs.field(factory=set)

    def drop(self, key: str) -> None:
        """A claim is gone (its deletion seen, or its node departed)."""
        if key in self.taking:
            return  # the old owner's claim: ours by the reservation now
        if self.owners.get(key) is not None:
            self.vanished[key] = time.monotonic()
        self.owners[key] = None

    def fresher(self, events: dict[str, int], key: str, since: int) -> bool:
        """True when a watch event applied to ``key`` after ``since`` (a read's start)."""
        return events.get(key, -1) > since

    def know(self, key: str, claim: Claim | None) -> None:
        """Record what this node itself just did to ``key``'s claim (created or deleted it).

        Counts as an event: a read that started earlier does not overwrite it.
        """
        self.events += 1
        self.owner_event[key] = self.events
        self.learn(key, claim)

    def learn_read(self, key: str, claim: Claim | None, since: int) -> None:
        """Record a claim read by a request sent after ``events`` was ``since``."""
        if not self.fresher(self.owner_event, key, since):
            self.learn(key, claim)

    def learn(self, key: str, claim: Claim | None) -> None:
        """Record a claim for ``key`` (callers check it is not older than the cache)."""
        if claim is None and key in self.taking:
            return  # see ``taking``
        self.owners[key] = claim
        if claim is not None:
            if len(self.sessions) > 4096:
                self.sessions.clear()  # bounded: a forgotten session only costs a read
            self.sessions[claim.session] = claim.node


def apply_owner(facts: Facts, key: str, seen: Seen, session: int | None) -> None:
    """Apply a claim watch's read of ``key``'s claim znode (``session``: this node's now).

    A read that shows another session's claim while this node holds the
    claim in ``session`` is older than this node's create (nobody else
    deletes our claims; the session's end resets the cache): the standby's
    own thread may have learned the claim before the dispatcher applied an
    earlier read. It is read again instead of believed, so a pass never
    takes an address away from the node that holds its claim.
    """
    if not seen.known:
        facts.dirty_owners.add(key)
        return
    facts.events += 1
    facts.owner_event[key] = facts.events
    if not seen.exists:
        facts.drop(key)
    else:
        cached = facts.owners.get(key)
        node = facts.sessions.get(seen.ephemeral_owner)
        if cached is not None and cached.session == seen.ephemeral_owner:
            pass  # the claim we know
        elif cached is not None and session is not None and cached.session == session:
            facts.dirty_owners.add(key)  # ours since: an older read, or a foreign hand
            del facts.owner_event[key]
        elif node is not None:
            facts.owners[key] = Claim(node=node, session=seen.ephemeral_owner, since=0.0)
        else:
            facts.dirty_owners.add(key)
            del facts.owner_event[key]  # told nothing: a read must not be skipped


def apply_declared(facts: Facts, key: str, seen: Seen, me: str) -> None:
    """Apply a declaration-list watch's read of ``key``'s declarers."""
    if not seen.known or seen.children is None:
        facts.dirty_declared.add(key)
        return
    facts.events += 1
    facts.declared_event[key] = facts.events
    names = set(seen.children) - {me}
    known = facts.declared.setdefault(key, {})
    for gone in set(known) - names:
        del known[gone]  # withdrawn, or its session ended: nothing to read
    if names - set(known):
        facts.dirty_declared.add(key)  # a new declaration's content must be read
        del facts.declared_event[key]


def claim_of(node: Znode | None) -> Claim | None:
    """The claim in a claim znode (None when absent or malformed)."""
    if node is None:
        return None
    return Claim.from_json(node.data, node.ephemeral_owner)


def declaration_of(data: bytes) -> Vip:
    """Decode a declaration znode (size and depth capped; see mhafail._json).

    Raises:
        InvalidVipSpec: the declaration is malformed.
    """
    from mhafail._json import decode_object
    from mhafail.errors import MalformedData
    from mhafail.vip._paths import MAX_DOC_BYTES

    try:
        return Vip.from_dict(decode_object(data, what="declaration", max_bytes=MAX_DOC_BYTES))
    except MalformedData as exc:
        raise InvalidVipSpec(str(exc)) from exc


def read_dirty(z: Znodes, facts: Facts, lock: threading.Lock, me: str) -> None:
    """Read (pipelined) the claims and declaration lists marked dirty; apply what is not older."""
    with lock:
        owners, facts.dirty_owners = facts.dirty_owners, set()
        declared, facts.dirty_declared = facts.dirty_declared, set()
        since = facts.events
    if not owners and not declared:
        return
    fresh = z.get_many([owner_path(k) for k in owners])
    lists = z.children_many([declared_path(k) for k in declared]) if declared else {}
    with lock:
        for k in owners:
            facts.learn_read(k, claim_of(fresh[owner_path(k)]), since)
        known = {k: dict(facts.declared.get(k, {})) for k in declared}
    wanted = []
    for k in declared:
        names = set(lists[declared_path(k)] or []) - {me}
        for gone in set(known[k]) - names:
            del known[k][gone]  # a node withdrew: nothing to read
        wanted += [declared_path(k, n) for n in names - set(known[k])]
    read_declarations(z.get_many(wanted), known)
    with lock:
        for k, decls in known.items():
            if not facts.fresher(facts.declared_event, k, since):
                facts.declared[k] = decls


def read_declarations(nodes: dict[str, Znode | None], into: dict[str, dict[str, Vip]]) -> None:
    """Decode declaration znodes into ``into[address][node]``; malformed ones are skipped."""
    for path, znode in nodes.items():
        if znode is not None:
            key, node = path.split("/")[1], path.rsplit("/", 1)[1]
            try:
                into[key][node] = declaration_of(znode.data)
            except InvalidVipSpec:
                logger.warning("ignoring malformed declaration of %s by %s", key, node)


MEMBERS = "members"  # Membership's folder (mhafail.coordination)


def watch_facts(
    z: Znodes,
    keys: Sequence[str],
    *,
    facts: Facts,
    lock: threading.Lock,
    me: str,
    session: Callable[[], int | None],
    changed: Callable[[], None],
    gone: Callable[[str], None],
    members: Callable[[list[str]], None],
) -> None:
    """Watch every claim, declaration list and the member list; apply each event to ``facts``.

    A dead node's member znode, claims and declarations vanish in one
    session expiry. Each watch hands over what its re-arming read saw
    (``Znodes.watch_seen``), applied here at once: a vanished claim or a
    shrunken list needs no second read, so the survivors claim straight
    from the events. Only what a watch cannot tell (who holds a new claim,
    what a new declaration says) is marked dirty for the next pass. A
    claim's deletion also calls ``gone(address)`` on kazoo's event thread
    (the standby); the member list calls ``members(names)``; every applied
    event calls ``changed()``. Register again after a new session.
    """
    for key in keys:

        def on_owner(seen: Seen, key: str = key) -> None:
            with lock:
                apply_owner(facts, key, seen, session())
            changed()

        def on_declared(seen: Seen, key: str = key) -> None:
            with lock:
                apply_declared(facts, key, seen, me)
            changed()

        z.watch_seen(owner_path(key), on_owner, on_gone=functools.partial(gone, key))
        z.watch_seen(declared_path(key), on_declared, children=True)

    def on_members(seen: Seen) -> None:
        if seen.known and seen.children is not None:  # else the passes' reads list them
            members(list(seen.children))
            changed()

    z.watch_seen(MEMBERS, on_members, children=True)
