"""Finding the peers that serve a repository, and fetching a commit from them."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from mhafail.config._repo import GitStore
from mhafail.config._serve import ENDPOINT, repo_url
from mhafail.coordination import NodeInfo, Znodes
from mhafail.errors import FetchFailed, InvalidArgument, InvalidChange, RepositoryError

logger = logging.getLogger(__name__)


def live_peers(znodes: Znodes, node: str, name: str) -> list[tuple[str, str]]:
    """``(node, fetch URL)`` of every live member that serves git, ``node`` excluded."""
    result = []
    for member in znodes.children("members") or []:
        if member == node:
            continue
        znode = znodes.get(f"members/{member}")
        if znode is None:
            continue
        try:
            info = NodeInfo.from_json(znode.data)
        except InvalidArgument:
            continue
        endpoint = info.endpoints.get(ENDPOINT)
        if endpoint:
            try:
                result.append((member, repo_url(endpoint, name)))
            except InvalidChange as exc:
                logger.warning("%s: ignoring member %s: %s", name, member, exc)
    return result


def fetch_from_peers(
    store: GitStore,
    name: str,
    sha: str,
    *,
    origin: str,
    peers: Sequence[tuple[str, str]],
    timeout: float,
) -> None:
    """Fetch ``sha`` from the first peer that has a clean copy (``origin`` first).

    The others are tried in random order, so that a burst of nodes does
    not pile onto one peer.

    Raises:
        InvalidChange: every peer that answered sent objects failing fsck.
        FetchFailed: no peer had it; the message lists each attempt.
    """
    candidates = list(peers)
    random.shuffle(candidates)
    candidates.sort(key=lambda p: p[0] != origin)
    failures: list[str] = []
    unsafe: list[str] = []
    for peer, url in candidates:
        try:
            store.fetch(url, sha, timeout)
        except InvalidChange as exc:
            # Another peer may still send clean objects for the same sha
            # (a sha fixes the commit, not the extra objects a pack holds).
            unsafe.append(f"{peer}: {exc}")
            continue
        except RepositoryError as exc:
            failures.append(f"{peer}: {str(exc).splitlines()[-1]}")
            continue
        logger.info("%s: fetched %s from %s", name, sha[:12], peer)
        return
    if unsafe:
        raise InvalidChange(f"refusing {sha[:12]} of {name}: " + "; ".join(unsafe))
    tried = "; ".join(failures) if failures else "no peer serves this repository"
    raise FetchFailed(f"cannot fetch {sha[:12]} of {name}: {tried}")


MAX_PACK_BYTES = 512 * 1024
"""Largest pack a proposal carries; a larger commit is fetched from a git daemon."""


def pack_commit(store: GitStore, sha: str, parent: str | None) -> bytes:
    """The objects of ``sha`` that ``parent`` does not reach, as a git pack."""
    revs = f"{sha}\n" + (f"^{parent}\n" if parent else "")
    return store.git("pack-objects", "--stdout", "--revs", "-q", input=revs.encode())


def unpack_commit(store: GitStore, pack: bytes) -> None:
    """Store the objects of a pack a committer sent, every one checked like a fetch.

    ``unpack-objects --strict`` runs git's fsck checks on each object and
    refuses links to objects that are not here, exactly as
    ``transfer.fsckObjects`` does for a fetch.

    Raises:
        InvalidChange: the pack is too large, or git refused it.
    """
    if len(pack) > MAX_PACK_BYTES:
        raise InvalidChange(f"proposal pack of {len(pack)} bytes exceeds {MAX_PACK_BYTES}")
    try:
        store.git("unpack-objects", "-q", "--strict", input=pack)
    except RepositoryError as exc:
        raise InvalidChange(f"proposal pack refused: {str(exc).splitlines()[-1]}") from exc
