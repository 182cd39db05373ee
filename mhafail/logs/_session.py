"""Node side of one connection: handshake, then stream, tail or status.

A session runs on its own thread (see :class:`~mhafail.logs.JlogService`).
Every failure ends only this session: the reason is logged and, where the
peer can still hear it, sent in an ERROR frame.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mhafail.errors import JlogError, JlogInvalidArgument, JlogUnknownSubscriber, ProtocolError
from mhafail.jlog import Jlog, JlogReader, Message, MessageId, Whence

from ._protocol import (
    MIN_MAX_FRAME,
    VERSION,
    Frame,
    FrameType,
    decode_ack,
    encode_frame,
    encode_json,
    encode_parts,
    encode_records,
    fits_one_frame,
    format_id,
    parse_id,
    records_overhead,
)
from ._status import log_status
from ._wire import Connection, PeerClosed

if TYPE_CHECKING:
    from ._service import JlogService

logger = logging.getLogger(__name__)

_OPS = ("stream", "tail", "status", "list")
BUSY_FOR = 1.0
"""Seconds after sending records during which a stream polls at ``busy_poll_interval``."""


class Refusal(Exception):
    """Raised inside a session to refuse the request with a reason (sent to the peer)."""


def split_frames(batch: Sequence[Message], limit: int) -> list[Sequence[Message]]:
    """Cut ``batch`` into runs whose RECORDS frames stay within ``limit`` bytes.

    A record too big for any RECORDS frame gets a run of its own; it travels
    as PART frames (see :func:`~mhafail.logs._protocol.encode_parts`).
    """
    runs: list[Sequence[Message]] = []
    start = 0
    size = records_overhead(0)
    for i, message in enumerate(batch):
        cost = 12 + len(message.payload)
        if not fits_one_frame(message, limit):
            if i > start:
                runs.append(batch[start:i])
            runs.append(batch[i : i + 1])
            start, size = i + 1, records_overhead(0)
            continue
        if size + cost > limit:
            runs.append(batch[start:i])
            start, size = i, records_overhead(0)
        size += cost
    if start < len(batch):
        runs.append(batch[start:])
    return runs


def encode_run(run: Sequence[Message], limit: int) -> list[bytes]:
    """The frames carrying one run of :func:`split_frames`: one RECORDS, or PARTs."""
    if len(run) == 1 and not fits_one_frame(run[0], limit):
        return list(encode_parts(run[0], limit))
    return [encode_records(run)]


class Session:
    """One accepted connection.

    Args:
        service: the service that accepted it (configuration and registry).
        conn: the framed connection.
    """

    def __init__(self, service: JlogService, conn: Connection) -> None:
        self.service = service
        self.conn = conn
        self.stop = threading.Event()
        self.done = threading.Event()
        self.key: tuple[str, str] | None = None
        self.dead_after = 3 * service.heartbeat
        self.frame_limit = service.max_frame
        self._reply: dict[str, Any] = {}

    # --- handshake -----------------------------------------------------------------

    def run(self) -> None:
        """Serve the connection until it ends; never raises."""
        svc = self.service
        try:
            request = self._handshake()
            op = request["op"]
            if op == "list":
                self._accept({"logs": sorted(svc.logs)})
            elif op == "status":
                self._status()
            elif op == "tail":
                self._tail(request)
            else:
                self._stream(request)
        except PeerClosed as exc:
            logger.info("%s: session with %s ended: %s", svc.node, self.conn.peer, exc)
        except Refusal as exc:
            logger.warning("%s: refused %s: %s", svc.node, self.conn.peer, exc)
            self.conn.send_error(str(exc))
        except ProtocolError as exc:
            logger.warning("%s: closing %s: protocol error: %s", svc.node, self.conn.peer, exc)
            self.conn.send_error(f"protocol error: {exc}")
        except JlogError as exc:
            logger.error("%s: closing %s: jlog error: %s", svc.node, self.conn.peer, exc)
            self.conn.send_error(f"jlog error on the node: {exc}")
        except Exception as exc:  # a bad client must never take the service down
            logger.exception("%s: session with %s failed", svc.node, self.conn.peer)
            self.conn.send_error(f"internal error: {type(exc).__name__}")
        finally:
            self.conn.close()
            svc._session_ended(self)
            self.done.set()

    def _handshake(self) -> dict[str, Any]:
        """Read the OPEN request (the channel already authenticated the peer)."""
        svc = self.service
        try:
            request = self.conn.expect(FrameType.OPEN, svc.handshake_timeout)
        except ProtocolError:
            raise
        except Exception as exc:
            raise Refusal(f"no valid OPEN: {exc}") from None
        if request.get("proto") != VERSION:
            raise Refusal(
                f"protocol version {request.get('proto')!r} not supported (want {VERSION})"
            )
        op = request.get("op")
        if op not in _OPS:
            raise Refusal(f"unknown op {op!r} (expected one of {', '.join(_OPS)})")
        self._reply = {"node": svc.node, "heartbeat": svc.heartbeat}
        client_hb = request.get("heartbeat", svc.heartbeat)
        if isinstance(client_hb, int | float) and 0 < client_hb <= 60:
            self.dead_after = 3 * max(svc.heartbeat, float(client_hb))
        max_frame = request.get("max_frame", svc.max_frame)
        if not isinstance(max_frame, int) or max_frame < MIN_MAX_FRAME:
            raise Refusal(f"max_frame must be an integer >= {MIN_MAX_FRAME}")
        self.frame_limit = min(svc.max_frame, max_frame)
        return request

    def _log(self, request: dict[str, Any]) -> tuple[str, Jlog]:
        name = request.get("log")
        path = self.service.logs.get(name) if isinstance(name, str) else None
        if path is None:
            raise Refusal(f"unknown log {name!r} on node {self.service.node}")
        assert isinstance(name, str)
        return name, Jlog.open(path)

    def _accept(self, extra: dict[str, Any]) -> None:
        self.conn.send(
            encode_json(FrameType.ACCEPT, {**self._reply, **extra}), self.service.handshake_timeout
        )

    # --- status ----------------------------------------------------------------------

    def _status(self) -> None:
        entries = []
        for name, path in sorted(self.service.logs.items()):
            try:
                for st in log_status(self.service.node, name, Jlog.open(path)):
                    entries.append(st.to_json())
            except JlogError as exc:
                entries.append({"node": self.service.node, "log": name, "error": str(exc)})
        self._accept({"status": entries, "logs": sorted(self.service.logs)})

    # --- tail ----------------------------------------------------------------------------

    def _tail(self, request: dict[str, Any]) -> None:
        _, jlog = self._log(request)
        back = request.get("back", 0)
        if not isinstance(back, int) or back < 0:
            raise Refusal("back must be a non-negative integer")
        with jlog.tail(start=Whence.END, back=back) as tail:
            self._accept({"start": format_id(tail.position)})
            logger.info("%s: tail of %s for %s", self.service.node, request["log"], self.conn.peer)
            self._pump(tail.read_batch, None)

    # --- stream ----------------------------------------------------------------------

    def _stream(self, request: dict[str, Any]) -> None:
        svc = self.service
        name, jlog = self._log(request)
        subscriber = request.get("subscriber")
        if not isinstance(subscriber, str) or not subscriber:
            raise Refusal("a stream needs a subscriber name")
        after = parse_id(request.get("after"), "after")
        self.key = (subscriber, name)
        svc._claim(self)
        try:
            reader = jlog.reader(subscriber)
        except JlogUnknownSubscriber:
            raise Refusal(f"unknown subscriber {subscriber!r} for log {name!r}") from None
        with reader:
            start = self._position(reader, after)
            self._accept({"start": format_id(start)})
            logger.info(
                "%s: streaming %s to %s (%s) from %s", svc.node, name, subscriber, self.conn.peer,
                start,
            )  # fmt: skip
            self._pump(reader.read_batch, reader)

    def _position(self, reader: JlogReader, after: MessageId | None) -> MessageId:
        """Start from the manager's own position when it gives one (exactly-once resume)."""
        checkpoint = reader.checkpoint_position()
        if after is None or after == checkpoint:
            return checkpoint
        try:
            # Forward: the manager holds these durably (its ack was lost or
            # lagged). Back: its state is older than our checkpoint; rewind
            # while the data is still here so nothing is missing downstream.
            reader.checkpoint(after)
        except JlogInvalidArgument as exc:
            if after > checkpoint:
                raise Refusal(f"position {after} is not in log data on this node: {exc}") from None
            logger.info(
                "%s: manager position %s is behind checkpoint %s and that data is gone; "
                "starting at the checkpoint",
                self.service.node,
                after,
                checkpoint,
            )
        return reader.checkpoint_position()

    def _pump(self, read: Callable[[int], list[Message]], reader: JlogReader | None) -> None:
        """Send batches, honour the ack window, heartbeat, and watch the peer."""
        svc = self.service
        conn = self.conn
        inflight: collections.deque[tuple[MessageId, int, int]] = collections.deque()
        in_records = in_bytes = 0
        self._acked: MessageId | None = reader.checkpoint_position() if reader else None
        self._last_sent = self._acked
        now = time.monotonic()
        last_send = last_recv = now
        last_records = -BUSY_FOR
        heartbeat = encode_frame(FrameType.HEARTBEAT)
        while not self.stop.is_set() and not svc._stopping.is_set():
            sent = False
            room = reader is None or (
                in_records < svc.window_records and in_bytes < svc.window_bytes
            )
            if room:
                batch = read(svc.batch_records)
                for run in split_frames(batch, self.frame_limit) if batch else ():
                    size = 0
                    for data in encode_run(run, self.frame_limit):
                        conn.send(data, self.dead_after)
                        size += len(data)
                    if reader is not None:
                        inflight.append((run[-1].id, len(run), size))
                        in_records += len(run)
                        in_bytes += size
                    self._last_sent = run[-1].id
                    sent = True
            now = time.monotonic()
            if sent:
                last_send = last_records = now
            elif now - last_send >= svc.heartbeat:
                conn.send(heartbeat, self.dead_after)
                last_send = now
            frames = conn.recv(0.0 if sent and room else self._poll_wait(now - last_records))
            now = time.monotonic()
            if frames:
                last_recv = now
            elif now - last_recv > self.dead_after:
                raise PeerClosed(f"{conn.peer} silent for {now - last_recv:.1f} s; closing")
            for frame in frames:
                ack = self._handle(frame, reader)
                if ack is None:
                    continue
                while inflight and inflight[0][0] <= ack:
                    _, n, size = inflight.popleft()
                    in_records -= n
                    in_bytes -= size

    def _poll_wait(self, since_records: float) -> float:
        """How long to wait for the peer before polling the jlog again."""
        if since_records < BUSY_FOR:
            # A busy log gets its next records soon: waiting the idle
            # interval would add up to that much to their latency.
            return self.service.busy_poll_interval
        return self.service.poll_interval

    def _handle(self, frame: Frame, reader: JlogReader | None) -> MessageId | None:
        """Act on one frame from the peer; return the id it acknowledged, if any."""
        if frame.type is FrameType.HEARTBEAT:
            return None
        if frame.type is FrameType.ERROR:
            raise PeerClosed(f"{self.conn.peer} closed the session: {self.conn.reason(frame)}")
        if frame.type is not FrameType.ACK or reader is None:
            raise ProtocolError(f"unexpected {frame.type.name} frame")
        ack = decode_ack(frame.body)
        acked, last_sent = self._acked, self._last_sent
        if acked is None or last_sent is None or not acked < ack <= last_sent:
            raise ProtocolError(f"ACK {ack} outside the unacknowledged range")
        reader.checkpoint(ack)
        self._acked = ack
        return ack
