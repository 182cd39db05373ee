"""Importing another spool directory's messages into a spool (a takeover's moves).

:meth:`Spool.adopt_log <mhafail.spool.Spool.adopt_log>` and
:meth:`Spool.adopt <mhafail.spool.Spool.adopt>` delegate here. Every step
runs inside both fence sections: the importing spool's (it may write its
own directory) and the source's (it holds the source by takeover), so a
newer holder of either can change nothing meanwhile and an older one is
fenced. Messages move by rename: each is in exactly one spool at every
instant (across file systems, ``EXDEV``, a durable copy comes first and the
source is removed after; a copy left behind by a crash is recognised and
removed by the next attempt).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from mhafail._fs import fsync_dir
from mhafail.errors import MalformedData
from mhafail.spool._fence import Fence
from mhafail.spool._files import MSG, STATE_SUFFIX, TMP, write_failed, write_tmp
from mhafail.spool._message import Message, apply_state, check_id, decode_header
from mhafail.spool._wal import CommitLog, recover

if TYPE_CHECKING:
    from mhafail.spool._spool import Spool

logger = logging.getLogger(__name__)


def adopt_log(spool: Spool, source: Path, source_fence: Fence, name: str) -> list[str]:
    """Take the commit log of the spool directory ``source`` over into ``spool``.

    Both fences are held. With group commit the source's ``wal/`` is
    renamed into the spool's log as a whole (``CommitLog.adopt``): the
    messages it acknowledged last come over with no file made each, and
    their state files follow them. Without group commit the source's log
    is replayed into its ``msg/`` instead (moved then by :func:`adopt`).

    Returns:
        The ids now in the spool's log.

    Raises:
        SpoolFenced, SpoolWriteFailed.
    """
    log = spool._running().log
    with spool._section(), source_fence.section():
        try:
            if log is None:
                recover(source)
                return []
            ids = log.adopt(source, name)
            src = source / MSG
            there = set(os.listdir(src))
            states = [mid for mid in ids if mid + STATE_SUFFIX in there]
            for mid in states:
                os.rename(src / (mid + STATE_SUFFIX), spool.msg_dir / (mid + STATE_SUFFIX))
            if states:
                fsync_dir(spool.msg_dir)
                fsync_dir(src)
        except OSError as exc:
            raise write_failed("cannot take over the commit log", exc) from exc
        loaded: dict[str, Message] = {}
        for mid in ids:
            message = _decode_logged(spool, log, mid, mid in states)
            if message is not None:
                loaded[mid] = message
    spool._indexed(loaded.items())
    return ids


def _decode_logged(spool: Spool, log: CommitLog, mid: str, has_state: bool) -> Message | None:
    state = spool.msg_dir / (mid + STATE_SUFFIX)
    try:
        # Our checkpointer may have filed it since the adoption (it runs
        # on its own when puts pause): then its file is the copy to read.
        raw = log.read(mid)
        if raw is None:
            raw = (spool.msg_dir / mid).read_bytes()
        message, _ = decode_header(raw, what=f"logged message {mid}")
        if message.id != mid:
            raise MalformedData(f"logged message {mid}: its header names {message.id}")
        if has_state:
            message = apply_state(message, state.read_bytes(), what=f"state file {state.name}")
    except (MalformedData, OSError) as exc:
        # It stays in the log; filed at the next checkpoint, the load quarantines it.
        problem = f"spool {spool.directory}: cannot index {mid}: {exc}"
        logger.warning("%s", problem)
        spool.problems.append(problem)
        return None
    return message


def adopt(spool: Spool, source: Path, source_fence: Fence, ids: Iterable[str]) -> list[str]:
    """Move the messages ``ids`` from the spool directory ``source`` into ``spool``.

    Both fences are held: the spool's (we may write there) and the
    source's (we hold the source by takeover). A rename moves each message
    atomically, so it is in exactly one spool at every instant; across
    file systems (``EXDEV``) it is copied durably, then removed from the
    source; one found in both (a copy interrupted before the source was
    removed) is removed from the source.

    Returns:
        The ids now in ``spool`` (those still in the source when asked).

    Raises:
        SpoolFenced, SpoolWriteFailed.
    """
    moved: list[tuple[str, bool]] = []
    src = source / MSG
    with spool._section(), source_fence.section():
        try:
            # Messages acknowledged by the source may be in its commit log only.
            recover(source)
            # One listing of each directory instead of a failing call per
            # message: a takeover of 10,000 messages is mostly renames.
            here = set(os.listdir(spool.msg_dir))
            there = set(os.listdir(src))
            for mid in ids:
                check_id(mid)
                has_state = mid + STATE_SUFFIX in there
                if mid in here:
                    # Already here: a copy interrupted before the source was removed.
                    (src / mid).unlink(missing_ok=True)
                    (src / (mid + STATE_SUFFIX)).unlink(missing_ok=True)
                elif mid in there:
                    _move(spool, src, mid, has_state)
                    moved.append((mid, has_state))
            fsync_dir(spool.msg_dir)
            fsync_dir(src)
        except OSError as exc:
            raise write_failed("cannot move messages into the spool", exc) from exc
        loaded = [(mid, spool._load(mid, has_state=state)) for mid, state in moved]
    spool._indexed((mid, message) for mid, message in loaded if message is not None)
    return [mid for mid, message in loaded if message is not None]


def _move(spool: Spool, src: Path, mid: str, has_state: bool) -> None:
    try:
        os.rename(src / mid, spool.msg_dir / mid)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy(spool, src, mid)
    if not has_state:
        return
    # The message first, its state after: a crash in between only resets
    # the attempt count; the orphan state file is removed at the next load.
    state = mid + STATE_SUFFIX
    try:
        os.rename(src / state, spool.msg_dir / state)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        (spool.msg_dir / state).write_bytes((src / state).read_bytes())
        (src / state).unlink()


def _copy(spool: Spool, src: Path, mid: str) -> None:
    tmp = spool.directory / TMP / mid
    write_tmp(tmp, [(src / mid).read_bytes()])
    os.rename(tmp, spool.msg_dir / mid)
    fsync_dir(spool.msg_dir)
    (src / mid).unlink()
