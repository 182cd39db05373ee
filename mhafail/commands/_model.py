"""Requests and replies: frozen values, their znode paths and their JSON forms.

Both are shared data (safety rule 8): a request is written by a manager
and read by every node, a reply is written by a node and read by every
manager, so each decoder checks every field's type and size and raises
:class:`~mhafail.errors.MalformedData` for anything else.

ZooKeeper layout under the cluster root::

    commands/requests/<id>                  the request (operators only)
    commands/results/<id>/claims/<node>     a node took the request, before running it
    commands/results/<id>/replies/<node>    its answer, written once (large output:
                                            a Blob pointing at the node's reply channel)
    commands/managers/<name>                live command managers (ephemeral)

The two folders of ``results/<id>`` are created *before* the request, so
a node that sees a request can always claim it.
"""

from __future__ import annotations

import enum
import json
import math
import re
import secrets
import time
from collections.abc import Mapping
from typing import Any

import attrs

from mhafail._json import decode_object
from mhafail.commands._schema import check_command_name, check_plain_args
from mhafail.errors import CommandInvalidArgument, InvalidArgument, MalformedData

COMMANDS = "commands"
REQUESTS = f"{COMMANDS}/requests"
RESULTS = f"{COMMANDS}/results"
MANAGERS = f"{COMMANDS}/managers"

MAX_REQUEST_BYTES = 48 * 1024
MAX_REPLY_BYTES = 96 * 1024
MAX_OUTPUT = 64 * 1024
"""Largest output (JSON bytes) a reply carries in ZooKeeper (and the default cap)."""
MAX_CHANNEL_OUTPUT = 64 * 1024 * 1024
"""Largest output a request may ask for; above ``MAX_OUTPUT`` it goes by the reply channel."""
MAX_NODES = 1000
MAX_TEXT = 255
MAX_ERROR = 2000

ID_RE = re.compile(r"[0-9]{13}-[0-9a-f]{12}")
"""What a request id looks like."""
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def new_request_id(now: float | None = None) -> str:
    """A fresh request id: creation time in ms (sorts by age) and 48 random bits."""
    ms = int((time.time() if now is None else now) * 1000)
    return f"{ms:013d}-{secrets.token_hex(6)}"


def check_request_id(value: str) -> str:
    """Return ``value`` if it is a request id, else raise CommandInvalidArgument."""
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise CommandInvalidArgument(
            f"invalid request id {value!r}: expected 13 digits, '-', 12 hex digits"
        )
    return value


def request_path(rid: str) -> str:
    """``commands/requests/<id>``."""
    return f"{REQUESTS}/{rid}"


def claim_path(rid: str, node: str | None = None) -> str:
    """``commands/results/<id>/claims[/<node>]``."""
    base = f"{RESULTS}/{rid}/claims"
    return base if node is None else f"{base}/{node}"


def reply_path(rid: str, node: str | None = None) -> str:
    """``commands/results/<id>/replies[/<node>]``."""
    base = f"{RESULTS}/{rid}/replies"
    return base if node is None else f"{base}/{node}"


class ReplyStatus(enum.Enum):
    """How a node answered a request.

    * ``OK``: the handler ran and returned ``output``.
    * ``ERROR``: the handler ran and raised; ``error`` says what.
    * ``REFUSED``: not run: unknown command, bad arguments, or the
      requester's role may not run it.
    * ``EXPIRED``: not run: the node saw the request after its expiry.
    * ``CANCELLED``: cancelled before it ran, or while it ran.
    * ``TIMEOUT``: the handler did not finish within the request's timeout
      (it was told to stop; what it did so far stays done).
    * ``ABANDONED``: the node took the request but stopped (crash, restart,
      coordination lost before it could run it); never run again.
    """

    OK = "ok"
    ERROR = "error"
    REFUSED = "refused"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    ABANDONED = "abandoned"


@attrs.frozen
class Requester:
    """Who asked: the ZooKeeper user, its role and the manager process.

    Only operators can create requests (ZooKeeper ACLs), so these fields
    come from a trusted process; nodes check ``role`` against their
    per-command allow-list.
    """

    user: str
    role: str
    manager: str = ""
    host: str = ""
    pid: int = 0


