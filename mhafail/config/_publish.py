"""Publication: the replication quorum, the head compare-and-set, and settling it.

``replicate`` proposes a commit (``config/<repo>/proposals/<sha>``,
ephemeral) and waits until enough other nodes' reports list it in
``holds``; ``publish`` moves the head by compare-and-set, only on a live
connection, and ``withdraw`` removes the proposal after it; ``settle``
finds out, by an ordered re-read, whether a compare-and-set that got no
answer took effect.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mhafail.config._fetch import MAX_PACK_BYTES, bundle_commit, pack_commit
from mhafail.config._model import Head, NodeReport, applied_path, head_path, proposal_path
from mhafail.config._refs import update_ref
from mhafail.config._repo import BRANCH
from mhafail.coordination import ConnectionState, Znode
from mhafail.errors import (
    CoordinationUnavailable,
    InvalidChange,
    NotReplicated,
    PublishOutcomeUnknown,
    RepositoryError,
)

if TYPE_CHECKING:
    from mhafail.config._repository import ConfigRepository

logger = logging.getLogger(__name__)

OUTGOING = "refs/mhafail/outgoing"


def holds(node: str, znode: Znode | None, sha: str) -> bool:
    """True when ``node``'s report says it holds (or runs) commit ``sha``."""
    if znode is None:
        return False
    try:
        report = NodeReport.from_json(node, znode.data)
    except InvalidChange:
        return False
    return sha in report.holds or report.sha == sha


