"""The reply channel: large command outputs wait on the node, managers fetch them by id.

A reply znode holds at most ``MAX_OUTPUT`` (64 KiB) of output. A node
with a reply channel writes a larger output to a file of its own,
``<state_dir>/outputs/<request id>`` (fsynced, renamed into place), and
its reply carries a :class:`~mhafail.commands.Blob` instead: the node's
``commands`` endpoint, the size and the SHA-256. Any manager fetches it
by request id over an authenticated :mod:`mhafail.channel` connection
(the cluster's shared secret or mutual TLS) until the request is
``keep_until`` passes; then the node deletes the file (its modification
time is set to ``keep_until``). After a collect the file may linger until
then, but no manager finds the reply that points at it.

Wire protocol (service ``commands``), one fetch per connection: the
manager sends ``{"op": "output", "id": ID}``; the node answers
``{"ok": true, "size": N}`` and N bytes in frames of at most 1 MiB, or
``{"ok": false, "error": "..."}``. The manager reads no more than the
size the reply znode announced and checks the SHA-256 before decoding.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mhafail.channel import Channel, ChannelSecurity, Listener, connect, parse_endpoint
from mhafail.commands._model import MAX_CHANNEL_OUTPUT, Blob, check_request_id
from mhafail.errors import (
    ChannelProtocolError,
    CommandError,
    CommandInvalidArgument,
    MalformedData,
    MhafailError,
    UnknownRequest,
)

logger = logging.getLogger(__name__)

SERVICE = "commands"
CHUNK = 1024 * 1024
_MAX_ASK = 512


class OutputStore:
    """A node's large outputs on disk, served to managers over the reply channel.

    Args:
        directory: where the outputs live (created, mode 0700).
        security: who may fetch (the cluster's shared secret or mutual TLS).
        listen: ``host:port`` to serve (port 0: any free one).
        advertise: ``host:port`` written into replies (default: the bound
            address; set it when listening on a wildcard address).
        max_connections: fetches served at once.

    Thread safety: :meth:`put` and :meth:`prune` may be called from any thread.
    """

    def __init__(
        self,
        directory: Path,
        security: ChannelSecurity,
        *,
        listen: str = "127.0.0.1:0",
        advertise: str | None = None,
        max_connections: int = 16,
    ) -> None:
        host, port = parse_endpoint(listen, what="reply channel address", listen=True)
        if advertise is not None:
            parse_endpoint(advertise, what="advertised reply channel address")
        self.directory = directory
        self._advertise = advertise
        self._listener = Listener(
            service=SERVICE,
            host=host,
            port=port,
            security=security,
            handler=self._serve,
            max_connections=max_connections,
            idle_timeout=30.0,
            max_frame=CHUNK + 4096,
            name="mhafail-command-outputs",
        )

    @property
    def endpoint(self) -> str:
        """The ``host:port`` replies name."""
        return self._advertise or self._listener.endpoint

    def start(self) -> OutputStore:
        """Create the directory and start serving.

        Raises:
            CommandError: the directory cannot be created.
            ChannelInvalidArgument: fetchers would not be authenticated.
            ChannelError: the address cannot be bound.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for leftover in self.directory.glob("*.tmp"):
                leftover.unlink(missing_ok=True)  # a put that crashed before its rename
        except OSError as exc:
            raise CommandError(f"cannot use the output directory {self.directory}: {exc}") from exc
        self._listener.start()
        return self

    def stop(self) -> None:
        """Stop serving (the files stay for the next start)."""
        self._listener.stop(timeout=2.0)

    def put(self, rid: str, data: bytes, keep_until: float) -> Blob:
        """Store ``rid``'s output durably until ``keep_until``; returns the blob its reply carries.

        Raises:
            CommandError: the file cannot be written.
        """
        path = self.directory / check_request_id(rid)
        tmp = path.with_name(f"{rid}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)  # the reply acknowledges it: it must outlive a crash
            finally:
                os.close(fd)
            os.utime(tmp, (keep_until, keep_until))
            os.replace(tmp, path)
            dfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise CommandError(f"cannot store the output of {rid}: {exc}") from exc
        return Blob(endpoint=self.endpoint, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    def prune(self, now: float | None = None) -> int:
        """Delete the outputs whose request's ``keep_until`` passed; returns how many."""
        removed = 0
        now = time.time() if now is None else now
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.directory):
                if entry.name.endswith(".tmp"):
                    continue
                with contextlib.suppress(OSError):
                    if entry.stat().st_mtime < now:
                        os.unlink(entry.path)
                        removed += 1
        return removed

    def _serve(self, channel: Channel) -> None:
        ask = channel.recv_one(10.0)
        try:
            if len(ask) > _MAX_ASK:
                raise CommandInvalidArgument("the fetch request is too long")
            doc = json.loads(ask)
            if not isinstance(doc, dict) or doc.get("op") != "output":
                raise CommandInvalidArgument("expected {'op': 'output', 'id': ID}")
            raw_id = doc.get("id")
            if not isinstance(raw_id, str):
                raise CommandInvalidArgument("the fetch request names no request id")
            rid = check_request_id(raw_id)  # also keeps the path inside the directory
            try:
                f = (self.directory / rid).open("rb")
            except FileNotFoundError:
                raise UnknownRequest(f"no stored output for {rid} (collected or expired)") from None
        except (ValueError, MhafailError) as exc:
            channel.send(json.dumps({"ok": False, "error": str(exc)[:500]}).encode(), 5.0)
            return
        with f:
            size = os.fstat(f.fileno()).st_size
            channel.send(json.dumps({"ok": True, "size": size}).encode(), 5.0)
            while chunk := f.read(CHUNK):
                channel.send(chunk, 30.0)


def fetch(
    blob: Blob,
    rid: str,
    security: ChannelSecurity,
    *,
    max_size: int = MAX_CHANNEL_OUTPUT,
    timeout: float = 30.0,
) -> bytes:
    """Fetch ``rid``'s output from the node the blob names, checked against the blob.

    Raises:
        CommandInvalidArgument: the blob is larger than ``max_size`` (nothing is fetched).
        UnknownRequest: the node no longer has it (collected or expired).
        MalformedData: the node sent other bytes than the blob announced.
        ChannelError: the node cannot be reached or authenticated, or broke the protocol.
    """
    check_request_id(rid)
    if blob.size > max_size:
        raise CommandInvalidArgument(
            f"the output of {rid} has {blob.size} bytes, over the {max_size}-byte limit"
        )
    end = time.monotonic() + timeout
    channel = connect(
        blob.endpoint, SERVICE, security, timeout=min(timeout, 5.0), max_frame=CHUNK + 4096
    )
    try:
        channel.send(json.dumps({"op": "output", "id": rid}).encode(), 5.0)
        head = _header(channel.recv_one(max(0.1, end - time.monotonic())), blob.endpoint)
        if head.get("ok") is not True:
            raise UnknownRequest(f"{blob.endpoint}: {str(head.get('error'))[:500]}")
        if head.get("size") != blob.size:
            raise MalformedData(
                f"{blob.endpoint} offers {head.get('size')!r} bytes for {rid}, "
                f"the reply announced {blob.size}"
            )
        parts: list[bytes] = []
        got = 0
        digest = hashlib.sha256()
        while got < blob.size:
            chunk = channel.recv_one(max(0.1, end - time.monotonic()))
            got += len(chunk)
            if got > blob.size:
                raise ChannelProtocolError(f"{blob.endpoint} sent more than {blob.size} bytes")
            digest.update(chunk)
            parts.append(chunk)
    finally:
        channel.close()
    if digest.hexdigest() != blob.sha256:
        raise MalformedData(f"the output of {rid} from {blob.endpoint} fails its SHA-256 check")
    return b"".join(parts)


def _header(data: bytes, peer: str) -> dict[str, Any]:
    try:
        doc = json.loads(data) if len(data) <= _MAX_ASK else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        raise ChannelProtocolError(f"{peer} did not answer with a fetch header")
    return doc
