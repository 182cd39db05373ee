"""Values: the published head, per-node reports, modes and outcomes.

ZooKeeper layout (relative to the cluster root)::

    config/<repo>/head            {"sha","author","message","time","parent","origin"}
    config/<repo>/applied/<node>  {"sha","state","error","target","mode","time"}
    config/<repo>/modes/<node>    "frozen" | "if_unchanged" | "always"  (operator override)
"""

from __future__ import annotations

import enum
import json
from typing import Any

import attrs

from mhafail.errors import InvalidChange

CONFIG = "config"


def head_path(repo: str) -> str:
    """The znode holding the published head of ``repo``."""
    return f"{CONFIG}/{repo}/head"


def applied_path(repo: str, node: str = "") -> str:
    """The znode (or, without ``node``, the folder) of per-node apply reports."""
    base = f"{CONFIG}/{repo}/applied"
    return f"{base}/{node}" if node else base


def mode_path(repo: str, node: str = "") -> str:
    """The znode (or folder) of operator mode overrides (freeze / thaw)."""
    base = f"{CONFIG}/{repo}/modes"
    return f"{base}/{node}" if node else base


class UpdateMode(enum.Enum):
    """How a node follows the published head.

    * ``ALWAYS``: apply every published version; uncommitted edits in the
      node's working copy are saved as a git stash entry, then replaced.
    * ``IF_UNCHANGED``: apply only while the working copy has no
      uncommitted edits that the new version would overwrite; otherwise
      hold (state ``held``) and keep the old version live.
    * ``FROZEN``: apply nothing (state ``held``) until thawed.
    """

    ALWAYS = "always"
    IF_UNCHANGED = "if_unchanged"
    FROZEN = "frozen"


class ApplyState(enum.Enum):
    """A node's state for the published head, as reported in ``applied/<node>``.

    * ``APPLIED``: ``sha`` is live (``current`` points at it).
    * ``PENDING``: working on it, or waiting for a peer that has the commit
      (``error`` says why when it is stuck).
    * ``REJECTED``: the node's own validators refused ``target``; ``sha``
      (the old version) stays live; ``error`` says why.
    * ``HELD``: frozen, or local edits block the update (``if_unchanged``).
    """

    APPLIED = "applied"
    PENDING = "pending"
    REJECTED = "rejected"
    HELD = "held"


def _loads(data: bytes, what: str) -> dict[str, Any]:
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise InvalidChange(f"malformed {what}: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidChange(f"malformed {what}: not a JSON object")
    return raw


@attrs.frozen
class Head:
    """The published head of a repository (``config/<repo>/head``).

    Attributes:
        sha: the commit every node should apply.
        author: who committed it (``Name <email>``).
        message: the commit message.
        time: commit time, seconds since the epoch.
        parent: the previous head (None for the first commit).
        origin: the node whose repository first held the commit (tried
            first when fetching); empty when unknown.
    """

    sha: str
    author: str
    message: str
    time: float
    parent: str | None = None
    origin: str = ""

    def to_json(self) -> bytes:
        """Encode for the head znode."""
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Head:
        """Decode the head znode.

        Raises:
            InvalidChange: the data is not a head document.
        """
        raw = _loads(data, "head znode")
        try:
            return cls(
                sha=str(raw["sha"]),
                author=str(raw.get("author", "")),
                message=str(raw.get("message", "")),
                time=float(raw.get("time", 0.0)),
                parent=None if raw.get("parent") is None else str(raw["parent"]),
                origin=str(raw.get("origin", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidChange(f"malformed head znode: {exc}") from exc


@attrs.frozen
class NodeReport:
    """One node's report for a repository (``config/<repo>/applied/<node>``).

    Attributes:
        node: the node name.
        sha: the version live on the node (None before the first apply).
        state: see :class:`ApplyState`.
        target: the published sha the node is working towards.
        error: why the node is rejected, held or stuck ("" when fine).
        mode: the node's effective update mode.
        time: wall-clock time of the report.
    """

    node: str
    sha: str | None
    state: ApplyState
    target: str | None = None
    error: str = ""
    mode: UpdateMode = UpdateMode.ALWAYS
    time: float = 0.0

    def to_json(self) -> bytes:
        """Encode for the applied znode."""
        return json.dumps(
            {
                "node": self.node,
                "sha": self.sha,
                "state": self.state.value,
                "target": self.target,
                "error": self.error,
                "mode": self.mode.value,
                "time": self.time,
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, node: str, data: bytes) -> NodeReport:
        """Decode an applied znode.

        Raises:
            InvalidChange: the data is not a report.
        """
        raw = _loads(data, f"report of {node}")
        try:
            return cls(
                node=node,
                sha=raw.get("sha"),
                state=ApplyState(raw["state"]),
                target=raw.get("target"),
                error=str(raw.get("error", "")),
                mode=UpdateMode(raw.get("mode", "always")),
                time=float(raw.get("time", 0.0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidChange(f"malformed report of {node}: {exc}") from exc


@attrs.frozen
class Commit:
    """A commit that was published (the result of ``commit`` and ``rollback``).

    Attributes:
        sha: the new commit, now the published head.
        parent: the head it replaced (None for the first commit).
        paths: the repository paths it changed.
        rebased: True when it was rebased onto a newer head than its base.
        head: the head document as published.
    """

    sha: str
    parent: str | None
    paths: tuple[str, ...]
    rebased: bool
    head: Head


@attrs.frozen
class LogEntry:
    """One commit in the history (``log``)."""

    sha: str
    parent: str | None
    author: str
    time: float
    message: str


@attrs.frozen
class ClusterStatus:
    """The published head and every node's report (``status``).

    Attributes:
        head: the published head, or None before the first commit.
        nodes: the report of every node that ever reported, by name.
        drift: names of nodes whose live version is not the head or whose
            state is not ``applied``.
    """

    head: Head | None
    nodes: dict[str, NodeReport]
    drift: tuple[str, ...]


@attrs.frozen
class ApplyOutcome:
    """What one pass of a node's apply loop did.

    Attributes:
        state: the state the node reported.
        sha: the version live after the pass.
        target: the published head the pass worked towards.
        changed: True when the pass switched ``current`` to a new version.
        error: the reason for ``rejected``, ``held`` or a stuck ``pending``.
    """

    state: ApplyState
    sha: str | None
    target: str | None
    changed: bool = False
    error: str = ""
