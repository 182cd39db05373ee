"""Creating and vetting a cluster's root: ``/mhafail/<cluster>`` and its folders.

Before a credentialed process trusts anything under its cluster root it
checks the ACL of every existing znode on the way there (``/mhafail``, the
root, the layout folders): a squatter who pre-created them with open ACLs
could otherwise delete a member's znode or plant a drain marker (issue 11,
finding 2). A root that does not exist is created by an operator only,
with the policy's ACL, so a node never builds a cluster nobody vetted.

ZooKeeper shows a client without ADMIN permission digest ids with the
hash masked (``mta:x``), so a node cannot see *which* ``ops`` identity
owns the root. The operator therefore stores a proof in the root's data:
an HMAC of the cluster name keyed with the operator's digest id, which
nodes know from their credentials file and a squatter does not.

SASL ids are shown in full, but they are public names (``sasl:ops``):
anyone may create a znode whose ACL names them, so the same proof guards a
SASL cluster, keyed with the operator's role id *including its KEY*
(``sasl:ops:KEY``, see ``_auth``), which only the credentials files hold.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import threading
from typing import Any

from kazoo import exceptions as kex

from mhafail.coordination._acl import (
    LAYOUT,
    ROOT_ACL,
    AclPolicy,
    Entry,
    acl_id,
    entries_text,
    from_kazoo,
    root_problem,
    to_kazoo,
)
from mhafail.coordination._auth import Role
from mhafail.coordination._kazoo import translated
from mhafail.errors import AccessDenied, CoordinationError, UnsafeAcl

logger = logging.getLogger(__name__)

ROOT = "/mhafail"

_warned_open: set[str] = set()
_warn_lock = threading.Lock()


def warn_open_once(cluster: str) -> None:
    """Log, once per process and cluster, that the cluster runs without ACLs."""
    with _warn_lock:
        if cluster in _warned_open:
            return
        _warned_open.add(cluster)
    logger.warning(
        "cluster %s runs WITHOUT ZooKeeper ACLs (open_acl / --zk-open): anyone who can "
        "reach ZooKeeper can move, drain and claim its VIPs and publish its config "
        "(docs/security.md)",
        cluster,
    )


def prepare_root(client: Any, cluster: str, policy: AclPolicy, role: Role | None) -> None:
    """Create (operators) or vet (everyone) the cluster root and its folders.

    Args:
        client: a started kazoo client, authenticated.
        cluster: the cluster name.
        policy: the cluster's ACL policy (``open`` for an open cluster).
        role: this process's role; None for an open cluster.

    Raises:
        UnsafeAcl: a znode on the path carries an ACL outside the policy.
        CoordinationError: the root is missing and this is not an operator.
        AccessDenied: the credentials do not open the root.
    """
    base = f"{ROOT}/{cluster}"
    _prepare_shared_root(client)
    with translated(f"create {base}"):
        if client.exists(base) is None:
            if role is Role.NODE:
                raise CoordinationError(
                    f"cluster {cluster!r} does not exist ({base}): an operator creates it "
                    "first with `mhafail init` (operator credentials); a node never does"
                )
            data = b"" if policy.open else root_proof(cluster, policy.operators[0])
            with contextlib.suppress(kex.NodeExistsError):
                client.create(base, data, acl=policy.acl_for(""))
    if not policy.open:
        _vet(client, cluster, policy)
        _check_proof(client, cluster, policy, role)
    if role is not Role.NODE:
        with translated(f"create the folders of {base}"):
            for name in LAYOUT:
                if client.exists(f"{base}/{name}") is None:
                    with contextlib.suppress(kex.NodeExistsError):
                        client.create(f"{base}/{name}", b"", acl=policy.acl_for(name))
    with translated(f"read {base}"):
        try:
            client.get_children(base)
        except kex.NoAuthError as exc:
            raise AccessDenied(
                f"cluster {cluster!r} is protected by ZooKeeper ACLs that these "
                "credentials do not open"
                + (" (give --zk-auth FILE instead of --zk-open)" if policy.open else "")
            ) from exc


def root_proof(cluster: str, operator_id: str) -> bytes:
    """The cluster root's data: proves an operator (or someone with its id) created it."""
    mac = hmac.new(operator_id.encode(), f"mhafail root {cluster}".encode(), hashlib.sha256)
    scheme, ident = acl_id(operator_id)
    shown = ident.partition(":")[0] if scheme == "digest" else f"sasl:{ident}"
    return json.dumps({"operator": shown, "proof": mac.hexdigest()}).encode()


