"""Finding the next messages after a position, across segments.

This is libjlog's ``__jlog_find_first_log_after``: from a position
``(log, marker)``, resync ``log``'s index; when the position is at the end
of a closed segment below ``storage_log``, move to ``(log + 1, 0)``; skip
segments that no longer exist below ``storage_log``. A segment missing
*between* segments that still exist is skipped, as libjlog does, only when
some subscriber's checkpoint is past the hole: libjlog's retention deletes
just the range a checkpoint moves across and leaves a removed subscriber's
segments behind, so that hole is ordinary retention. A hole nobody has
read past is reported as corruption (unread data was lost).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mhafail.errors import JlogCorrupt

from . import _format as fmt
from ._files import list_segments, open_rw, passed_hole, read_storage_log
from ._segment import SegmentView

log_ = logging.getLogger(__name__)


class Cursor:
    """Locates and reads messages for one reader; keeps one segment open.

    Not thread-safe: the owning reader serializes calls.
    """

    def __init__(self, path: Path, magic: int, *, strict_gaps: bool = True) -> None:
        self.path = path
        self.magic = magic
        self.strict_gaps = strict_gaps
        self._meta_fd = open_rw(path / fmt.METASTORE)
        self._view: SegmentView | None = None

    def close(self) -> None:
        """Close the metastore and the open segment."""
        if self._view is not None:
            self._view.close()
            self._view = None
        if self._meta_fd >= 0:
            os.close(self._meta_fd)
            self._meta_fd = -1

    def storage_log(self) -> int:
        """Return the metastore's current ``storage_log``."""
        return read_storage_log(self._meta_fd)

    def view(self, log: int) -> SegmentView | None:
        """Return a view of segment ``log``, reusing the open one; ``None`` if absent."""
        if self._view is not None:
            if self._view.log == log:
                return self._view
            self._view.close()
            self._view = None
        self._view = SegmentView.open(self.path, log, self.magic)
        return self._view

    def _next_existing(self, log: int, storage_log: int) -> int | None:
        """Where to go when segment ``log`` (below ``storage_log``) is missing."""
        present = list_segments(self.path)
        older = [s for s in present if s < log]
        later = [s for s in present if log < s <= storage_log]
        if older and self.strict_gaps:
            resume = later[0] if later else storage_log
            if not passed_hole(self.path, resume):
                raise JlogCorrupt(
                    f"segment {log:08x} is missing while older segment {older[-1]:08x} still "
                    "exists and no subscriber has read past it: unread data was deleted; "
                    "run repair() to acknowledge the loss"
                )
            log_.info(
                "jlog %s: skipping segments %08x..%08x that libjlog's retention deleted "
                "after every subscriber had read them",
                self.path,
                log,
                resume - 1,
            )
            return resume
        if not later:
            return storage_log if storage_log > log else None
        if not older:
            log_.debug("jlog %s: skipping deleted segments %08x..%08x", self.path, log, later[0])
        return later[0]

    def locate(self, position: fmt.MessageId) -> tuple[fmt.MessageId, int, SegmentView | None]:
        """Find where reading after ``position`` continues.

        Args:
            position: the last message consumed (marker 0: none of that log).

        Returns:
            ``(start, available, view)``: ``start`` is the position reading
            continues from (possibly in a later segment, with marker 0),
            ``available`` how many messages follow it in that one segment,
            ``view`` that segment (``None`` when it does not exist yet).

        Raises:
            JlogCorrupt: a segment's data or index is corrupt, or a segment
                is missing between segments that exist.
        """
        log, marker = position.log, position.marker
        while True:
            storage_log = self.storage_log()
            view = self.view(log)
            if view is None:
                if log >= storage_log:
                    return fmt.MessageId(log, marker), 0, None
                nxt = self._next_existing(log, storage_log)
                if nxt is None:
                    return fmt.MessageId(log, marker), 0, None
                log, marker = nxt, 0
                continue
            view.resync(storage_log)
            count = view.count
            # A checkpoint past the end (libjlog's "checkpoint off the end")
            # is pulled back to the end: moving back never skips data.
            marker = min(marker, count)
            if marker == count and view.closed and log < storage_log:
                log, marker = log + 1, 0
                continue
            return fmt.MessageId(log, marker), count - marker, view

    def pending(self, position: fmt.MessageId) -> int:
        """Count the messages after ``position`` in every segment up to ``storage_log``."""
        start, available, _ = self.locate(position)
        total = available
        storage_log = self.storage_log()
        for log in range(start.log + 1, storage_log + 1):
            view = self.view(log)
            if view is not None:
                view.resync(storage_log)
                total += view.count
        return total

    def last_id(self) -> fmt.MessageId:
        """Return the id of the newest message (marker 0 if its segment is empty)."""
        storage_log = self.storage_log()
        view = self.view(storage_log)
        if view is None:
            return fmt.MessageId(storage_log, 0)
        view.resync(storage_log)
        return fmt.MessageId(storage_log, view.count)
