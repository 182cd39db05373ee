"""Cluster-wide VIP operations for operators: show, move, drain, undrain.

These talk to ZooKeeper only; the agents do the work (a move or a drain is
a request that every agent's converge loop acts on).
"""

from __future__ import annotations

import time

import attrs

from mhafail._json import decode_object
from mhafail.coordination import Coordinator
from mhafail.errors import InvalidVipSpec
from mhafail.vip._paths import (
    MAX_DOC_BYTES,
    VIPS,
    Claim,
    declared_path,
    drained_path,
    next_path,
    node_from_json,
    node_json,
    owner_path,
    target_path,
)
from mhafail.vip._spec import Vip


@attrs.frozen
class VipStatus:
    """One VIP as the cluster sees it (Momentum's ``cluster duravip show``).

    Attributes:
        address: the VIP.
        owner: the node holding the claim, or None.
        since: when the owner claimed it (epoch seconds), or None.
        state: ``owned``, ``unowned``, ``moving`` (a move target differs
            from the owner, or the owner is drained) or ``conflict``
            (declarations disagree, e.g. on the preferred node).
        preferred: the preferred node, when the declarations agree on one.
        target: the node named by ``vip move``, if any.
        declared_by: live nodes that declared the VIP.
        kind: listener or binding.
        next_in_line: the node holding the VIP's reservation (with beats:
            it owns the VIP the moment the owner lets go), or None.
    """

    address: str
    owner: str | None
    since: float | None
    state: str
    preferred: str | None
    target: str | None
    declared_by: tuple[str, ...]
    kind: str
    next_in_line: str | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return attrs.asdict(self)


def show(coordinator: Coordinator) -> list[VipStatus]:
    """Return the status of every declared VIP, sorted by address."""
    z = coordinator.znodes
    live = set(z.children("members") or [])
    drained = set(z.children(drained_path()) or [])
    result = []
    for address in z.children(VIPS) or []:
        decls: dict[str, Vip] = {}
        for node in z.children(declared_path(address)) or []:
            znode = z.get(declared_path(address, node))
            if znode is None:
                continue
            try:
                raw = decode_object(znode.data, what="declaration", max_bytes=MAX_DOC_BYTES)
                decls[node] = Vip.from_dict(raw)
            except ValueError:  # MalformedData and InvalidVipSpec: skip the bad entry
                continue
        owner_node = z.get(owner_path(address))
        claim = None if owner_node is None else Claim.from_json(owner_node.data, 0)
        reserved = z.get(next_path(address))
        successor = None if reserved is None else node_from_json(reserved.data)
        target_node = z.get(target_path(address))
        target = None if target_node is None else node_from_json(target_node.data)
        prefs = {d.preference for d in decls.values() if d.preference}
        shapes = {(d.kind, d.binding, d.follow) for d in decls.values()}
        if len(prefs) > 1 or len(shapes) > 1:
            state = "conflict"
        elif claim is None:
            state = "unowned"
        elif (target is not None and target != claim.node and target in live) or (
            claim.node in drained
        ):
            state = "moving"
        else:
            state = "owned"
        kinds = {d.kind.value for d in decls.values()}
        result.append(
            VipStatus(
                address=address,
                owner=None if claim is None else claim.node,
                since=None if claim is None else claim.since,
                state=state,
                preferred=next(iter(prefs)) if len(prefs) == 1 else None,
                target=target,
                declared_by=tuple(sorted(set(decls) & live)),
                kind=kinds.pop() if len(kinds) == 1 else "mixed",
                next_in_line=successor,
            )
        )
    return sorted(result, key=lambda s: s.address)


def _normalise(address: str) -> str:
    try:
        return str(Vip(address=address).address)
    except InvalidVipSpec:
        raise
    except ValueError as exc:
        raise InvalidVipSpec(f"invalid address {address!r}: {exc}") from exc


def move(coordinator: Coordinator, address: str, node: str) -> None:
    """Ask the cluster to move ``address`` to ``node`` (a planned, safe handover).

    The target stays as a runtime preference until :func:`clear_move`.

    Raises:
        InvalidVipSpec: the VIP is unknown, or ``node`` is not live, did not
            declare the VIP, or is drained (nothing is changed then).
    """
    key = _normalise(address)
    z = coordinator.znodes
    if z.get(f"{VIPS}/{key}") is None:
        raise InvalidVipSpec(f"unknown VIP {key}: no node declared it")
    if z.get(f"members/{node}") is None:
        raise InvalidVipSpec(f"cannot move {key} to {node}: {node} is not a live member")
    if z.get(declared_path(key, node)) is None:
        raise InvalidVipSpec(f"cannot move {key} to {node}: {node} does not declare that VIP")
    if z.get(drained_path(node)) is not None:
        raise InvalidVipSpec(f"cannot move {key} to {node}: {node} is drained")
    if z.set(target_path(key), node_json(node)) is None:
        z.create(target_path(key), node_json(node), makepath=True)


def clear_move(coordinator: Coordinator, address: str) -> bool:
    """Forget an explicit move target; True if there was one."""
    return coordinator.znodes.delete(target_path(_normalise(address)))


def drain(coordinator: Coordinator, node: str) -> None:
    """Make ``node`` give up its VIPs (handover) and take none until undrained."""
    from mhafail.coordination import check_name

    check_name("node name", node)
    z = coordinator.znodes
    z.ensure(drained_path())
    if z.create(drained_path(node), node_json(node)) is None:
        z.set(drained_path(node), node_json(node))


def undrain(coordinator: Coordinator, node: str) -> bool:
    """Let ``node`` take VIPs again; True if it was drained."""
    from mhafail.coordination import check_name

    check_name("node name", node)
    return coordinator.znodes.delete(drained_path(node))


def wait_owner(coordinator: Coordinator, address: str, node: str | None, timeout: float) -> bool:
    """Block until ``address`` is owned by ``node`` (None: by anyone); False on timeout."""
    key = _normalise(address)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        znode = coordinator.znodes.get(owner_path(key))
        claim = None if znode is None else Claim.from_json(znode.data, 0)
        if claim is not None and (node is None or claim.node == node):
            return True
        time.sleep(0.02)
    return False
