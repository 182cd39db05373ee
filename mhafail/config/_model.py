"""Values: the published head, per-node reports, modes and outcomes.

ZooKeeper layout (relative to the cluster root)::

    config/<repo>/head            {"sha","author","message","time","parent","origin"}
    config/<repo>/applied/<node>  {"sha","state","error","target","mode","time"}
    config/<repo>/modes/<node>    "frozen" | "if_unchanged" | "always"  (operator override)
    config/<repo>/proposals/<sha> {"origin","time"}  ephemeral: a commit asking to be held
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Any

import attrs

from mhafail.errors import InvalidChange

CONFIG = "config"

# Caps on what another process may make us parse (safety rule 8).
MAX_HEAD_BYTES = 128 * 1024
MAX_REPORT_BYTES = 128 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
MAX_AUTHOR_BYTES = 1024
MAX_ERROR_BYTES = 64 * 1024
_SHA = re.compile(r"[0-9a-f]{40}")
_NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def head_path(repo: str) -> str:
    """The znode holding the published head of ``repo``."""
    return f"{CONFIG}/{repo}/head"


def applied_path(repo: str, node: str = "") -> str:
    """The znode (or, without ``node``, the folder) of per-node apply reports."""
    base = f"{CONFIG}/{repo}/applied"
    return f"{base}/{node}" if node else base


def proposal_path(repo: str, sha: str = "") -> str:
    """The ephemeral znode (or folder) of a commit waiting for holders before publication."""
    base = f"{CONFIG}/{repo}/proposals"
    return f"{base}/{sha}" if sha else base


MAX_HOLDS = 8
"""How many recently held proposals a report lists."""


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


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _loads(data: bytes, what: str, limit: int) -> dict[str, Any]:
    if not isinstance(data, bytes | bytearray):
        raise InvalidChange(f"malformed {what}: not bytes")
    if len(data) > limit:
        raise InvalidChange(f"malformed {what}: {len(data)} bytes, limit {limit}")
    try:
        raw = json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        # RecursionError: "[[[[..." nests deeper than the parser can go.
        raise InvalidChange(f"malformed {what}: {str(exc)[:200]}") from None
    if not isinstance(raw, dict):
        raise InvalidChange(f"malformed {what}: not a JSON object")
    return raw


def _sha(raw: dict[str, Any], key: str, what: str, *, optional: bool) -> str | None:
    value = raw.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or _SHA.fullmatch(value) is None:
        raise InvalidChange(f"malformed {what}: {key} must be 40 lower-case hex digits")
    return value


def _text(raw: dict[str, Any], key: str, what: str, limit: int) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise InvalidChange(f"malformed {what}: {key} must be a string")
    if len(value.encode(errors="surrogatepass")) > limit:
        raise InvalidChange(f"malformed {what}: {key} longer than {limit} bytes")
    return value


def _time(raw: dict[str, Any], what: str) -> float:
    value = raw.get("time", 0.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidChange(f"malformed {what}: time must be a number")
    try:
        result = float(value)
    except OverflowError:
        raise InvalidChange(f"malformed {what}: time out of range") from None
    if not math.isfinite(result) or result < 0:
        raise InvalidChange(f"malformed {what}: time must be finite and not negative")
    return result


@attrs.frozen
class Head:
    """The published head of a repository (``config/<repo>/head``).

    Attributes:
        sha: the commit every node should apply (40 lower-case hex digits).
        author: who committed it (``Name <email>``).
        message: the commit message.
        time: commit time, seconds since the epoch.
        parent: the previous head (None for the first commit).
        origin: the node whose repository first held the commit (tried
            first when fetching); empty when unknown.

    The head znode is shared data any ZooKeeper client with write access
    could have written: :meth:`from_json` accepts only a well-formed
    document within size caps and never lets another error escape.
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
        """Decode and check the head znode.

        Rules: at most :data:`MAX_HEAD_BYTES` of JSON holding an object;
        ``sha`` (and ``parent`` unless null) exactly 40 lower-case hex
        digits; ``origin`` empty or a node name; ``author`` and
        ``message`` strings within :data:`MAX_AUTHOR_BYTES` and
        :data:`MAX_MESSAGE_BYTES`; ``time`` a finite number >= 0. Other
        keys are ignored (newer writers may add some).

        Raises:
            InvalidChange: the data is not such a document (the message says why).
        """
        what = "head znode"
        raw = _loads(data, what, MAX_HEAD_BYTES)
        sha = _sha(raw, "sha", what, optional=False)
        assert sha is not None
        origin = _text(raw, "origin", what, 63)
        if origin and _NODE.fullmatch(origin) is None:
            raise InvalidChange(f"malformed {what}: origin {origin!r} is not a node name")
        return cls(
            sha=sha,
            author=_text(raw, "author", what, MAX_AUTHOR_BYTES),
            message=_text(raw, "message", what, MAX_MESSAGE_BYTES),
            time=_time(raw, what),
            parent=_sha(raw, "parent", what, optional=True),
            origin=origin,
        )


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
        holds: proposed commits (newest first, at most :data:`MAX_HOLDS`)
            this node fetched, checked and serves: the committer counts them.
    """

    node: str
    sha: str | None
    state: ApplyState
    target: str | None = None
    error: str = ""
    mode: UpdateMode = UpdateMode.ALWAYS
    time: float = 0.0
    holds: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """Encode for the applied znode."""
        return json.dumps(
            {
                "node": self.node,
                "sha": self.sha,
                "state": self.state.value,
                "target": self.target,
                # Readers refuse longer errors: cut here rather than be refused.
                "error": self.error.encode()[: MAX_ERROR_BYTES - 16].decode(errors="ignore"),
                "mode": self.mode.value,
                "time": self.time,
                "holds": list(self.holds[:MAX_HOLDS]),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, node: str, data: bytes) -> NodeReport:
        """Decode and check an applied znode.

        Rules: ``node`` a node name; at most :data:`MAX_REPORT_BYTES` of
        JSON holding an object; ``sha`` and ``target`` null or 40 lower-case
        hex digits; ``state`` and ``mode`` known values; ``error`` a string
        within :data:`MAX_ERROR_BYTES`; ``time`` a finite number >= 0;
        ``holds`` (optional) a list of at most :data:`MAX_HOLDS` shas.

        Raises:
            InvalidChange: the data is not a report (the message says why).
        """
        if not isinstance(node, str) or _NODE.fullmatch(node) is None:
            raise InvalidChange(f"malformed report: {str(node)[:80]!r} is not a node name")
        what = f"report of {node}"
        raw = _loads(data, what, MAX_REPORT_BYTES)
        state, mode = raw.get("state"), raw.get("mode", "always")
        holds = raw.get("holds", [])
        if (
            not isinstance(holds, list)
            or len(holds) > MAX_HOLDS
            or not all(isinstance(h, str) and _SHA.fullmatch(h) for h in holds)
        ):
            raise InvalidChange(f"malformed {what}: holds must list at most {MAX_HOLDS} shas")
        if not isinstance(state, str) or state not in {s.value for s in ApplyState}:
            raise InvalidChange(f"malformed {what}: unknown state {str(state)[:40]!r}")
        if not isinstance(mode, str) or mode not in {m.value for m in UpdateMode}:
            raise InvalidChange(f"malformed {what}: unknown mode {str(mode)[:40]!r}")
        return cls(
            node=node,
            sha=_sha(raw, "sha", what, optional=True),
            state=ApplyState(state),
            target=_sha(raw, "target", what, optional=True),
            error=_text(raw, "error", what, MAX_ERROR_BYTES),
            mode=UpdateMode(mode),
            time=_time(raw, what),
            holds=tuple(holds),
        )


@attrs.frozen
class Commit:
    """A commit that was published (the result of ``commit`` and ``rollback``).

    Attributes:
        sha: the new commit, now the published head.
        parent: the head it replaced (None for the first commit).
        paths: the repository paths it changed.
        rebased: True when it was rebased onto a newer head than its base.
        head: the head document as published.
        holders: the other nodes that held the commit before it was published.
    """

    sha: str
    parent: str | None
    paths: tuple[str, ...]
    rebased: bool
    head: Head
    holders: tuple[str, ...] = ()


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
