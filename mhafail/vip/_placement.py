"""Where each VIP should live, and what this node should do about it. Pure.

Every node computes the same placement from the same inputs (declarations,
live members, drained nodes, move targets, current owners), so they agree
without talking. The ranking of a VIP lists its candidates best first:

1. an explicit move target (``vip move``), if it is a candidate;
2. else the preferred node, if it is a candidate and uncontested;
3. else its current live owner, unless that owner holds more than its
   share ``ceil(VIPs / nodes)`` and sheds it;
4. else the highest-scoring candidate (rendezvous, highest-random-weight
   hashing) with room below that share.

So a failure moves only the failed node's VIPs, and a join moves only the
excess of the loaded nodes (about 1/N of all VIPs) to the newcomer, while
the spread stays even. A follower (a listener that follows a binding) ranks its
binding's *current* owner first, so it goes wherever the binding goes.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections import Counter
from collections.abc import Mapping, Sequence

import attrs

from mhafail.vip._spec import Vip


def score(node: str, address: str) -> int:
    """The rendezvous weight of ``node`` for ``address`` (stable across processes)."""
    digest = hashlib.blake2b(f"{node}|{address}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@attrs.frozen
class PlacementInput:
    """Everything placement depends on (one consistent snapshot).

    Attributes:
        vips: address -> declaration (the agreed one; conflicts resolved by caller).
        declared_by: address -> nodes that declared the VIP (live nodes only).
        live: names of live members.
        drained: nodes that give up their VIPs and take none.
        targets: address -> node named by an explicit move.
        owners: address -> node currently holding the claim.
        contested: addresses whose declarations disagree on preference.
    """

    vips: Mapping[str, Vip]
    declared_by: Mapping[str, frozenset[str]]
    live: frozenset[str]
    drained: frozenset[str] = frozenset()
    targets: Mapping[str, str] = attrs.field(factory=dict)
    owners: Mapping[str, str] = attrs.field(factory=dict)
    contested: frozenset[str] = frozenset()


def candidates(inp: PlacementInput, address: str) -> list[str]:
    """Nodes that may own ``address``: live, declaring it, not drained; sorted."""
    return sorted((inp.declared_by.get(address, frozenset()) & inp.live) - inp.drained)


def rank(inp: PlacementInput) -> dict[str, tuple[str, ...]]:
    """Return address -> candidate nodes, best first, for every declared VIP.

    Balanced with minimal movement: a VIP stays with its live owner unless
    that owner holds more than its share (``ceil(VIPs / nodes)``), in which
    case it sheds the VIPs it scores lowest on; VIPs without an owner (or
    shed) go to the highest-scoring candidate with room.
    """
    independent = sorted(a for a, v in inp.vips.items() if v.follow is None)
    cands = {a: candidates(inp, a) for a in inp.vips}
    pool = sorted({n for a in independent for n in cands[a]})
    cap = math.ceil(len(independent) / len(pool)) if pool else 0
    first: dict[str, str] = {}
    for address in independent:
        pinned = _pinned(inp, address, cands[address])
        owner = inp.owners.get(address)
        if pinned is not None:
            first[address] = pinned
        elif owner in cands[address]:
            first[address] = owner
    pinned_set = {a for a in first if _pinned(inp, a, cands[a]) is not None}
    load = Counter(first.values())
    for node in pool:
        excess = load[node] - cap
        if excess <= 0:
            continue
        sheddable = sorted(
            (a for a, n in first.items() if n == node and a not in pinned_set),
            key=lambda a: (score(node, a), a),
        )
        for address in sheddable[:excess]:
            del first[address]
            load[node] -= 1
    rankings: dict[str, tuple[str, ...]] = {}
    for address in independent:
        by_score = sorted(cands[address], key=lambda n: (score(n, address), n), reverse=True)
        if address not in first and by_score:
            roomy = [n for n in by_score if load[n] < cap]
            first[address] = roomy[0] if roomy else by_score[0]
            load[first[address]] += 1
        rankings[address] = _with_first(by_score, first.get(address))
    for address, vip in sorted(inp.vips.items()):
        if vip.follow is not None:
            rankings[address] = _follower_ranking(inp, vip, cands[address], rankings)
    return rankings


def _pinned(inp: PlacementInput, address: str, cands: Sequence[str]) -> str | None:
    target = inp.targets.get(address)
    if target in cands:
        return target
    preference = inp.vips[address].preference
    if preference in cands and address not in inp.contested:
        return preference
    return None


def _with_first(ordered: Sequence[str], first: str | None) -> tuple[str, ...]:
    if first is None:
        return tuple(ordered)
    return (first, *(n for n in ordered if n != first))


def _follower_ranking(
    inp: PlacementInput, vip: Vip, cands: Sequence[str], rankings: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    binding = _binding_address(inp, vip.follow or "")
    if binding is None:
        return ()
    owner = inp.owners.get(binding)
    order = [n for n in rankings.get(binding, ()) if n in cands]
    if owner is not None:
        # Follow the binding's actual owner; nobody else may take the follower.
        return (owner,) if owner in cands else ()
    return tuple(order)


def _binding_address(inp: PlacementInput, follow: str) -> str | None:
    if follow in inp.vips:
        return follow
    for address, vip in inp.vips.items():
        if vip.binding == follow:
            return address
    return None


class Action(enum.Enum):
    """What this node should do about one VIP now."""

    HOLD = "hold"  # keep it plumbed
    RELEASE = "release"  # hand it over: pre_release, unplumb, delete the claim
    CLAIM = "claim"  # create the claim now, then plumb
    WAIT = "wait"  # a better-ranked node should claim; try after ``delay``
    NONE = "none"  # someone else's, or not ours to take: keep it unplumbed


@attrs.frozen
class Decision:
    """One VIP's decision for one node, with the reason (for logs and tests)."""

    address: str
    action: Action
    delay: float = 0.0
    reason: str = ""