def _check_proof(client: Any, cluster: str, policy: AclPolicy, role: Role | None) -> None:
    base = f"{ROOT}/{cluster}"
    with translated(f"read {base}"):
        data, _ = client.get(base)
    if any(hmac.compare_digest(data, root_proof(cluster, op)) for op in policy.operators):
        return
    if role is Role.OPERATOR:
        # An operator sees the full ACL (it has ADMIN), which _vet found to be
        # the policy's: a root from before proofs, or from a rotated operator.
        with translated(f"write the proof of {base}"):
            client.set(base, root_proof(cluster, policy.operators[0]))
        return
    raise UnsafeAcl(
        f"refusing cluster {cluster!r}: {base} was not created by an operator of this "
        "cluster (its proof does not match any id in 'operators'); someone else created "
        "it, or the operator ids in the credentials file are out of date"
    )


def _prepare_shared_root(client: Any) -> None:
    with translated(f"create {ROOT}"):
        with contextlib.suppress(kex.NodeExistsError):
            client.create(ROOT, b"", acl=to_kazoo(ROOT_ACL))
        acls, _ = client.get_acls(ROOT)
    problem = root_problem(from_kazoo(acls))
    if problem is not None:
        raise UnsafeAcl(
            f"refusing {ROOT}: its ACL ({entries_text(from_kazoo(acls))}) is unsafe: {problem}. "
            f"Fix it with zkCli: setAcl {ROOT} world:anyone:rc"
        )


def _vet(client: Any, cluster: str, policy: AclPolicy) -> None:
    base = f"{ROOT}/{cluster}"
    paths = ["", *LAYOUT]
    with translated(f"read the ACLs of {base}"):
        pending = [(p, client.get_acls_async(f"{base}/{p}" if p else base)) for p in paths]
        for path, answer in pending:
            shown = f"{base}/{path}" if path else base
            try:
                acls, _ = answer.get()
            except kex.NoNodeError:
                continue
            except kex.NoAuthError as exc:
                raise UnsafeAcl(
                    f"refusing cluster {cluster!r}: {shown} exists but these credentials "
                    "cannot read it: wrong credentials, or someone else created it"
                ) from exc
            problem = policy.problem(path, from_kazoo(acls))
            if problem is not None:
                raise UnsafeAcl(
                    f"refusing cluster {cluster!r}: {shown} carries an ACL outside the "
                    f"cluster's policy ({problem}); it was created without credentials or "
                    "by someone else. Use another cluster name, or have an operator "
                    "inspect it (`mhafail init --check`)"
                )


def tree_problems(client: Any, base: str, policy: AclPolicy) -> list[tuple[str, str]]:
    """Every znode under ``base`` whose ACL the policy does not allow.

    Returns:
        (path relative to ``base``, problem) pairs, sorted by path.
    """
    problems = []
    for path, found in _walk(client, base):
        problem = (
            "unreadable with these credentials" if found is None else policy.problem(path, found)
        )
        if problem is not None:
            problems.append((path, problem))
    return sorted(problems)


def repair_tree(client: Any, base: str, policy: AclPolicy) -> int:
    """Give every znode under ``base`` exactly the policy's ACL; returns how many changed.

    Used after the role lists change (a new operator or node identity),
    with credentials that may still change every ACL (ADMIN).
    """
    changed = 0
    for path, found in _walk(client, base):
        if found is None or set(found) != set(policy.entries_for(path)):
            with translated(f"set the ACL of {path or base}"):
                client.set_acls(f"{base}/{path}" if path else base, policy.acl_for(path))
            changed += 1
    return changed


def _walk(client: Any, base: str) -> list[tuple[str, list[Entry] | None]]:
    """(path, ACL entries or None when unreadable) for every znode under ``base``.

    Breadth first, each level in one pipelined round trip.
    """
    found: list[tuple[str, list[Entry] | None]] = []
    level = [""]
    with translated(f"walk {base}"):
        while level:
            absolute = [f"{base}/{p}" if p else base for p in level]
            acls = [client.get_acls_async(a) for a in absolute]
            kids = [client.get_children_async(a) for a in absolute]
            following: list[str] = []
            for path, acl_answer, kid_answer in zip(level, acls, kids, strict=True):
                try:
                    entries = from_kazoo(acl_answer.get()[0])
                    children = kid_answer.get()
                except kex.NoNodeError:
                    continue
                except kex.NoAuthError:
                    found.append((path, None))
                    continue
                found.append((path, entries))
                following += [f"{path}/{c}" if path else c for c in children]
            level = following
    return found