@attrs.frozen
class Request:
    """One command for a set of nodes (``commands/requests/<id>``).

    Attributes:
        id: the request id (:func:`new_request_id`).
        command: the registered command name (``vip.show``).
        args: the arguments, validated by each node against its schema.
        nodes: the node names asked (resolved by the manager at send time).
        requester: who asked.
        created: wall-clock time the manager created it.
        expires: wall-clock time after which no node starts it.
        keep_until: wall-clock time after which managers delete the request
            and its replies, collected or not.
        timeout: seconds a node lets the handler run.
        max_output: largest output (JSON bytes) a reply carries; above
            ``MAX_OUTPUT`` only nodes with a reply channel send it whole.
        cancelled: set by ``CommandClient.cancel``.
    """

    id: str
    command: str
    args: Mapping[str, Any]
    nodes: tuple[str, ...]
    requester: Requester
    created: float
    expires: float
    keep_until: float
    timeout: float
    max_output: int = MAX_OUTPUT
    cancelled: bool = False

    def to_json(self) -> bytes:
        """The znode form."""
        doc = attrs.asdict(self)
        doc["v"] = 1
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str = "command request") -> Request:
        """Decode and check a request znode.

        Raises:
            MalformedData: not a request within the caps (48 KiB, 1000 nodes,
                arguments as ``check_plain_args`` allows).
        """
        raw = decode_object(data, what=what, max_bytes=MAX_REQUEST_BYTES)
        try:
            req = raw.get("requester")
            if not isinstance(req, dict):
                raise MalformedData(f"malformed {what}: requester must be an object")
            nodes = raw.get("nodes")
            if not isinstance(nodes, list) or len(nodes) > MAX_NODES:
                raise MalformedData(f"malformed {what}: nodes must be a list of node names")
            args = raw.get("args")
            if not isinstance(args, dict):
                raise MalformedData(f"malformed {what}: args must be an object")
            check_plain_args(args)
            max_output = _int(raw, "max_output", what)
            if not 0 < max_output <= MAX_CHANNEL_OUTPUT:
                raise MalformedData(f"malformed {what}: max_output out of range")
            cancelled = raw.get("cancelled", False)
            if not isinstance(cancelled, bool):
                raise MalformedData(f"malformed {what}: cancelled must be a boolean")
            return cls(
                id=check_request_id(_text(raw, "id", what)),
                command=check_command_name(_text(raw, "command", what)),
                args=args,
                nodes=tuple(_node(n, what) for n in nodes),
                requester=Requester(
                    user=_text(req, "user", what),
                    role=_text(req, "role", what),
                    manager=_text(req, "manager", what, default=""),
                    host=_text(req, "host", what, default=""),
                    pid=_int(req, "pid", what, default=0),
                ),
                created=_number(raw, "created", what),
                expires=_number(raw, "expires", what),
                keep_until=_number(raw, "keep_until", what),
                timeout=_number(raw, "timeout", what),
                max_output=max_output,
                cancelled=cancelled,
            )
        except MalformedData:
            raise
        except (InvalidArgument, CommandInvalidArgument) as exc:  # names, ids, arguments
            raise MalformedData(f"malformed {what}: {exc}") from exc


_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_ENDPOINT_RE = re.compile(r"[A-Za-z0-9.:\[\]-]{3,300}")


@attrs.frozen
class Blob:
    """Where a reply's large output waits: a node's reply channel.

    Attributes:
        endpoint: ``host:port`` of the node's ``commands`` channel listener.
        size: bytes of the output's JSON text.
        sha256: hex SHA-256 of those bytes; the fetcher checks it.
    """

    endpoint: str
    size: int
    sha256: str

    @classmethod
    def from_raw(cls, raw: Any, what: str) -> Blob:
        """Check a reply's ``blob`` object.

        Raises:
            MalformedData: not an endpoint, a size within ``MAX_CHANNEL_OUTPUT``
                and a SHA-256.
        """
        if not isinstance(raw, dict):
            raise MalformedData(f"malformed {what}: blob must be an object")
        endpoint = raw.get("endpoint")
        if not isinstance(endpoint, str) or not _ENDPOINT_RE.fullmatch(endpoint):
            raise MalformedData(f"malformed {what}: blob endpoint must be host:port")
        size = raw.get("size")
        if isinstance(size, bool) or not isinstance(size, int):
            raise MalformedData(f"malformed {what}: blob size must be an integer")
        if not MAX_OUTPUT < size <= MAX_CHANNEL_OUTPUT:
            raise MalformedData(
                f"malformed {what}: blob size {size} is outside {MAX_OUTPUT + 1}-"
                f"{MAX_CHANNEL_OUTPUT} bytes"
            )
        sha = raw.get("sha256")
        if not isinstance(sha, str) or not _SHA256_RE.fullmatch(sha):
            raise MalformedData(f"malformed {what}: blob sha256 must be 64 hex digits")
        return cls(endpoint=endpoint, size=size, sha256=sha)


