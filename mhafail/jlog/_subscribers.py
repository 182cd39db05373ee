"""Subscribers: their checkpoint files, and the retention they drive.

A subscriber is a ``cp.<hex name>`` file holding the last message it
consumed. Operations that could race with segment deletion (adding at
BEGIN, rewinding, removing, cleaning) run under the metastore lock, the
same lock writers take to roll over; deleting segments happens under it
too, so a segment cannot vanish between "this checkpoint still needs it"
and "delete it". C processes do not take that lock for their own
retention, exactly as libjlog does not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from pathlib import Path

import attrs

from mhafail._fs import fsync_dir
from mhafail.errors import (
    JlogCorrupt,
    JlogInvalidArgument,
    JlogSubscriberExists,
    JlogUnknownSubscriber,
)

from . import _format as fmt
from . import _retention
from ._cursor import Cursor
from ._files import (
    FILE_MODE,
    MetaLock,
    list_checkpoint_files,
    list_segments,
    open_rw,
    pread_all,
    pwrite_all,
    read_checkpoint,
    read_storage_log,
    unlink_segment,
)
from ._lock import locked
from ._segment import SegmentView

log_ = logging.getLogger(__name__)


@attrs.frozen
class SubscriberInfo:
    """A subscriber's position and backlog.

    Attributes:
        name: the subscriber name.
        position: the last message it consumed (its checkpoint).
        pending: messages written after ``position`` and not consumed yet.
    """

    name: str
    position: fmt.MessageId
    pending: int


def first_log(path: Path, storage_log: int) -> int:
    """Return the oldest segment id present (``storage_log`` if there is none)."""
    segments = list_segments(path)
    return segments[0] if segments else storage_log


def _all_checkpoints(path: Path) -> dict[str, fmt.MessageId]:
    """Every subscriber's checkpoint; empty ``cp.*`` files are left out.

    libjlog creates ``cp.<name>`` with O_EXCL and writes it afterwards, so a
    crash in between leaves an empty file: a subscriber that never came to
    be, which libjlog ignores too. Any other damaged size raises: retention
    must not run without knowing what a real subscriber still needs.
    """
    found = {}
    for name, filename in list_checkpoint_files(path).items():
        try:
            position = read_checkpoint(path, filename)
        except JlogCorrupt:
            with contextlib.suppress(FileNotFoundError):
                if (path / filename).stat().st_size == 0:
                    log_.warning("jlog %s: ignoring empty checkpoint %s", path, filename)
                    continue
            raise
        if position is not None:
            found[name] = position
    return found


def _delete(path: Path, logs: list[int]) -> list[int]:
    return [log for log in logs if unlink_segment(path, log)]


def get(path: Path, name: str) -> fmt.MessageId:
    """Return subscriber ``name``'s checkpoint.

    Raises:
        JlogUnknownSubscriber: no such subscriber.
        JlogCorrupt: its checkpoint file is damaged.
    """
    position = read_checkpoint(path, fmt.checkpoint_name(name))
    if position is None:
        raise JlogUnknownSubscriber(f"no subscriber {name!r} in {path}")
    return position


def add(path: Path, meta: fmt.Meta, name: str, whence: fmt.Whence) -> fmt.MessageId:
    """Create subscriber ``name`` at the oldest data or the current end.

    Args:
        path: the jlog directory.
        meta: its metastore (for the record magic and safety).
        name: the new subscriber.
        whence: :attr:`Whence.BEGIN` reads everything still stored,
            :attr:`Whence.END` only what is written from now on.

    Returns:
        The checkpoint the subscriber starts at.

    Raises:
        JlogSubscriberExists: the subscriber already exists (never reset).
        JlogInvalidArgument: the name is invalid.
    """
    filename = fmt.checkpoint_name(name)
    with MetaLock(path) as meta_fd:
        storage_log = read_storage_log(meta_fd)
        if whence is fmt.Whence.BEGIN:
            position = fmt.MessageId(first_log(path, storage_log), 0)
        else:
            cursor = Cursor(path, meta.hdr_magic)
            try:
                position = cursor.last_id()
            finally:
                cursor.close()
        # Write the content first and link it into place: the checkpoint
        # appears atomically, exclusively (link fails on EEXIST) and never
        # empty to a concurrent reader, unlike libjlog's create-then-write.
        tmp = path / f".cp-new.{uuid.uuid4().hex}.tmp"
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        try:
            pwrite_all(fd, fmt.encode_checkpoint(position), 0)
            if meta.safety is fmt.Safety.SAFE:
                os.fsync(fd)
            os.close(fd)
            try:
                os.link(tmp, path / filename)
            except FileExistsError:
                raise JlogSubscriberExists(
                    f"subscriber {name!r} already exists in {path}"
                ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if meta.safety is fmt.Safety.SAFE:
            fsync_dir(path)
    return position


def remove(path: Path, name: str) -> list[int]:
    """Delete subscriber ``name`` and free the segments only it still held.

    Returns:
        The segment ids deleted as a result.

    Raises:
        JlogUnknownSubscriber: no such subscriber.
    """
    filename = fmt.checkpoint_name(name)
    try:
        os.unlink(path / filename)
    except FileNotFoundError:
        raise JlogUnknownSubscriber(f"no subscriber {name!r} in {path}") from None
    return clean(path)


def clean(path: Path) -> list[int]:
    """Delete every segment that all subscribers have moved past.

    Never deletes the segment being written, and deletes nothing when there
    are no subscribers (libjlog would delete unread data then).

    Returns:
        The segment ids deleted.
    """
    with MetaLock(path) as meta_fd:
        storage_log = read_storage_log(meta_fd)
        logs = [p.log for p in _all_checkpoints(path).values()]
        return _delete(path, _retention.cleanable(list_segments(path), logs, storage_log))


def release(path: Path, old_log: int, new_log: int) -> list[int]:
    """Delete what a checkpoint moving from ``old_log`` to ``new_log`` freed.

    Returns:
        The segment ids deleted.
    """
    with MetaLock(path) as meta_fd:
        storage_log = read_storage_log(meta_fd)
        logs = [p.log for p in _all_checkpoints(path).values()]
        return _delete(path, _retention.releasable(old_log, new_log, logs, storage_log))


def _check_position(path: Path, meta: fmt.Meta, position: fmt.MessageId, storage_log: int) -> None:
    first = first_log(path, storage_log)
    if position.log < first:
        raise JlogInvalidArgument(
            f"cannot set a checkpoint to {position}: segment {position.log:08x} no longer exists "
            f"(oldest is {first:08x})"
        )
    if position.log > storage_log:
        raise JlogInvalidArgument(
            f"cannot set a checkpoint to {position}: past the segment being written "
            f"({storage_log:08x})"
        )
    view = SegmentView.open(path, position.log, meta.hdr_magic)
    if view is None:
        if position.marker == 0:
            return
        raise JlogInvalidArgument(f"cannot set a checkpoint to {position}: no such segment")
    try:
        view.resync(storage_log)
        if position.marker > view.count:
            raise JlogInvalidArgument(
                f"cannot set a checkpoint to {position}: segment {position.log:08x} has only "
                f"{view.count} messages"
            )
    finally:
        view.close()


def set_position(path: Path, meta: fmt.Meta, name: str, position: fmt.MessageId) -> list[int]:
    """Move subscriber ``name``'s checkpoint, forward or back, to existing data.

    Args:
        path: the jlog directory.
        meta: its metastore.
        name: the subscriber.
        position: the last message it has consumed from now on.

    Returns:
        The segment ids deleted because the move freed them.

    Raises:
        JlogUnknownSubscriber: no such subscriber.
        JlogInvalidArgument: ``position`` is not a message that still exists.
    """
    filename = fmt.checkpoint_name(name)
    with MetaLock(path) as meta_fd:
        storage_log = read_storage_log(meta_fd)
        _check_position(path, meta, position, storage_log)
        old = write_checkpoint(path, filename, position, sync=meta.safety is fmt.Safety.SAFE)
        if old is None:
            raise JlogUnknownSubscriber(f"no subscriber {name!r} in {path}")
        if position.log > old.log:
            logs = [p.log for p in _all_checkpoints(path).values()]
            return _delete(path, _retention.releasable(old.log, position.log, logs, storage_log))
    return []


def write_checkpoint(
    path: Path, filename: str, position: fmt.MessageId, *, sync: bool
) -> fmt.MessageId | None:
    """Replace a checkpoint under its lock; return the previous one (``None``: no file)."""
    try:
        fd = open_rw(path / filename)
    except FileNotFoundError:
        return None
    try:
        with locked(fd):
            old_raw = pread_all(fd, 8, 0)
            pwrite_all(fd, fmt.encode_checkpoint(position), 0)
            if sync:
                os.fsync(fd)
    finally:
        os.close(fd)
    # A damaged old value cannot say which segments it held: free nothing.
    return fmt.decode_checkpoint(old_raw) if len(old_raw) == 8 else position


def list_all(path: Path, meta: fmt.Meta) -> list[SubscriberInfo]:
    """Return every subscriber with its position and pending count, sorted by name."""
    cursor = Cursor(path, meta.hdr_magic)
    try:
        out = []
        for name, position in sorted(_all_checkpoints(path).items()):
            out.append(SubscriberInfo(name, position, cursor.pending(position)))
        return out
    finally:
        cursor.close()
