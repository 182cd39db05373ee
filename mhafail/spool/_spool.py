"""The Spool: a durable, fenced message store an MTA uses directly.

Layout of a spool directory (``NodePaths.spool``)::

    lock            the lock file: holder and fencing token (see _fence.py)
    msg/<id>        one message: magic line, JSON header line, data
    msg/<id>.state  its mutable state (attempts, next try, recipients); optional
    tmp/            files being written (removed at open)
    bad/            files that failed validation (quarantined, reported)
    wal/            the commit log of group commit (see _wal.py)
    import.journal  the journal of a takeover of this spool (see _takeover.py)

Durability: a message exists once ``msg/<id>`` exists or, until the next
checkpoint, once its put is in the commit log (``wal/``, replayed into
``msg/`` by whoever opens or takes the spool next: ``_wal.py``).
:meth:`Spool.put` returns only when one of the two is durable: without
group commit, the file is fsynced, renamed into ``msg/`` and ``msg/``
fsynced; with group commit (the default), the batch is in the log and
flushed (a checkpoint files it into ``msg/`` later, unless it is gone by
then: ``_commit.py``). Both happen inside a
fence section, followed by a re-check of the lease: a put that stalled
past the lease is undone (removed and dropped from the log, still under
the fence, so no takeover can have seen it) and refused. So a crash or a
fence at any instant leaves a message either wholly in the spool and
acknowledged, or absent and not acknowledged.

Concurrency: all methods are thread-safe. ``a``-prefixed coroutines run
the blocking work off the event loop (aiosmtpd handlers must not block).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import attrs

from mhafail.errors import (
    MalformedData,
    MessageTooLarge,
    SpoolError,
    SpoolInvalidArgument,
    SpoolWriteFailed,
    UnknownMessage,
)
from mhafail.spool import _adopt
from mhafail.spool._commit import Committer, Put
from mhafail.spool._fence import Fence
from mhafail.spool._files import (
    BAD,
    DIR_MODE,
    MSG,
    STATE_SUFFIX,
    TMP,
    replace_durably,
    write_failed,
)
from mhafail.spool._message import (
    MAX_HEADER,
    Envelope,
    Message,
    RecipientState,
    apply_state,
    check_id,
    decode_header,
    encode_header,
    encode_state,
    new_id,
    with_results,
)
from mhafail.spool._wal import SEGMENT_SIZE, logged

logger = logging.getLogger(__name__)


def _read_up_to(fd: int, limit: int) -> bytes:
    """Up to ``limit`` more bytes of ``fd`` (fewer only at the end of the file)."""
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_message(path: Path, *, has_state: bool = True) -> tuple[Message, int]:
    """Read and validate a message file's header (and its state file, if any).

    ``has_state=False`` says the caller knows there is no state file.

    Returns:
        The message and the offset of its data.

    Raises:
        MalformedData: the header or the state breaks its schema.
        OSError: the file cannot be read (gone, unreadable).
    """
    # os.read, not a buffered file object: a third of the cost per message
    # (a takeover indexes every message it moves; 110 -> 37 us here).
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.read(fd, 65536)
        if b"\n" not in head[16:] and len(head) == 65536:
            head += _read_up_to(fd, MAX_HEADER)
    finally:
        os.close(fd)
    message, offset = decode_header(head, what=f"message file {path.name}")
    if message.id != path.name:
        raise MalformedData(f"malformed message file {path.name}: its header names {message.id}")
    if not has_state:
        return message, offset
    state = path.with_name(path.name + STATE_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        message = apply_state(message, state.read_bytes(), what=f"state file {state.name}")
    return message, offset


@attrs.define(kw_only=True, eq=False)
class Spool:
    """A node's durable message store, fenced by a :class:`~mhafail.spool.SpoolLock`.

    Args:
        directory: the spool directory (``NodePaths.spool``); created if missing.
        node: this node's name, recorded as the origin of new messages.
        fence: the right to change the directory (a started ``SpoolLock``).
        max_size: the largest message data accepted (bytes).
        group_commit: batch concurrent puts (the callers commit for each other), made
            durable by one flush of the commit log (``_commit.py``).
        max_batch: the most puts in one group commit.
        segment_size: bytes per commit log segment (group commit).
        clock: wall-clock time (``time.time``), for ``created``/``next_try``.

    Call :meth:`open` before use and :meth:`close` after.
    """

    directory: Path
    node: str
    fence: Fence
    max_size: int = 50 * 1024 * 1024
    group_commit: bool = True
    max_batch: int = 256
    segment_size: int = SEGMENT_SIZE
    clock: Callable[[], float] = time.time

    problems: list[str] = attrs.field(init=False, factory=list)
    _index: dict[str, Message] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _token: int | None = attrs.field(init=False, default=None)
    _committer: Committer | None = attrs.field(init=False, default=None)

    @property
    def msg_dir(self) -> Path:
        """Where committed messages live."""
        return self.directory / MSG

    # --- life cycle --------------------------------------------------------

    def open(self) -> Spool:
        """Create the layout if missing, clear ``tmp/``, replay the commit log, load the index.

        Raises:
            SpoolWriteFailed: the directory cannot be created or read.
            SpoolFenced: there is a commit log to replay (the last holder
                crashed) and the fence is not held.
        """
        try:
            for sub in (MSG, TMP, BAD):
                (self.directory / sub).mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            for leftover in (self.directory / TMP).iterdir():
                # A put that crashed before its rename: never acknowledged.
                leftover.unlink(missing_ok=True)
        except OSError as exc:
            raise write_failed(f"cannot open spool {self.directory}", exc) from exc
        if self._committer is None:
            # Replay before the first load (which drops orphan state files).
            self._token = self.fence.token
            committer = Committer(
                directory=self.directory,
                section=self._section,
                valid=self.fence.valid,
                committed=self._committed,
                group=self.group_commit,
                max_batch=self.max_batch,
                segment_size=self.segment_size,
                name=self.node,
            )
            committer.start()  # replays a log left by a crash
            self._committer = committer
        self._reload()
        return self

    def close(self) -> None:
        """Commit pending puts, checkpoint the log, stop. Idempotent; bounded."""
        committer, self._committer = self._committer, None
        if committer is not None:
            committer.stop()

    def checkpoint(self) -> int:
        """Give every message still in the commit log only its file now; return segments retired.

        The checkpointer does this on its own under pressure or when puts
        pause; a clean :meth:`close` does it too. Takeovers and replays
        never need it (they read the log).

        Raises:
            SpoolFenced, SpoolWriteFailed.
        """
        return self._running().checkpoint()

    def importing(self) -> contextlib.AbstractContextManager[None]:
        """Hold idle checkpoints off while a takeover moves messages in (see ``_commit``)."""
        committer = self._running()
        return committer.importing() if committer.group else contextlib.nullcontext()

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def _reload(self) -> None:
        """Rebuild the index from disk (at open, and when the token changed)."""
        index: dict[str, Message] = {}
        try:
            names = os.listdir(self.msg_dir)
        except OSError as exc:
            raise write_failed(f"cannot read spool {self.directory}", exc) from exc
        present = set(names)
        for name in names:
            if name.endswith(STATE_SUFFIX):
                if name[: -len(STATE_SUFFIX)] not in present:
                    # Its message was finished or moved between the two unlinks/renames.
                    (self.msg_dir / name).unlink(missing_ok=True)
                continue
            message = self._load(name, has_state=name + STATE_SUFFIX in present)
            if message is not None:
                index[name] = message
        with self._lock:
            self._index = index
            self._token = self.fence.token

    def _load(self, name: str, *, has_state: bool = True) -> Message | None:
        path = self.msg_dir / name
        try:
            check_id(name)
            message, _ = read_message(path, has_state=has_state)
        except FileNotFoundError:
            return None
        except (SpoolInvalidArgument, MalformedData, OSError) as exc:
            self._quarantine(name, str(exc))
            return None
        return message

    def _quarantine(self, name: str, why: str) -> None:
        problem = f"spool {self.directory}: quarantined {name}: {why}"
        logger.warning("%s", problem)
        self.problems.append(problem)
        for suffix in ("", STATE_SUFFIX):
            with contextlib.suppress(OSError):
                os.rename(self.msg_dir / (name + suffix), self.directory / BAD / (name + suffix))

    @contextlib.contextmanager
    def _section(self) -> Iterator[None]:
        with self.fence.section():
            if self._token != self.fence.token:
                # We hold the spool under a new token: disk is the truth, and
                # whoever held it meanwhile may have replayed our log.
                if self._committer is not None:
                    self._committer.replay()
                self._reload()
            yield

    # --- accepting mail ----------------------------------------------------

    def _prepare(self, envelope: Envelope, data: bytes, message_id: str | None) -> Put:
        if not isinstance(envelope, Envelope):
            raise SpoolInvalidArgument(f"invalid envelope: {type(envelope).__name__}")
        if not isinstance(data, bytes | bytearray | memoryview):
            raise SpoolInvalidArgument(f"invalid data: {type(data).__name__}, not bytes")
        data = bytes(data)
        if len(data) > self.max_size:
            raise MessageTooLarge(
                f"message of {len(data)} bytes is over this spool's cap of {self.max_size}"
            )
        mid = new_id() if message_id is None else check_id(message_id)
        header, message = encode_header(
            mid, envelope, origin=self.node, created=self.clock(), data=data
        )
        return Put(mid, header, data, message)

    def _running(self) -> Committer:
        committer = self._committer
        if committer is None:
            raise SpoolError(f"spool {self.directory} is not open")
        return committer

    def put(self, envelope: Envelope, data: bytes, *, message_id: str | None = None) -> str:
        """Store a message durably and return its id; then, and only then, acknowledge it.

        Args:
            envelope: sender and recipients.
            data: the message (headers and body), at most ``max_size`` bytes.
            message_id: keep this id (imports); default a new one.

        Raises:
            SpoolInvalidArgument: a bad envelope, data or id (permanent).
            MessageTooLarge: over ``max_size`` (permanent, 552).
            SpoolWriteFailed: disk full, unwritable, I/O error; nothing
                was written (the client retries).
            SpoolFenced: this process no longer holds the spool; nothing
                was written (answer 421 and stop accepting).
        """
        committer = self._running()
        item = self._prepare(envelope, data, message_id)
        if message_id is not None and self._present(item.message_id):
            raise SpoolInvalidArgument(f"message {item.message_id} already exists")
        committer.write(item)
        committer.submit(item)
        if item.error is not None:
            raise item.error
        return item.message_id

    async def aput(self, envelope: Envelope, data: bytes, *, message_id: str | None = None) -> str:
        """:meth:`put` for asyncio: the event loop is never blocked."""
        committer = self._running()
        item = self._prepare(envelope, data, message_id)
        if message_id is not None and self._present(item.message_id):
            raise SpoolInvalidArgument(f"message {item.message_id} already exists")
        if committer.group:
            # Nothing here blocks: a fence check and a queue put.
            loop = asyncio.get_running_loop()
            item.loop, item.future = loop, loop.create_future()
            committer.write(item)
            committer.enqueue(item)
            return str(await item.future)
        await asyncio.to_thread(committer.write, item)
        await asyncio.to_thread(committer.submit, item)
        if item.error is not None:
            raise item.error
        return item.message_id

    def _committed(self, batch: list[Put]) -> None:
        with self._lock:
            for item in batch:
                self._index[item.message_id] = item.message

    # --- delivering --------------------------------------------------------

    def due(self, now: float | None = None, *, limit: int = 100) -> list[Message]:
        """Messages whose next try has come, oldest first (at most ``limit``).

        A read of this process's index: call :meth:`claim` right before
        handing each one to the next hop.
        """
        at = self.clock() if now is None else now
        with self._lock:
            ready = [m for m in self._index.values() if m.next_try <= at and m.pending]
        ready.sort(key=lambda m: (m.next_try, m.id))
        return ready[:limit]

    def ids(self) -> list[str]:
        """Every message id in the index, sorted."""
        with self._lock:
            return sorted(self._index)

    def get(self, message_id: str) -> Message:
        """The message ``message_id``.

        Raises:
            UnknownMessage: not in this spool.
        """
        with self._lock:
            message = self._index.get(check_id(message_id))
        if message is None:
            raise UnknownMessage(f"no message {message_id} in spool {self.directory}")
        return message

    def read(self, message_id: str) -> bytes:
        """The data of ``message_id``, verified against its checksum.

        Raises:
            UnknownMessage: not in this spool.
            SpoolError: the file is damaged (it is quarantined).
        """
        message = self.get(message_id)
        try:
            logged = self._running().read(message_id)
            raw = (self.msg_dir / message_id).read_bytes() if logged is None else logged
            _, offset = decode_header(raw, what=f"message file {message_id}")
        except FileNotFoundError as exc:
            raise UnknownMessage(f"message {message_id} left spool {self.directory}") from exc
        except (OSError, MalformedData) as exc:
            raise SpoolError(f"cannot read message {message_id}: {exc}") from exc
        data = raw[offset:]
        if len(data) != message.size or zlib.crc32(data) != message.crc32:
            self._forget(message_id)
            self._quarantine(message_id, "data does not match its size or checksum")
            raise SpoolError(f"message {message_id} is damaged; quarantined")
        return data

    def claim(self, message_id: str) -> Message:
        """Check, immediately before delivering ``message_id``, that we still may.

        Raises:
            SpoolFenced: this process no longer holds the spool: do not deliver.
            UnknownMessage: the message is no longer here (taken over).
        """
        with self._section():
            if not self._present(check_id(message_id)):
                self._forget(message_id)
                raise UnknownMessage(f"message {message_id} left spool {self.directory}")
            return self.get(message_id)

    def defer(
        self,
        message_id: str,
        until: float,
        reason: str,
        *,
        delivered: Iterable[str] = (),
        failed: Mapping[str, str] | None = None,
    ) -> Message:
        """Record one attempt: some recipients delivered or failed, the rest retried at ``until``.

        Returns:
            The updated message. When no recipient is left pending, the
            message is removed (as by :meth:`done`).

        Raises:
            UnknownMessage, SpoolInvalidArgument, SpoolFenced, SpoolWriteFailed.
        """
        updated = with_results(
            self.get(message_id),
            delivered=delivered,
            failed=dict(failed or {}),
            reason=reason,
            next_try=float(until),
        )
        if not updated.pending:
            self._remove(message_id)
            return updated
        path = self.msg_dir / (message_id + STATE_SUFFIX)
        with self._section():
            if not self._present(message_id):
                self._forget(message_id)
                raise UnknownMessage(f"message {message_id} left spool {self.directory}")
            replace_durably(path, encode_state(updated), tmp=self.directory / TMP / path.name)
            with self._lock:
                self._index[message_id] = updated
        return updated

    def done(self, message_id: str) -> None:
        """The message is finished (delivered, or bounced by the application): remove it.

        Raises:
            UnknownMessage, SpoolFenced, SpoolWriteFailed.
        """
        self.get(message_id)
        self._remove(message_id)

    def bounce(self, message_id: str, reason: str) -> Message:
        """Fail every pending recipient and remove the message.

        Returns:
            The final message, for the application's delivery status
            notification (mhafail does not compose bounces).
        """
        message = self.get(message_id)
        final = with_results(
            message,
            delivered=(),
            failed=dict.fromkeys(message.pending, reason),
            reason=reason,
            next_try=message.next_try,
        )
        self._remove(message_id)
        return final

    def _present(self, message_id: str) -> bool:
        """True when the message is still here: filed in ``msg/`` or in the commit log."""
        return self._running().holds(message_id) or (self.msg_dir / message_id).exists()

    def _remove(self, message_id: str) -> None:
        committer = self._running()
        if committer.log is not None:
            # The committer's section fences the removal, and it tells a
            # message that is gone (UnknownMessage); no section here.
            with self._lock:
                known = self._index.get(message_id)
            # A state file exists only once an attempt was recorded (defer).
            state = known is None or known.attempts > 0
            try:
                committer.remove(message_id, state=state)  # group-committed with the next batch
            except UnknownMessage as exc:
                self._forget(message_id)
                raise UnknownMessage(f"message {message_id} left spool {self.directory}") from exc
            self._forget(message_id)
            return
        with self._section():
            if not self._present(message_id):
                self._forget(message_id)
                raise UnknownMessage(f"message {message_id} left spool {self.directory}")
            committer.remove(message_id)
            self._forget(message_id)

    def _forget(self, message_id: str) -> None:
        with self._lock:
            self._index.pop(message_id, None)

    async def adefer(
        self,
        message_id: str,
        until: float,
        reason: str,
        *,
        delivered: Iterable[str] = (),
        failed: Mapping[str, str] | None = None,
    ) -> Message:
        """:meth:`defer` off the event loop."""
        return await asyncio.to_thread(
            self.defer, message_id, until, reason, delivered=tuple(delivered), failed=failed
        )

    async def adone(self, message_id: str) -> None:
        """:meth:`done` off the event loop."""
        await asyncio.to_thread(self.done, message_id)

    async def aclaim(self, message_id: str) -> Message:
        """:meth:`claim` off the event loop."""
        return await asyncio.to_thread(self.claim, message_id)

    # --- takeover ------------------------------------------------------------

    def adopt_log(self, source: Path, source_fence: Fence, name: str) -> list[str]:
        """Take over another spool directory's commit log, under both fences; the ids now here.

        A takeover's first step: one rename of the source's ``wal/`` into
        this spool's log (``_adopt.adopt_log``). Raises SpoolFenced, SpoolWriteFailed.
        """
        return _adopt.adopt_log(self, source, source_fence, name)

    def adopt(self, source: Path, source_fence: Fence, ids: Iterable[str]) -> list[str]:
        """Move messages from another spool directory here by rename, keeping their ids.

        Under both fences; each message is in exactly one spool at every instant
        (``_adopt.adopt``). Returns the ids now here. Raises SpoolFenced, SpoolWriteFailed.
        """
        return _adopt.adopt(self, source, source_fence, ids)

    def _indexed(self, messages: Iterable[tuple[str, Message]]) -> None:
        """Add messages that came into the directory to the index (after an import)."""
        with self._lock:
            self._index.update(messages)


def count_messages(directory: Path) -> int:
    """How many messages a spool directory holds, filed or in its commit log (no lock)."""
    try:
        names = {n for n in os.listdir(directory / MSG) if not n.endswith(STATE_SUFFIX)}
        return len(names | logged(directory).keys())
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise SpoolWriteFailed(f"cannot read spool {directory}: {exc.strerror}") from exc


def delivered_all(message: Message) -> bool:
    """True when no recipient of ``message`` is pending."""
    return all(r.state is not RecipientState.PENDING for r in message.recipients)