@attrs.frozen
class Reply:
    """One node's answer (``commands/results/<id>/replies/<node>``).

    Attributes:
        id: the request id.
        node: the answering node.
        status: what happened.
        output: the handler's JSON value (None unless ``OK``, and None when
            ``blob`` is set); when the output was larger than the request's
            ``max_output``, the first ``max_output`` characters of its JSON
            text, with ``truncated``.
        error: why, for every status but ``OK``.
        truncated: the output was cut to the cap.
        started: wall-clock time the handler started (0: it never did).
        finished: wall-clock time of the answer.
        blob: an output over ``MAX_OUTPUT`` bytes waits on the node's reply
            channel (``CommandClient.fetch_output``); None otherwise.
    """

    id: str
    node: str
    status: ReplyStatus
    output: Any = None
    error: str = ""
    truncated: bool = False
    started: float = 0.0
    finished: float = 0.0
    blob: Blob | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``blob`` only when set)."""
        doc = attrs.asdict(self)
        doc["status"] = self.status.value
        if self.blob is None:
            del doc["blob"]
        return doc

    def to_json(self) -> bytes:
        """The znode form."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes, what: str = "command reply") -> Reply:
        """Decode and check a reply znode.

        Raises:
            MalformedData: not a reply within the caps (96 KiB, known status).
        """
        raw = decode_object(data, what=what, max_bytes=MAX_REPLY_BYTES)
        try:
            status = ReplyStatus(raw.get("status"))
        except ValueError as exc:
            raise MalformedData(f"malformed {what}: unknown status") from exc
        truncated = raw.get("truncated", False)
        if not isinstance(truncated, bool):
            raise MalformedData(f"malformed {what}: truncated must be a boolean")
        error = raw.get("error", "")
        if not isinstance(error, str) or len(error) > MAX_ERROR:
            raise MalformedData(f"malformed {what}: error must be a short string")
        blob = None if raw.get("blob") is None else Blob.from_raw(raw["blob"], what)
        try:
            return cls(
                id=check_request_id(_text(raw, "id", what)),
                node=_node(raw.get("node"), what),
                status=status,
                output=raw.get("output"),
                error=error,
                truncated=truncated,
                started=_number(raw, "started", what),
                finished=_number(raw, "finished", what),
                blob=blob,
            )
        except CommandInvalidArgument as exc:
            raise MalformedData(f"malformed {what}: {exc}") from exc


def encode_output(value: Any, cap: int) -> tuple[Any, bool]:
    """The output as a reply carries it: ``(value, False)``, or cut text and True.

    Raises:
        CommandInvalidArgument: the value is not JSON (a handler bug).
    """
    output, truncated, _ = encode_output_text(value, cap)
    return output, truncated


def encode_output_text(value: Any, cap: int) -> tuple[Any, bool, bytes]:
    """As :func:`encode_output`, plus the output's JSON text (at most ``cap`` bytes).

    Raises:
        CommandInvalidArgument: the value is not JSON (a handler bug).
    """
    try:
        data = json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise CommandInvalidArgument(f"the handler returned a non-JSON value: {exc}") from exc
    if len(data) <= cap:
        return value, False, data
    # The cut text is itself JSON-encoded in the reply, where escapes grow it.
    cut = data[:cap].decode(errors="ignore")
    encoded = json.dumps(cut).encode()
    while len(encoded) > cap:
        cut = cut[: len(cut) * 3 // 4]
        encoded = json.dumps(cut).encode()
    return cut, True, encoded


def _text(raw: Mapping[str, Any], field: str, what: str, default: str | None = None) -> str:
    value = raw.get(field, default)
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise MalformedData(f"malformed {what}: {field} must be a string of at most 255 characters")
    return value


def _int(raw: Mapping[str, Any], field: str, what: str, default: int | None = None) -> int:
    value = raw.get(field, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise MalformedData(f"malformed {what}: {field} must be an integer in 0 to 2**31-1")
    return value


def _number(raw: Mapping[str, Any], field: str, what: str) -> float:
    value = raw.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedData(f"malformed {what}: {field} must be a number")
    try:
        number = float(value)
    except OverflowError as exc:
        raise MalformedData(f"malformed {what}: {field} is out of range") from exc
    if not math.isfinite(number) or number < 0:
        raise MalformedData(f"malformed {what}: {field} must be finite and not negative")
    return number


def _node(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NODE_RE.fullmatch(value):
        raise MalformedData(f"malformed {what}: {value!r} is not a node name")
    return value
