"""Manager side of one (node, log) stream: receive, write, fsync, save, acknowledge.

Each stream runs on its own thread and owns its output files and its state
file (see :mod:`mhafail.logs._state` for why the output is exactly-once).
Any failure (node gone, network cut, full disk, protocol error) closes the
connection; the next attempt first cuts the current file back to the saved
offset, then resumes after the saved id.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING

import attrs

from mhafail.errors import LogsError, ProtocolError, StreamRefused
from mhafail.jlog import MessageId

from ._client import open_request
from ._framing import frame_records
from ._protocol import (
    Frame,
    FrameType,
    Reassembly,
    Records,
    decode_records,
    encode_ack,
    encode_frame,
    format_id,
)
from ._protocol import parse_id as parse_frame_id
from ._state import StreamState
from ._wire import Connection, PeerClosed

if TYPE_CHECKING:
    from ._aggregator import LogAggregator

logger = logging.getLogger(__name__)

#: Longest a stream's receive waits before it looks at its stop flag (seconds).
STOP_POLL = 0.25
#: Longest each send of a stopping stream waits (its last ACK, its ERROR).
STOP_SEND = 0.5


@attrs.frozen
class StreamStatus:
    """What a manager knows about one (node, log) stream.

    Attributes:
        node: the node.
        log: the log name.
        endpoint: where the node serves it.
        connected: whether records can flow now.
        last_id: the last record durably written (None: nothing yet).
        records: records written for this stream, in total.
        file: the file being written (relative to the output base).
        error: why the last attempt failed (None when fine).
    """

    node: str
    log: str
    endpoint: str
    connected: bool
    last_id: MessageId | None
    records: int
    file: str | None
    error: str | None


@attrs.frozen
class Commit:
    """What one commit made durable (passed to ``on_commit``).

    Attributes:
        node: the node.
        log: the log.
        last_id: the last record now durable.
        times: write time (on the node) of every record in the commit.
        durable_at: wall-clock time the state was saved.
    """

    node: str
    log: str
    last_id: MessageId
    times: list[float]
    durable_at: float


class Stream:
    """The stream of one (node, log) into one aggregator.

    Args:
        agg: the aggregator (configuration, files, state store).
        node: the node name.
        log: the log name.
        endpoint: the node's log service ``host:port`` (updated by the aggregator).
    """

    def __init__(self, agg: LogAggregator, node: str, log: str, endpoint: str) -> None:
        self.agg = agg
        self.node = node
        self.log = log
        self.endpoint = endpoint
        self.stop_event = threading.Event()
        self.state = StreamState()
        self.connected = False
        self.error: str | None = None
        self._conn: Connection | None = None
        self._size = 0
        self._pending = 0
        self._pending_since = 0.0
        self._pending_times: list[float] = []
        self._last = StreamState()
        self._period = (0.0, -1.0)
        self._rel: str | None = None
        self.thread = threading.Thread(
            target=self._run, name=f"mhafail-logs-{node}-{log}", daemon=True
        )

    def status(self) -> StreamStatus:
        """A snapshot of the stream's progress (durable position only)."""
        state = self._last
        return StreamStatus(
            node=self.node,
            log=self.log,
            endpoint=self.endpoint,
            connected=self.connected,
            last_id=state.last_id,
            records=state.records,
            file=state.file,
            error=self.error,
        )

    def start(self) -> None:
        """Start the stream's thread."""
        self.thread.start()

    def stop(self) -> None:
        """Ask the stream to stop after its current step (see :meth:`join`); never blocks.

        The stream's own thread notices within :data:`STOP_POLL` seconds,
        commits what it wrote, acknowledges it and tells the node it is
        leaving, each send waiting at most :data:`STOP_SEND` seconds.
        """
        self.stop_event.set()

    def join(self, timeout: float) -> None:
        """Wait for the thread to end."""
        self.thread.join(timeout)

    # --- attempts --------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self.stop_event.is_set():
            try:
                self._attempt()
                failures = 0
            except (PeerClosed, StreamRefused, ProtocolError, LogsError, OSError) as exc:
                failures += 1
                self.error = str(exc)
                self._cut_back()
                level = logging.INFO if isinstance(exc, PeerClosed) else logging.WARNING
                logger.log(level, "%s/%s: stream stopped: %s", self.node, self.log, exc)
            except Exception as exc:
                failures += 1
                self.error = f"{type(exc).__name__}: {exc}"
                self._cut_back()
                logger.exception("%s/%s: stream failed", self.node, self.log)
            finally:
                self.connected = False
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
            delay = min(self.agg.retry * 2 ** max(0, failures - 1), self.agg.retry_max)
            self.stop_event.wait(delay)

    def _cut_back(self) -> None:
        """After a failure, drop unsaved bytes now (a full disk gets its space back)."""
        try:
            self._recover()
        except (OSError, LogsError) as exc:
            logger.warning("%s/%s: cannot cut back yet: %s", self.node, self.log, exc)

    def _recover(self) -> None:
        """Cut the current file back to the saved offset: drop what no state covers."""
        agg = self.agg
        state = agg.store.load(self.node, self.log)
        self.state = self._last = state
        self._pending = 0
        self._pending_times = []
        self._rel = None
        self._period = (0.0, -1.0)
        if state.file is None:
            return
        path = agg.base / state.file
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            logger.warning("%s/%s: output file %s is gone (moved away?)", self.node, self.log, path)
            return
        if size > state.offset:
            agg.files.forget(state.file)
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, state.offset)
                os.fsync(fd)
            finally:
                os.close(fd)
            logger.info(
                "%s/%s: cut %d unsaved bytes off %s", self.node, self.log, size - state.offset,
                state.file,
            )  # fmt: skip
        elif size < state.offset:
            logger.error(
                "%s/%s: %s is %d bytes, shorter than the %d recorded: it was changed outside "
                "the manager",
                self.node, self.log, path, size, state.offset,
            )  # fmt: skip

    def _attempt(self) -> None:
        agg = self.agg
        self._recover()
        request = {
            "op": "stream",
            "subscriber": agg.name,
            "log": self.log,
            "after": format_id(self.state.last_id),
        }
        opened = open_request(
            self.endpoint,
            request,
            secret=agg.secret,
            ssl_context=agg.ssl_context,
            timeout=agg.connect_timeout,
            max_frame=agg.max_frame,
            heartbeat=agg.heartbeat,
        )
        self._conn = opened.conn
        if self.stop_event.is_set():
            return
        start = parse_frame_id(opened.accept.get("start"), "start")
        last = self.state.last_id
        if last is not None and start is not None and start < last:
            raise ProtocolError(f"node would start at {start}, before our position {last}")
        self.connected = True
        self.error = None
        logger.info("%s/%s: streaming from %s (after %s)", self.node, self.log, start, last)
        self._receive(opened.conn, 3 * max(agg.heartbeat, opened.heartbeat))

    def _receive(self, conn: Connection, dead_after: float) -> None:
        agg = self.agg
        heartbeat = encode_frame(FrameType.HEARTBEAT)
        parts = Reassembly()
        last_recv = last_send = time.monotonic()
        while not self.stop_event.is_set():
            if self._pending:
                wait = max(0.0, self._pending_since + agg.commit_delay - time.monotonic())
            else:
                wait = agg.heartbeat
            frames = conn.recv(min(wait, agg.heartbeat, STOP_POLL))
            now = time.monotonic()
            if frames:
                last_recv = now
            elif now - last_recv > dead_after:
                raise PeerClosed(f"{self.endpoint}: silent for {now - last_recv:.1f} s")
            for frame in frames:
                self._take(frame, parts, conn)
            if self._pending and (
                self._pending >= agg.commit_records
                or time.monotonic() - self._pending_since >= agg.commit_delay
                or not conn.has_buffered()
            ):
                self._commit()
                conn.send(encode_ack(self._last.last_id or MessageId(0, 0)), dead_after)
                last_send = time.monotonic()
            elif time.monotonic() - last_send >= agg.heartbeat:
                conn.send(heartbeat, dead_after)
                last_send = time.monotonic()
        self._leave(conn)

    def _take(self, frame: Frame, parts: Reassembly, conn: Connection) -> None:
        """Act on one frame from the node."""
        if frame.type is FrameType.RECORDS and not parts.pending:
            self._write(decode_records(frame.body))
        elif frame.type is FrameType.PART:
            whole = parts.add(frame.body)
            if whole is not None:
                self._write(whole)
        elif frame.type is FrameType.ERROR:
            raise StreamRefused(conn.reason(frame))
        elif frame.type is not FrameType.HEARTBEAT:
            raise ProtocolError(f"unexpected {frame.type.name} frame in a stream")

    def _leave(self, conn: Connection) -> None:
        """Stopping: make what was written durable, then tell the node.

        Best effort towards the node: if the ACK is lost, our saved position
        still wins at the next start.
        """
        if self._pending:
            self._commit()
            conn.send(encode_ack(self._last.last_id or MessageId(0, 0)), STOP_SEND)
        conn.send_error("manager stopping", STOP_SEND)

    # --- writing ------------------------------------------------------------------------

    def _write(self, records: Records) -> None:
        last = self.state.last_id
        if last is not None:
            if records.first_id <= last:
                records = records.drop_through(last)
                if not records.payloads:
                    return
            elif records.first_id.log == last.log and records.first_marker != last.marker + 1:
                logger.warning(
                    "%s/%s: records %s..%s are missing on the node", self.node, self.log,
                    last, records.first_id,
                )  # fmt: skip
        secs = records.secs
        lo, hi = self._period
        if lo <= min(secs) and max(secs) < hi:
            self._append(records.payloads, secs, records.usecs, records.last_id)
            return
        # Records straddle a day (or an hour): each run goes to its own file.
        start = 0
        for i in range(1, len(secs) + 1):
            if i == len(secs) or not self._same_period(secs[start], secs[i]):
                self._switch(secs[start])
                self._append(
                    records.payloads[start:i],
                    secs[start:i],
                    records.usecs[start:i],
                    MessageId(records.log, records.first_marker + i - 1),
                )
                start = i

    def _same_period(self, a: int, b: int) -> bool:
        lo, hi = self.agg.path_pattern.period(a)
        return lo <= b < hi

    def _switch(self, when: float) -> None:
        """Make the file for ``when`` current; the state names it before it is written."""
        rel = self.agg.path_pattern.render(when, node=self.node, log=self.log)
        self._period = self.agg.path_pattern.period(when)
        if rel == self._rel:
            return
        if self._pending:
            self._commit()
        with self.agg.files.use(rel) as fd:
            size = os.fstat(fd).st_size
        self._rel = rel
        self._size = size
        # Recorded before the first byte goes in: a crash after writing here
        # cuts this file, not the previous one.
        self.state = attrs.evolve(self.state, file=rel, offset=size)
        self.agg.store.save(self.node, self.log, attrs.evolve(self._last, file=rel, offset=size))
        self._last = attrs.evolve(self._last, file=rel, offset=size)

    def _append(
        self, payloads: list[bytes], secs: list[int], usecs: list[int], last_id: MessageId
    ) -> None:
        assert self._rel is not None
        data = frame_records(payloads, self.agg.framing)
        with self.agg.files.use(self._rel) as fd:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
        self._size += len(data)
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending += len(payloads)
        self.state = attrs.evolve(
            self.state, last_id=last_id, records=self.state.records + len(payloads)
        )
        if self.agg.on_commit is not None:
            self._pending_times.extend(s + u / 1e6 for s, u in zip(secs, usecs, strict=True))

    def _commit(self) -> None:
        """fsync the data, then save the state; the caller acknowledges afterwards."""
        assert self._rel is not None and self.state.last_id is not None
        with self.agg.files.use(self._rel) as fd:
            os.fdatasync(fd)
        state = attrs.evolve(self.state, file=self._rel, offset=self._size)
        self.agg.store.save(self.node, self.log, state)
        self.state = self._last = state
        self._pending = 0
        if self.agg.on_commit is not None and state.last_id is not None:
            times, self._pending_times = self._pending_times, []
            self.agg.on_commit(Commit(self.node, self.log, state.last_id, times, time.time()))
