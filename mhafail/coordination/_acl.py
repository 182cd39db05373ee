"""The cluster's ZooKeeper ACL policy: who may do what on which znode.

ZooKeeper checks CREATE and DELETE on the *parent* and READ, WRITE and
ADMIN on the znode itself; ACLs are set by whoever creates a znode. So
every process computes the ACL of each znode it creates from the path
alone (:meth:`AclPolicy.acl_for`), and the layout keeps what only
operators may write in folders where nodes cannot create children:

=============================  ==================  ==========================
path (under the cluster root)  node role           why
=============================  ==================  ==========================
(the root)                     read                operators create the layout
members                        read create delete  register (ephemeral)
members/*                      read                nobody rewrites a member
vips                           read create         first declaration of a VIP
vips/*                         read create delete  claim and release
vips/*/owner                   read                claims are never rewritten
vips/*/next                    read                nor are reservations
vips/*/declared                read create delete  declare and withdraw
vips/*/declared/*              read
targets, targets/*             read                ``vip move``: operators
drained, drained/*             read                ``vip drain``: operators
managers, managers/*           read                log managers: operators
config, config/*               read                repositories: operators
config/*/head                  read                ``config commit``: operators
config/*/applied               read create delete  nodes report their state
config/*/applied/*             read write
config/*/modes, modes/*        read                freeze/thaw: operators
commands, commands/requests/*  read                only operators enqueue commands
commands/results/*/claims      read create         a node claims a request once
commands/results/*/claims/*    read                claims are never rewritten
commands/results/*/replies     read create         a node answers once
commands/results/*/replies/*   read                replies are never rewritten
spool                          read create         a node's first spool lock
spool/*                        read create delete  take and drop spool locks
spool/*/lock                   read                locks are never rewritten
spool/*/takeover               read write          the importer records progress
spoolops, spoolops/*           read                ``spool drain|import``: operators
anything else                  read
=============================  ==================  ==========================

Operators have every permission everywhere. Role ids become ACL ids by
:func:`acl_id`: a digest id ``user:HASH`` is ``digest:user:HASH``, a SASL id
``sasl:NAME[:KEY]`` is ``sasl:NAME`` (ZooKeeper's SASLAuthenticationProvider).
``/mhafail`` itself is shared
by all clusters of an ensemble: anyone may read it and create a cluster
under it, nobody may delete, rewrite or re-ACL it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from kazoo.security import ACL, Id

READ, WRITE, CREATE, DELETE, ADMIN = 1, 2, 4, 8, 16
ALL = READ | WRITE | CREATE | DELETE | ADMIN

WORLD = ("world", "anyone")

# Node-role permissions by path pattern ("*" matches one segment).
_NODE_PERMS: dict[tuple[str, ...], int] = {
    (): READ,
    ("members",): READ | CREATE | DELETE,
    ("members", "*"): READ,
    ("vips",): READ | CREATE,
    ("vips", "*"): READ | CREATE | DELETE,
    ("vips", "*", "owner"): READ,
    ("vips", "*", "next"): READ,
    ("vips", "*", "declared"): READ | CREATE | DELETE,
    ("vips", "*", "declared", "*"): READ,
    # A node writes its own beat; WRITE on the others' lets a survivor fence
    # a silent one (mhafail.vip._beat): no more than DELETE on their claims.
    ("beats",): READ | CREATE | DELETE,
    ("beats", "*"): READ | WRITE,
    ("config", "*", "applied"): READ | CREATE | DELETE,
    ("config", "*", "applied", "*"): READ | WRITE,
    # No DELETE: a node must not undo a claim (that would replay a command)
    # nor withdraw an answer; managers (operators) garbage-collect both.
    ("commands", "results", "*", "claims"): READ | CREATE,
    ("commands", "results", "*", "replies"): READ | CREATE,
    ("spool",): READ | CREATE,
    ("spool", "*"): READ | CREATE | DELETE,
    ("spool", "*", "lock"): READ,
    ("spool", "*", "takeover"): READ | WRITE,
}

LAYOUT = (
    "members",
    "vips",
    "beats",
    "targets",
    "drained",
    "managers",
    "config",
    "commands",
    "spool",
    "spoolops",
)
"""The folders an operator creates with the cluster root (``mhafail init``)."""

ROOT_ACL = ((READ | CREATE, WORLD),)
"""``/mhafail``: shared by every cluster of the ensemble."""

Entry = tuple[int, tuple[str, str]]
"""One ACL entry: (permissions, (scheme, id))."""


def acl_id(ident: str) -> tuple[str, str]:
    """The ZooKeeper ACL id (scheme, id) of a role id (``_auth`` module docstring).

    ``sasl:NAME[:KEY]`` is ``("sasl", NAME)``: the KEY only keys the root's
    proof. Anything else is a digest id, ``("digest", ident)``.
    """
    if ident.startswith("sasl:"):
        return ("sasl", ident[len("sasl:") :].partition(":")[0])
    return ("digest", ident)


def perms_text(perms: int) -> str:
    """``rwcda``-style text for a permission mask (for messages)."""
    return "".join(
        c if perms & bit else "-" for c, bit in zip("rwcda", (1, 2, 4, 8, 16), strict=True)
    )


def entries_text(entries: Iterable[Entry]) -> str:
    """A readable ACL: ``digest:ops:…=rwcda, world:anyone=r----``."""
    return ", ".join(f"{s}:{i}={perms_text(p)}" for p, (s, i) in sorted(entries)) or "(empty)"


def from_kazoo(acls: Sequence[Any]) -> list[Entry]:
    """kazoo ACL objects as plain entries."""
    return [(int(a.perms), (str(a.id.scheme), str(a.id.id))) for a in acls]


def to_kazoo(entries: Iterable[Entry]) -> list[Any]:
    """Plain entries as kazoo ACL objects."""
    return [ACL(perms, Id(scheme, ident)) for perms, (scheme, ident) in entries]


@attrs.frozen
class AclPolicy:
    """The ACL of every znode under one cluster root.

    Attributes:
        operators: role ids (digest or SASL) with every permission everywhere.
        nodes: role ids with the node role's permissions.
        open: no ACLs at all (``world:anyone`` everything); an explicit choice.
    """

    operators: tuple[str, ...] = ()
    nodes: tuple[str, ...] = ()
    open: bool = False

    def entries_for(self, path: str) -> list[Entry]:
        """The ACL entries for ``path`` (relative to the cluster root, ``""`` for it)."""
        if self.open:
            return [(ALL, WORLD)]
        perms: dict[tuple[str, str], int] = {}
        node_perms = node_permissions(path)
        for ident in self.nodes:
            perms[acl_id(ident)] = perms.get(acl_id(ident), 0) | node_perms
        for ident in self.operators:
            perms[acl_id(ident)] = ALL
        return [(p, ident) for ident, p in perms.items()]

    def acl_for(self, path: str) -> list[Any]:
        """The kazoo ACL list to create ``path`` with."""
        return to_kazoo(self.entries_for(path))

    def problem(self, path: str, found: Iterable[Entry]) -> str | None:
        """Why the ACL ``found`` on ``path`` is unsafe under this policy, or None.

        Safe means nobody outside the policy has any permission, and nobody
        has more than the policy gives (fewer is allowed: it only refuses
        more, e.g. an identity added to the policy later).
        """
        allowed = {ident: p for p, ident in self.entries_for(path)}
        # ZooKeeper shows a reader without ADMIN digest ids as "user:x": match
        # those by user name (the cluster root's proof covers the rest).
        by_user = {i[1].split(":")[0]: i for i in allowed if i[0] == "digest"}
        for perms, shown in found:
            ident = shown
            if shown[0] == "digest" and shown[1].endswith(":x"):
                ident = by_user.get(shown[1][:-2], shown)
            extra = perms & ~allowed.get(ident, 0)
            if extra:
                return (
                    f"{shown[0]}:{shown[1]} has {perms_text(extra)} there, "
                    f"which the policy ({entries_text(self.entries_for(path))}) does not give"
                )
        return None


def node_permissions(path: str) -> int:
    """The node role's permissions on ``path`` (relative to the cluster root)."""
    parts = tuple(path.split("/")) if path else ()
    for pattern, perms in _NODE_PERMS.items():
        if len(pattern) == len(parts) and all(
            p in ("*", s) for p, s in zip(pattern, parts, strict=True)
        ):
            return perms
    return READ


def root_problem(found: Iterable[Entry]) -> str | None:
    """Why the ACL of ``/mhafail`` is unsafe, or None (anyone: read and create only)."""
    for perms, ident in found:
        extra = perms & ~(READ | CREATE)
        if extra:
            return (
                f"{ident[0]}:{ident[1]} has {perms_text(extra)} there; "
                "/mhafail must give everyone read and create only"
            )
    return None
