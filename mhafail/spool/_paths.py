"""NodePaths: each node's directories on shared storage (the SAN).

Layout under a shared root, which belongs to exactly one cluster::

    <root>/.mhafail-cluster      the cluster's name (refuses a second cluster)
    <root>/nodes/<node>/spool/   the node's Spool
    <root>/nodes/<node>/logs/    its logs
    <root>/nodes/<node>/audit/   its audit snapshots
    <root>/nodes/<node>/bound    OFD-locked by the live process bound to the name

Directories are created with mode 0750; no level may be a symlink (a
symlink planted on shared storage would redirect writes outside the root).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import time
from pathlib import Path

import attrs

from mhafail._json import decode_object
from mhafail.coordination import check_name
from mhafail.errors import InvalidArgument, MalformedData, SpoolInvalidArgument, SpoolPathConflict
from mhafail.spool._files import DIR_MODE, FILE_MODE, OfdLock, write_failed

MARKER = ".mhafail-cluster"
NODES = "nodes"


def _name(kind: str, value: str) -> str:
    try:
        return check_name(kind, value)
    except InvalidArgument as exc:
        raise SpoolInvalidArgument(str(exc)) from exc


def _real_dir(path: Path, *, create: bool) -> None:
    try:
        if create:
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=DIR_MODE)
        info = os.lstat(path)
    except OSError as exc:
        raise write_failed(f"cannot {'create' if create else 'use'} {path}", exc) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise SpoolPathConflict(f"{path} is not a directory (a symlink or a file): refusing it")


@attrs.frozen
class NodePaths:
    """The directories of node ``node`` of cluster ``cluster`` under ``root``.

    Args:
        root: the shared storage root (must exist).
        cluster: the cluster name.
        node: the node name.

    Raises:
        SpoolInvalidArgument: a malformed cluster or node name.
    """

    root: Path = attrs.field(converter=Path)
    cluster: str = attrs.field(validator=lambda _i, _a, v: _name("cluster name", v))
    node: str = attrs.field(validator=lambda _i, _a, v: _name("node name", v))

    @property
    def node_dir(self) -> Path:
        """``<root>/nodes/<node>``."""
        return self.root / NODES / self.node

    @property
    def spool(self) -> Path:
        """The node's spool directory."""
        return self.node_dir / "spool"

    @property
    def logs(self) -> Path:
        """The node's log directory."""
        return self.node_dir / "logs"

    @property
    def audit(self) -> Path:
        """The node's audit directory."""
        return self.node_dir / "audit"

    def create(self) -> NodePaths:
        """Check the root's cluster and create the node's directories (idempotent).

        Returns:
            self.

        Raises:
            SpoolPathConflict: the root belongs to another cluster, or a
                level of the layout is a symlink or a file.
            SpoolWriteFailed: the directories cannot be created.
        """
        check_root(self.root, self.cluster)
        for level in (self.root / NODES, self.node_dir, self.spool, self.logs, self.audit):
            _real_dir(level, create=True)
        return self

    def check(self) -> NodePaths:
        """Like :meth:`create` but creating nothing (another node's paths, for takeover).

        Raises:
            SpoolPathConflict: wrong cluster, or a level is not a real directory.
        """
        check_root(self.root, self.cluster, create=False)
        for level in (self.root / NODES, self.node_dir, self.spool):
            _real_dir(level, create=False)
        return self

    def bind(self) -> NodeBinding:
        """Bind this process to the node name on the shared storage.

        Keep the returned binding open as long as the node runs; the kernel
        releases it when the process dies.

        Raises:
            SpoolPathConflict: another live process (on any host sharing the
                storage) is bound to this node name; the message names it.
        """
        self.create()
        lock = OfdLock(self.node_dir / "bound")
        if not lock.try_lock():
            holder = lock.read()
            lock.close()
            try:
                doc = decode_object(holder, what="binding record", max_depth=1)
                who = f"pid {doc.get('pid')} on {doc.get('host')}"
            except MalformedData:
                who = "an unknown process"
            raise SpoolPathConflict(
                f"node name {self.node!r} is already bound to a live node ({who}) on {self.root}"
            )
        lock.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}).encode())
        return NodeBinding(paths=self, lock=lock)


@attrs.define(eq=False)
class NodeBinding:
    """A held binding of a node name (see :meth:`NodePaths.bind`); :meth:`close` releases it."""

    paths: NodePaths
    lock: OfdLock

    def close(self) -> None:
        """Release the binding."""
        self.lock.close()


def check_root(root: Path, cluster: str, *, create: bool = True) -> None:
    """Refuse a root that another cluster uses; mark it as ``cluster``'s when new.

    Raises:
        SpoolPathConflict: the root names another cluster, or is not a directory.
        SpoolWriteFailed: the marker cannot be written.
    """
    _real_dir(root, create=False)
    marker = root / MARKER
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise write_failed(f"cannot mark {root}", exc) from exc
    else:
        if not create:
            os.close(fd)
            marker.unlink()
            raise SpoolPathConflict(f"{root} holds no cluster: nothing to take over there")
        try:
            os.write(fd, cluster.encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        return
    found = ""
    for _ in range(50):  # a racing first user may not have written its name yet
        try:
            found = marker.read_bytes()[:100].decode("utf-8", "replace").strip()
        except OSError as exc:
            raise write_failed(f"cannot read {marker}", exc) from exc
        if found:
            break
        time.sleep(0.01)
    if found != cluster:
        raise SpoolPathConflict(
            f"{root} belongs to cluster {found!r}, not {cluster!r}: "
            "each cluster needs its own shared root"
        )


def node_names(root: Path) -> list[str]:
    """The node names that have directories under ``root`` (valid names only), sorted."""
    try:
        names = os.listdir(root / NODES)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            check_name("node name", name)
        except InvalidArgument:
            continue
        out.append(name)
    return sorted(out)