def replicate(
    repo: ConfigRepository,
    sha: str,
    replicas: int | None,
    parent: str | None,
    objects: Sequence[str] | None = None,
) -> tuple[str, ...]:
    """Propose ``sha`` and wait until enough other nodes hold it; return them.

    The proposal carries the commit's new objects when they fit in
    :data:`MAX_PACK_BYTES`: the loose object files of ``objects`` (what
    the commit adds to ``parent``, known to a committer that just wrote
    them), else a git pack of what ``parent`` does not reach:
    agents store them with git's checks instead of each fetching from this
    node's git daemon, which was most of the time a commit took.

    Raises:
        NotReplicated: too few live nodes, or too few held it in time.
        CoordinationUnavailable: ZooKeeper could not be asked.
    """
    want = repo.replicas if replicas is None else replicas
    if want is not None and want < 0:
        raise InvalidChange(f"invalid replicas {want}: use 0 or more")
    if want == 0:
        return ()
    znodes = repo.znodes()
    members = znodes.children("members") or []
    others = [m for m in members if m != repo.node]
    if want is None:
        mine = 1 if repo.node in members else 0
        want = max(1, (len(others) + mine) // 2 + 1 - mine)
    override = "; publish anyway with replicas=0 (`config commit --replicas 0`)"
    if want > len(others):
        raise NotReplicated(
            f"{sha[:12]} of {repo.name} was not published: it must be held by {want} "
            f"other node(s) first and only {len(others)} other node(s) are live"
            f" ({', '.join(others) or 'none'}){override}",
            sha=sha,
        )
    path = proposal_path(repo.name, sha)
    about: dict[str, object] = {"origin": repo.node, "parent": parent, "time": time.time()}
    if objects is not None and parent is not None:
        about["objects"] = "loose"
        pack = bundle_commit(repo.store, sha, objects)
    else:
        pack = pack_commit(repo.store, sha, parent)
    data = json.dumps(about).encode()
    if len(pack) <= MAX_PACK_BYTES:
        data += b"\n" + pack
    znodes.create(path, data, ephemeral=True, makepath=True)
    try:
        end = time.monotonic() + repo.replicate_timeout
        pause = 0.001
        while True:
            found = znodes.get_many([applied_path(repo.name, m) for m in others])
            holders = tuple(m for m in others if holds(m, found[applied_path(repo.name, m)], sha))
            if len(holders) >= want:
                return holders
            if time.monotonic() >= end:
                raise NotReplicated(
                    f"{sha[:12]} of {repo.name} was not published: {len(holders)} of the "
                    f"{want} other node(s) needed held it after {repo.replicate_timeout:g} s"
                    f" (held by: {', '.join(holders) or 'none'}); does this node's git "
                    f"daemon serve {repo.root} (`config agent --dir {repo.base}`)?{override}",
                    sha=sha,
                    holders=holders,
                )
            time.sleep(pause)
            pause = min(0.008, pause * 2)
    except BaseException:
        withdraw(repo, sha)
        raise


def withdraw(repo: ConfigRepository, sha: str) -> None:
    """Remove the proposal of ``sha`` (after its compare-and-set, won or lost).

    After, not before: agents see the head move and the proposal go in
    one pass instead of two. Never raises: the proposal is ephemeral and
    goes with the session anyway.
    """
    with contextlib.suppress(CoordinationUnavailable):
        repo.znodes().delete(proposal_path(repo.name, sha))


def publish(
    repo: ConfigRepository,
    *,
    sha: str,
    parent: str | None,
    head: Head | None,
    version: int | None,
    message: str,
    author: str,
) -> Head | None:
    new = Head(
        sha=sha,
        author=author,
        message=message.strip(),
        time=time.time(),
        parent=parent,
        origin=repo.node,
    )
    coordinator = repo._coordinator()
    # A request kazoo queues while disconnected is sent when the
    # connection returns, however late (a commit once went live 52 s
    # after its call had failed): send the compare-and-set only on a
    # live connection. Requests queued before a drop are failed by
    # kazoo, never resent.
    if coordinator.state is not ConnectionState.CONNECTED:
        raise CoordinationUnavailable(
            f"{sha[:12]} of {repo.name} was not published: no ZooKeeper connection"
        )
    znodes = repo.znodes()
    try:
        if version is None:
            won = znodes.create(head_path(repo.name), new.to_json(), makepath=True) is not None
        else:
            won = znodes.set(head_path(repo.name), new.to_json(), version=version) is not None
    except CoordinationUnavailable as exc:
        won = settle(repo, sha, version, exc)
    served = repo.export_dir  # _export() created it before the CAS
    if not won:
        logger.info("%s: lost the head CAS with %s", repo.name, sha[:12])
        with contextlib.suppress(RepositoryError):
            update_ref(served, OUTGOING, None)
        return None
    repo._verified.add(sha)
    # Published: main moves to it, and the outgoing ref is no longer needed.
    # Nothing after the CAS may raise: the caller would see a failure
    # for a commit that is live (peers can fetch it by sha regardless).
    try:
        update_ref(served, BRANCH, sha)
        update_ref(served, OUTGOING, None)
    except (RepositoryError, OSError) as exc:
        logger.warning("%s: export ref not moved to %s: %s", repo.name, sha[:12], exc)
    logger.info("%s: published %s (%s)", repo.name, sha[:12], new.message.splitlines()[0])
    return new


def settle(repo: ConfigRepository, sha: str, version: int | None, cause: Exception) -> bool:
    """Whether a compare-and-set that got no answer took effect (True: published).

    Requests on one ZooKeeper session are answered in order, so a head
    read answered after the unanswered write says for certain whether
    it was applied: at our version + 1 the head is ours or not, at + 2
    its parent is. Reads are retried until ``zk_timeout`` runs out.

    Raises:
        PublishOutcomeUnknown: no read was answered in time.
    """
    ours = 0 if version is None else version + 1
    end = time.monotonic() + repo.zk_timeout
    while True:
        try:
            node = repo.znodes().bounded(max(0.1, end - time.monotonic())).get(head_path(repo.name))
            break
        except CoordinationUnavailable:
            if time.monotonic() >= end:
                raise PublishOutcomeUnknown(
                    f"publishing {sha[:12]} of {repo.name}: outcome unknown, the "
                    f"compare-and-set (head version {version}) got no answer and "
                    f"ZooKeeper stayed unreachable ({cause}); it is published if and "
                    f"only if `config status` shows head {sha[:12]} (or a head whose "
                    "parent it is); it cannot take effect later than that",
                    sha=sha,
                ) from cause
            time.sleep(0.05)
    if node is None or node.version < ours:
        return False
    head = Head.from_json(node.data)
    if node.version == ours:
        return head.sha == sha
    if node.version == ours + 1:
        return head.parent == sha
    return repo.store.is_ancestor(sha, head.sha)  # several commits since: ask git
