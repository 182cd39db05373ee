"""The sampler: each console asks every node for its status and log backlog on a timer.

Per-node facts that are not in ZooKeeper (lease state, registered
commands, each log subscriber's lag) come from the built-in commands
``status`` and ``logs.status``, broadcast through command delegation every
``period`` seconds. Each console samples on its own, so the console beside
any live manager has them; the replies are collected (deleted) once read.
The lag history for the charts covers the last hour, in memory.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import attrs

from mhafail.commands import CommandClient, ReplyStatus
from mhafail.errors import CommandError, CoordinationError, InvalidArgument

logger = logging.getLogger(__name__)

HISTORY_SECONDS = 3600.0
MAX_STREAMS = 5000
"""(node, log, subscriber) series kept at most, so a flood of names cannot exhaust memory."""


@attrs.frozen
class NodeSample:
    """One node's answer to ``status``, with when the console got it.

    Attributes:
        node: the node.
        status: the reply status (``ok``, ``refused``, ``error``...).
        output: the ``status`` output (dict) when ``ok``, else None.
        error: the reply's error text.
        time: wall-clock time of the sample.
    """

    node: str
    status: str
    output: dict[str, Any] | None
    error: str
    time: float


@attrs.define(kw_only=True, eq=False)
class Sampler:
    """Broadcasts ``status`` and ``logs.status`` every ``period`` seconds.

    Args:
        client: the console's command client (operator role).
        period: seconds between samples.
        wait: seconds to wait for the replies of one sample.
        clock: wall clock.

    Thread safety: :meth:`snapshot` and :meth:`lag` may be called from any
    thread; the sampling runs on the sampler's own thread.
    """

    client: CommandClient
    period: float = 15.0
    wait: float = 3.0
    clock: Callable[[], float] = time.time

    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _stop: threading.Event = attrs.field(init=False, factory=threading.Event)
    _thread: threading.Thread | None = attrs.field(init=False, default=None)
    _nodes: dict[str, NodeSample] = attrs.field(init=False, factory=dict)
    _lag: dict[tuple[str, str, str], dict[str, Any]] = attrs.field(init=False, factory=dict)
    _history: dict[tuple[str, str, str], collections.deque[tuple[float, float, int]]] = attrs.field(
        init=False, factory=dict
    )
    _logs_nodes: dict[str, str] = attrs.field(init=False, factory=dict)
    _sampled_at: float | None = attrs.field(init=False, default=None)

    def start(self) -> Sampler:
        """Start sampling on a daemon thread; returns self."""
        self._thread = threading.Thread(
            target=self._run, name="mhafail-console-sampler", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop sampling; waits at most ``timeout`` seconds for the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def kick(self) -> None:
        """Sample now, on the caller's thread (tests, and right after an action)."""
        self._sample()

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self._sample()
            self._stop.wait(max(0.0, self.period - (time.monotonic() - began)))

    def _ask(self, command: str) -> dict[str, Any]:
        """Broadcast ``command``; node -> reply dict. Empty when nobody can be asked."""
        try:
            rid = self.client.broadcast(
                command, ttl=max(self.wait, 1.0), keep=60.0, timeout=max(self.wait, 1.0)
            )
        except (CommandError, InvalidArgument):  # no live member
            return {}
        try:
            result = self.client.wait(rid, self.wait)
        finally:
            try:
                self.client.delete(rid)
            except CoordinationError:
                logger.info("sample %s left for the garbage collector", rid)
        return {node: reply.to_dict() for node, reply in result.replies.items()}

    def _sample(self) -> None:
        try:
            statuses = self._ask("status")
            logs = self._ask("logs.status")
        except (CoordinationError, CommandError) as exc:
            logger.info("console sampler: %s", exc)
            return
        now = self.clock()
        with self._lock:
            self._sampled_at = now
            self._nodes = {
                node: NodeSample(
                    node=node,
                    status=reply["status"],
                    output=reply["output"] if isinstance(reply.get("output"), dict) else None,
                    error=str(reply.get("error") or ""),
                    time=now,
                )
                for node, reply in statuses.items()
            }
            self._lag = {}
            self._logs_nodes = {}
            for node, reply in logs.items():
                if reply["status"] != ReplyStatus.OK.value or not isinstance(
                    reply.get("output"), list
                ):
                    self._logs_nodes[node] = str(reply.get("error") or reply["status"])
                    continue
                self._logs_nodes[node] = ""
                for entry in reply["output"]:
                    self._add_lag(node, entry, now)
            cutoff = now - HISTORY_SECONDS
            for key in list(self._history):
                points = self._history[key]
                while points and points[0][0] < cutoff:
                    points.popleft()
                if not points:
                    del self._history[key]

    def _add_lag(self, node: str, entry: Any, now: float) -> None:
        # A node's reply is shared data: take only well-typed fields.
        if not isinstance(entry, dict):
            return
        log, sub = entry.get("log"), entry.get("subscriber")
        lag, records = entry.get("lag_seconds"), entry.get("pending_records")
        if not (isinstance(log, str) and isinstance(sub, str)):
            return
        if not isinstance(lag, int | float) or not isinstance(records, int):
            return
        key = (node, log[:255], sub[:255])
        if key not in self._history and len(self._history) >= MAX_STREAMS:
            return
        self._lag[key] = {
            "node": node,
            "log": key[1],
            "subscriber": key[2],
            "lag_seconds": float(lag),
            "pending_records": records,
            "pending_bytes": entry.get("pending_bytes")
            if isinstance(entry.get("pending_bytes"), int)
            else None,
        }
        self._history.setdefault(key, collections.deque()).append((now, float(lag), records))

    def nodes(self) -> dict[str, NodeSample]:
        """The latest ``status`` answer of every node that answered."""
        with self._lock:
            return dict(self._nodes)

    def lag(self) -> dict[str, Any]:
        """The latest backlog rows, the last hour of lag per stream, and per-node notes."""
        with self._lock:
            rows = [self._lag[k] for k in sorted(self._lag)]
            history = [
                {
                    "node": k[0],
                    "log": k[1],
                    "subscriber": k[2],
                    "points": [[round(t, 3), lag, rec] for t, lag, rec in points],
                }
                for k, points in sorted(self._history.items())
            ]
            return {
                "sampled_at": self._sampled_at,
                "period": self.period,
                "rows": rows,
                "history": history,
                "nodes": dict(sorted(self._logs_nodes.items())),
            }
