"""LogAggregator: a cluster manager pulls every node's logs into one tree.

Concurrency: a :class:`~mhafail.coordination.ConvergeLoop` (kicked by
membership changes, by new sessions and by a timer) registers the manager,
discovers nodes and their logs, and starts or stops one
:class:`~mhafail.logs._stream.Stream` thread per (node, log). Streams
write their own files; the shared :class:`OutputFiles` pool caps open files.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from mhafail.channel import endpoints_in
from mhafail.coordination import ClusterView, ConvergeLoop, Coordinator, Membership, check_name
from mhafail.errors import (
    CoordinationError,
    InvalidArgument,
    LogsError,
    LogsInvalidArgument,
    ManagerNameTaken,
)

from . import _auth
from ._client import open_request
from ._framing import DEFAULT_FRAMING, Framing
from ._output import DEFAULT_PATTERN, OutputFiles, PathPattern
from ._protocol import DEFAULT_MAX_FRAME, MIN_MAX_FRAME
from ._service import check_log_name
from ._state import StateStore
from ._stream import Commit, Stream, StreamStatus

logger = logging.getLogger(__name__)


def _framing(value: str | Framing) -> Framing:
    return Framing.parse(value)


MANAGERS = "managers"
ENDPOINT = "jlog"
#: Longest a ZooKeeper call on the stop path waits (seconds).
STOP_ZK_TIMEOUT = 0.5


@attrs.define(kw_only=True, eq=False)
class LogAggregator:
    """Pulls the logs of every node offering a ``jlog`` endpoint into files under ``base``.

    Args:
        coordinator: a started coordinator.
        membership: a started membership (its view lists the nodes).
        name: this manager's name: its subscriber name on every node and
            its ``managers/<name>`` znode. Two live managers never share one.
        base: the output directory.
        pattern: output path pattern (see :class:`PathPattern`); default
            ``%Y/%m/%d/{log}/{cluster}/{node}``.
        framing: how records are laid out in the files (:class:`Framing` or
            its name): ``escaped`` (default) and ``length`` read back
            exactly whatever the records hold; ``lines`` (raw records and a
            newline) is ambiguous for records with newlines or empty ones.
            Keep one framing per output tree.
        state_dir: where positions are kept (default ``base/.mhafail-state``);
            put it on the same file system as ``base``.
        logs: log names to pull (default: every log a node offers).
        secret: the shared secret nodes expect (see ``docs/channel.md``);
            never shown in ``repr``. Without it (and without TLS) only
            nodes on loopback addresses are pulled from.
        ssl_context: client TLS context for nodes that speak TLS.
        file_mode: mode of new output files.
        dir_mode: mode of new directories.
        max_open_files: output files kept open at most.
        idle_close: seconds after which an unused output file is closed.
        commit_records: records written before an fsync + state save + ack
            at the latest.
        commit_delay: seconds a written record waits at most for its commit.
        heartbeat: heartbeat interval; a node silent for three is dropped.
        connect_timeout: seconds for a connection and each handshake step.
        retry: first delay before retrying a failed stream (doubles per
            failure, up to ``retry_max``).
        retry_max: longest delay between attempts.
        max_frame: largest frame accepted from a node.
        refresh: seconds between periodic passes (re-listing nodes' logs).
        stale_wait: how long :meth:`start` waits for a crashed predecessor's
            ``managers/<name>`` znode to go (default: twice the session
            timeout plus a second).
        on_commit: called on the stream's thread after each commit (must
            not block); for metrics and benchmarks.

    Thread safety: :meth:`status` may be called from any thread.
    """

    coordinator: Coordinator
    membership: Membership
    name: str
    base: Path = attrs.field(converter=Path)
    pattern: str = DEFAULT_PATTERN
    framing: Framing = attrs.field(default=DEFAULT_FRAMING, converter=_framing)
    state_dir: Path | None = None
    logs: Sequence[str] | None = None
    secret: bytes | None = attrs.field(default=None, converter=_auth.check_secret, repr=False)
    ssl_context: ssl.SSLContext | None = None
    file_mode: int = 0o640
    dir_mode: int = 0o750
    max_open_files: int = 256
    idle_close: float = 60.0
    commit_records: int = 16384
    commit_delay: float = 0.05
    heartbeat: float = 1.0
    connect_timeout: float = 5.0
    retry: float = 0.5
    retry_max: float = 5.0
    max_frame: int = DEFAULT_MAX_FRAME
    refresh: float = 5.0
    stale_wait: float | None = None
    on_commit: Callable[[Commit], None] | None = None

    files: OutputFiles = attrs.field(init=False)
    store: StateStore = attrs.field(init=False)
    path_pattern: PathPattern = attrs.field(init=False)
    _streams: dict[tuple[str, str], Stream] = attrs.field(init=False, factory=dict)
    _dying: dict[tuple[str, str], Stream] = attrs.field(init=False, factory=dict)
    _node_logs: dict[str, tuple[str, list[str], float]] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _loop: ConvergeLoop | None = attrs.field(init=False, default=None)
    _started: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        try:
            check_name("manager name", self.name)
        except InvalidArgument as exc:
            raise LogsInvalidArgument(str(exc)) from None
        for log in self.logs or ():
            check_log_name(log)
        if self.commit_records < 1 or self.commit_delay < 0 or self.heartbeat <= 0:
            raise LogsInvalidArgument("commit_records >= 1, commit_delay >= 0, heartbeat > 0")
        if self.max_frame < MIN_MAX_FRAME:
            raise LogsInvalidArgument(f"max_frame must be at least {MIN_MAX_FRAME} bytes")
        self.path_pattern = PathPattern(self.pattern, self.coordinator.cluster)
        self.files = OutputFiles(
            self.base,
            file_mode=self.file_mode,
            dir_mode=self.dir_mode,
            max_open=self.max_open_files,
            idle_close=self.idle_close,
        )
        state_dir = self.state_dir if self.state_dir is not None else self.base / ".mhafail-state"
        self.store = StateStore(Path(state_dir), dir_mode=self.dir_mode)

    @property
    def znode(self) -> str:
        """This manager's registration znode, relative to the cluster root."""
        return f"{MANAGERS}/{self.name}"

    def start(self) -> LogAggregator:
        """Register under ``managers/<name>`` and start pulling.

        Returns:
            The aggregator.

        Raises:
            ManagerNameTaken: another live manager holds the name.
            CoordinationUnavailable: ZooKeeper could not be asked.
        """
        self.files.make_dirs(self.base)
        self._register(wait=True)
        self._started = True
        self._loop = ConvergeLoop(
            f"mhafail-logs-manager-{self.name}", self._converge, period=min(1.0, self.refresh)
        )
        self.membership.add_listener(self._loop.kick)
        self.coordinator.add_session_listener(self._loop.kick)
        self._loop.start()
        return self

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every stream, close files, unregister; bounded whatever ZooKeeper does.

        Each stream commits what it wrote (fsync, state) before it ends, so
        the output and the states are complete up to the last record
        received. Streams get ``timeout`` seconds in all; one still stuck
        (in a connect to a hung node, say) is left to end on its own: it
        can no longer start anything, and what it holds unsaved is cut on
        the next start. The unregistration waits at most
        :data:`STOP_ZK_TIMEOUT` for ZooKeeper; a znode left behind goes
        with the session.
        """
        end = time.monotonic() + timeout
        with self._lock:
            self._started = False
        if self._loop is not None:
            self._loop.stop(min(timeout, STOP_ZK_TIMEOUT))
        with self._lock:
            streams = [*self._streams.values(), *self._dying.values()]
            self._streams.clear()
            self._dying.clear()
        for stream in streams:
            stream.stop()
        for stream in streams:
            stream.join(max(0.0, end - time.monotonic()))
        self.files.close_all()
        znodes = self.coordinator.znodes.bounded(STOP_ZK_TIMEOUT)
        try:
            node = znodes.get(self.znode)
            if node is not None and node.ephemeral_owner == self.coordinator.session_id:
                znodes.delete(self.znode, version=node.version)
        except CoordinationError as exc:
            logger.info("could not delete %s (%s); it goes with the session", self.znode, exc)

    def __enter__(self) -> LogAggregator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def status(self) -> list[StreamStatus]:
        """Every stream's durable position, sorted by node and log."""
        with self._lock:
            streams = sorted(self._streams.items())
        return [stream.status() for _, stream in streams]

    def wait_for(self, predicate: Callable[[list[StreamStatus]], bool], timeout: float) -> None:
        """Block until ``predicate(status())`` holds.

        Raises:
            TimeoutError: it did not within ``timeout`` seconds.
        """
        end = time.monotonic() + timeout
        while not predicate(self.status()):
            if time.monotonic() > end:
                raise TimeoutError(f"streams never reached the state: {self.status()}")
            time.sleep(0.05)

    # --- internals ------------------------------------------------------------------

    def _info(self) -> bytes:
        doc = {
            "name": self.name,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "base": str(self.base),
            "started_at": time.time(),
        }
        return json.dumps(doc, sort_keys=True).encode()

    def _register(self, *, wait: bool) -> bool:
        """Hold ``managers/<name>``; True when it is ours."""
        znodes = self.coordinator.znodes
        znodes.ensure(MANAGERS)
        limit = self.stale_wait
        if limit is None:
            limit = 2 * self.coordinator.effective_timeout + 1
        give_up = time.monotonic() + (limit if wait else 0)
        while True:
            if znodes.create(self.znode, self._info(), ephemeral=True) is not None:
                logger.info("registered %s", self.znode)
                return True
            node = znodes.get(self.znode)
            if node is None:
                continue
            if node.ephemeral_owner == self.coordinator.session_id:
                return True
            if time.monotonic() >= give_up:
                if wait:
                    raise ManagerNameTaken(
                        f"manager name {self.name!r} is held by another live session "
                        f"({node.ephemeral_owner:#x}): {node.data.decode(errors='replace')}"
                    )
                return False
            # A crashed predecessor's session expires on its own; wait for it.
            time.sleep(0.1)

    def _converge(self) -> None:
        if not self._started:
            return
        if not self._register(wait=False):
            logger.error("%s is held by another manager; not pulling logs", self.znode)
            self._reconcile({})
            return
        self.files.close_idle()
        wanted: dict[tuple[str, str], str] = {}
        for name, endpoint in self._nodes(self.membership.view).items():
            for log in self._logs_of(name, endpoint):
                if self.logs is None or log in self.logs:
                    wanted[(name, log)] = endpoint
        self._reconcile(wanted)

    def _nodes(self, view: ClusterView) -> dict[str, str]:
        return endpoints_in(view, ENDPOINT)

    def _logs_of(self, node: str, endpoint: str) -> list[str]:
        """The node's log names, re-listed every ``refresh`` seconds or on a new endpoint."""
        cached = self._node_logs.get(node)
        now = time.monotonic()
        if cached is not None and cached[0] == endpoint and now - cached[2] < self.refresh:
            return cached[1]
        try:
            opened = open_request(
                endpoint,
                {"op": "list"},
                secret=self.secret,
                ssl_context=self.ssl_context,
                timeout=self.connect_timeout,
            )
        except LogsError as exc:
            logger.warning("%s: cannot list logs at %s: %s", node, endpoint, exc)
            return cached[1] if cached is not None else []
        opened.conn.close()
        raw = opened.accept.get("logs")
        logs = []
        for log in raw if isinstance(raw, list) else []:
            try:
                logs.append(check_log_name(log))
            except LogsInvalidArgument:
                logger.warning("%s: ignoring badly named log %r", node, log)
        self._node_logs[node] = (endpoint, logs, now)
        return logs

    def _reconcile(self, wanted: dict[tuple[str, str], str]) -> None:
        with self._lock:
            if not self._started:
                return  # stop() ran while this pass waited on ZooKeeper or a node
            gone = [k for k in self._streams if k not in wanted]
            stopped = [self._streams.pop(k) for k in gone]
            self._dying = {k: s for k, s in self._dying.items() if s.thread.is_alive()}
            self._dying.update({(s.node, s.log): s for s in stopped})
            for key, endpoint in wanted.items():
                stream = self._streams.get(key)
                if stream is None and key in self._dying:
                    continue  # never two writers on one file: wait for the old one to end
                if stream is None:
                    stream = Stream(self, key[0], key[1], endpoint)
                    self._streams[key] = stream
                    stream.start()
                else:
                    stream.endpoint = endpoint
        for stream in stopped:
            logger.info("%s/%s: node left; stopping its stream", stream.node, stream.log)
            stream.stop()
