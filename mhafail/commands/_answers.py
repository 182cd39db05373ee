"""How a node answers: the audit record, the reply (output or blob), its znode, retries.

Every answer is appended to the audit jlog first (a process crash loses
none), then written as the node's reply znode, ``commands/results/<id>/
replies/<node>``, in a transaction of one (kazoo's plain create costs a
thread hand-off more). A reply ZooKeeper could not take (no connection)
waits in memory and is written by a later pass; one ZooKeeper refuses
(ACLs) is logged and dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from mhafail.commands._journal import AuditJournal
from mhafail.commands._model import (
    MAX_OUTPUT,
    Blob,
    Reply,
    ReplyStatus,
    Request,
    encode_output_text,
    reply_path,
)
from mhafail.commands._outputs import OutputStore
from mhafail.commands._runner import Outcome
from mhafail.coordination import Znodes
from mhafail.errors import AccessDenied, CommandError, CoordinationError

logger = logging.getLogger(__name__)

Tracer = Callable[[str, str, float], None]
"""``trace(step, request_id, monotonic_time)``: ``pass`` (the pass that saw it
began), ``seen``, ``marked``, ``claimed``, ``started``, ``done``, ``replied``."""


class Answers:
    """Audits, builds and writes one node's replies.

    Args:
        node: this node's name.
        journal: the audit jlog.
        outputs: the reply channel's store (None: outputs are cut to 64 KiB).
        clock: wall clock.
        trace: step tracer, or None.

    Thread safety: all methods may be called from any thread.
    """

    def __init__(
        self,
        node: str,
        journal: AuditJournal,
        outputs: OutputStore | None,
        clock: Callable[[], float],
        trace: Tracer | None,
    ) -> None:
        self.node = node
        self.journal = journal
        self.outputs = outputs
        self._clock = clock
        self._trace = trace
        self._lock = threading.Lock()
        self._unsent: dict[str, Reply] = {}

    def trace(self, step: str, rid: str, at: float | None = None) -> None:
        """Report a step of ``rid`` to the tracer, if any."""
        if self._trace is not None:
            self._trace(step, rid, time.monotonic() if at is None else at)

    def audit(self, request: Request, event: str, **extra: Any) -> None:
        """Append one audit record: who asked what, with which arguments, and ``event``."""
        who = request.requester
        record = {
            "t": self._clock(),
            "event": event,
            "id": request.id,
            "node": self.node,
            "command": request.command,
            "args": extra.pop("args", request.args),
            "user": who.user,
            "role": who.role,
            "manager": who.manager,
            **extra,
        }
        self.journal.append(record)

    def refusal(self, request: Request, status: ReplyStatus, error: str) -> Reply:
        """A reply for a request that did not run."""
        return Reply(
            id=request.id, node=self.node, status=status, error=error, finished=self._clock()
        )

    def outcome(self, request: Request, outcome: Outcome, started: float) -> Reply:
        """The reply for a handler's outcome (a large output goes to the reply channel)."""
        status, error = outcome.status, outcome.error
        output: Any = None
        truncated = False
        blob = None
        if status is ReplyStatus.OK:
            try:
                output, truncated, blob = self._output(request, outcome.value)
            except CommandError as exc:
                status, error = ReplyStatus.ERROR, str(exc)[:2000]
        return Reply(
            id=request.id,
            node=self.node,
            status=status,
            output=output,
            error=error,
            truncated=truncated,
            started=started,
            finished=self._clock(),
            blob=blob,
        )

    def _output(self, request: Request, value: Any) -> tuple[Any, bool, Blob | None]:
        """The reply's output, whether it was cut, and its blob when it is too big for ZooKeeper.

        Raises:
            CommandError: not JSON, or a large output could not be stored.
        """
        cap = request.max_output if self.outputs is not None else MAX_OUTPUT
        output, truncated, data = encode_output_text(value, min(request.max_output, cap))
        if len(data) <= MAX_OUTPUT or self.outputs is None:
            return output, truncated, None
        return None, truncated, self.outputs.put(request.id, data, request.keep_until)

    def write(self, znodes: Znodes, reply: Reply) -> bool:
        """Create the reply znode.

        Returns:
            True when ZooKeeper took it, or refused it for good (ACLs:
            logged); False when it could not be asked (queue it, try again).
        """
        try:
            znodes.create_all([(reply_path(reply.id, self.node), reply.to_json())])
        except AccessDenied as exc:
            logger.error("reply to %s refused by ZooKeeper: %s", reply.id, exc)
        except CoordinationError as exc:
            logger.info("reply to %s not sent yet: %s", reply.id, exc)
            return False
        self.trace("replied", reply.id)
        return True

    def queue(self, reply: Reply) -> None:
        """Keep a reply ZooKeeper did not take, for :meth:`flush`."""
        with self._lock:
            self._unsent[reply.id] = reply

    def unsent(self) -> set[str]:
        """Ids of the replies waiting to be written."""
        with self._lock:
            return set(self._unsent)

    def flush(self, znodes: Znodes) -> list[Reply]:
        """Write the queued replies ZooKeeper takes now; returns those written."""
        with self._lock:
            pending = list(self._unsent.values())
        written = []
        for reply in pending:
            if self.write(znodes, reply):
                with self._lock:
                    self._unsent.pop(reply.id, None)
                written.append(reply)
        return written
