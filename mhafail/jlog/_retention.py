"""Which segments may be deleted: the retention rules as pure functions.

Data stays until every subscriber has read it (docs/jlog.md,
"Subscribers and retention"), with two of libjlog's traps fixed:

- removing the slowest subscriber frees the segments only it held
  (:func:`cleanable` runs after every removal), and
- with no subscribers at all nothing is deleted: libjlog's clean would
  treat "nobody" as "everybody has read it" and drop unread data.

The segment being written (``storage_log``) is never deleted.
"""

from __future__ import annotations

from collections.abc import Iterable


def releasable(
    old_log: int, new_log: int, checkpoint_logs: Iterable[int], storage_log: int
) -> list[int]:
    """Segments freed when one checkpoint moves from ``old_log`` to ``new_log``.

    Args:
        old_log: the segment of the checkpoint before the move.
        new_log: the segment after the move.
        checkpoint_logs: the segment of every subscriber's checkpoint after
            the move, the mover's included.
        storage_log: the segment being written.

    Returns:
        Every ``L`` with ``old_log <= L < new_log`` that no checkpoint still
        needs (no checkpoint with ``log <= L``) and that is not being written.
    """
    logs = list(checkpoint_logs)
    if not logs or new_log <= old_log:
        return []
    upper = min(new_log, storage_log, *logs)
    return list(range(old_log, max(old_log, upper)))


def cleanable(
    segments: Iterable[int], checkpoint_logs: Iterable[int], storage_log: int
) -> list[int]:
    """Segments no subscriber needs any more, among those present.

    Args:
        segments: the segment ids present on disk.
        checkpoint_logs: the segment of every subscriber's checkpoint.
        storage_log: the segment being written.

    Returns:
        The present segments below every checkpoint and below
        ``storage_log``; none at all when there are no subscribers.
    """
    logs = list(checkpoint_logs)
    if not logs:
        return []
    limit = min(storage_log, *logs)
    return sorted(s for s in segments if s < limit)