def decide(
    me: str,
    inp: PlacementInput,
    rankings: Mapping[str, tuple[str, ...]],
    *,
    rebalance_allowed: bool,
    claim_step: float,
) -> dict[str, Decision]:
    """Decide, for node ``me``, what to do with every VIP it declared.

    Args:
        me: this node's name.
        inp: the snapshot placement was computed from.
        rankings: the output of :func:`rank` for ``inp``.
        rebalance_allowed: whether planned moves to a better-ranked node
            may happen now (the rebalance policy says so).
        claim_step: seconds each rank waits behind the one before it when
            a VIP is unclaimed.
    """
    out: dict[str, Decision] = {}
    for address in sorted(a for a, nodes in inp.declared_by.items() if me in nodes):
        if address not in inp.vips:
            continue
        ranking = rankings.get(address, ())
        owner = inp.owners.get(address)
        vip = inp.vips[address]
        if owner == me:
            out[address] = _as_owner(
                me, address, vip=vip, inp=inp, ranking=ranking, rebalance_allowed=rebalance_allowed
            )
        elif owner is None:
            if me not in ranking:
                out[address] = Decision(address, Action.NONE, reason="not a candidate")
            elif ranking[0] == me:
                out[address] = Decision(address, Action.CLAIM, reason="ranked first")
            else:
                position = ranking.index(me)
                out[address] = Decision(
                    address,
                    Action.WAIT,
                    delay=position * claim_step,
                    reason=f"ranked {position + 1}, after {ranking[0]}",
                )
        else:
            out[address] = Decision(address, Action.NONE, reason=f"owned by {owner}")
    return out


def _as_owner(
    me: str,
    address: str,
    *,
    vip: Vip,
    inp: PlacementInput,
    ranking: Sequence[str],
    rebalance_allowed: bool,
) -> Decision:
    if me in inp.drained:
        return Decision(address, Action.RELEASE, reason="drained")
    if me not in ranking:
        return Decision(address, Action.RELEASE, reason="no longer a candidate")
    target = inp.targets.get(address)
    if target is not None and target != me and target in ranking:
        return Decision(address, Action.RELEASE, reason=f"moved to {target}")
    if vip.follow is not None and ranking[0] != me:
        return Decision(address, Action.RELEASE, reason=f"following its binding to {ranking[0]}")
    if ranking[0] != me and rebalance_allowed:
        return Decision(address, Action.RELEASE, reason=f"rebalancing to {ranking[0]}")
    return Decision(address, Action.HOLD)


def successions(
    me: str, inp: PlacementInput, rankings: Mapping[str, tuple[str, ...]]
) -> frozenset[str]:
    """The VIPs another node holds that ``me`` should claim the moment its claim goes.

    Every node computes the same answer from the same snapshot, so a VIP's
    successor is known before its owner lets go (a planned move or a
    shutdown) or dies: it is ranked first if the owner is moving it away,
    else ranked first by the placement computed without the owner. Whoever
    creates the claim first owns the VIP, so nodes that disagree (caches
    behind) cost a failed create, never a second owner. Followers are left
    to the converge pass (they go wherever their binding goes).
    """
    mine: set[str] = set()
    staying: dict[str, list[str]] = {}
    for address, owner in inp.owners.items():
        vip = inp.vips.get(address)
        if owner == me or vip is None or vip.follow is not None:
            continue
        ranking = rankings.get(address, ())
        if ranking and ranking[0] != owner:
            if ranking[0] == me:
                mine.add(address)  # the owner is moving it here
        else:
            staying.setdefault(owner, []).append(address)
    for owner, addresses in staying.items():
        without = attrs.evolve(
            inp,
            live=inp.live - {owner},
            owners={a: n for a, n in inp.owners.items() if n != owner},
        )
        after = rank(without)
        mine.update(a for a in addresses if after.get(a, ())[:1] == (me,))
    return frozenset(mine)
