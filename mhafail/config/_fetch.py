"""Finding the peers that serve a repository, and fetching a commit from them."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

from mhafail.config._objects import (
    EXEC_MODE,
    FILE_MODE,
    TREE_MODE,
    decompress,
    parse_commit,
    parse_tree,
)
from mhafail.config._paths import Limits, check_component, check_path, check_sha
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


def bundle_commit(store: GitStore, sha: str, objects: Sequence[str]) -> bytes:
    """The loose object files of ``objects`` and commit ``sha``, for a proposal.

    Each is ``<sha> <length>\\n`` and the object file's bytes: zlib data
    the holder checks (:func:`unbundle`) and stores as they are, with no
    git process on either side (``pack-objects`` and ``unpack-objects``
    were two of the processes on a commit's critical path).

    Raises:
        RepositoryError: one of them is not a loose object here.
    """
    out = bytearray()
    loose = store.loose
    for oid in dict.fromkeys([*objects, sha]):
        try:
            data = loose.path(oid).read_bytes()
        except OSError as exc:
            raise RepositoryError(f"object {oid[:12]} is not loose in {store.path}") from exc
        out += b"%s %d\n%s" % (oid.encode(), len(data), data)
    return bytes(out)


def unbundle(
    store: GitStore, data: bytes, sha: str, parent: str | None, limits: Limits
) -> list[str]:
    """Check a proposal's objects as ``unpack-objects --strict`` would, store them, list them.

    Every object must be well formed and match its sha, be reachable from
    commit ``sha`` (whose parent must be ``parent``, already here), name
    only objects of the right type that are in the bundle or here, and
    its trees hold only regular files and directories with safe names
    (the rules of :func:`~mhafail.config._trees.check_tree`, which still
    checks the whole tree afterwards). Nothing is stored unless all pass.

    Returns:
        The objects, each after every object it names (commit last).

    Raises:
        InvalidChange: any check failed (the caller fetches instead).
    """
    raw = _split_bundle(data)
    cap = max(limits.max_file_bytes, MAX_PACK_BYTES * 8)
    objects = {oid: decompress(oid, body, cap) for oid, body in raw.items()}
    order: list[str] = []
    outside: dict[str, bytes] = {}  # named, not in the bundle: must be here, of this type

    def need(oid: str, kind: bytes) -> bool:
        if oid not in objects:
            outside[oid] = kind
            return False
        if objects[oid][0] != kind:
            raise InvalidChange(f"object {oid[:12]} is not a {kind.decode()}")
        return oid not in order

    def walk_tree(oid: str, where: str) -> None:
        for mode, name, child in parse_tree(objects[oid][1], where):
            try:
                path = where + check_component(name.decode("utf-8"), where + repr(name))
            except UnicodeDecodeError:
                raise InvalidChange(f"invalid path {where}{name!r}: not valid UTF-8") from None
            check_path(path, limits)
            if mode == TREE_MODE:
                if need(child, b"tree"):
                    walk_tree(child, path + "/")
            elif mode in (FILE_MODE, EXEC_MODE):
                if need(child, b"blob"):
                    order.append(child)
            else:
                raise InvalidChange(f"{path}: mode {mode.decode()} is not a regular file")
        order.append(oid)

    if sha not in objects or objects[sha][0] != b"commit":
        raise InvalidChange(f"proposal does not hold commit {sha[:12]}")
    tree, parents = parse_commit(objects[sha][1])
    if parents != ([parent] if parent else []):
        raise InvalidChange(f"commit {sha[:12]} does not build on {parent or 'nothing'}")
    if need(tree, b"tree"):
        walk_tree(tree, "")
    order.append(sha)
    if set(order) != set(objects):
        raise InvalidChange("proposal holds objects its commit does not reach")
    if parent is not None:
        outside[parent] = b"commit"
    here = store.object_sizes(list(outside))
    for oid, kind in outside.items():
        if here.get(oid, (b"", 0))[0] != kind:
            raise InvalidChange(f"proposal names {kind.decode()} {oid[:12]}, which is not here")
    store.loose.store({oid: raw[oid] for oid in order})
    return order


def _split_bundle(data: bytes) -> dict[str, bytes]:
    """``sha -> loose object bytes`` of a bundle, its framing checked."""
    if len(data) > MAX_PACK_BYTES:
        raise InvalidChange(f"proposal of {len(data)} bytes exceeds {MAX_PACK_BYTES}")
    raw: dict[str, bytes] = {}
    pos = 0
    while pos < len(data):
        eol = data.find(b"\n", pos, pos + 64)
        head = data[pos:eol].split(b" ") if eol > 0 else []
        if len(head) != 2 or not head[1].isdigit():
            raise InvalidChange("malformed proposal: bad object header")
        oid, size = check_sha(head[0].decode(errors="replace")), int(head[1])
        raw[oid] = data[eol + 1 : eol + 1 + size]
        pos = eol + 1 + size
        if pos > len(data):
            raise InvalidChange(f"malformed proposal: object {oid[:12]} is truncated")
    return raw
