"""A node's outgoing side of one cluster-wide series: its batches and local totals."""

from __future__ import annotations

import collections
import logging
import threading

from mhafail.audit._batch import IncrementBatch, Origin
from mhafail.audit._series import AuditSeries
from mhafail.audit._window import merge_capped

__all__ = ["ITEMS_PER_PUSH", "Outgoing"]

log = logging.getLogger("mhafail.audit._cluster")

Key = int | str

#: Most batches sent in one push.
ITEMS_PER_PUSH = 64


class Outgoing:
    """One series' outgoing side: the backlog of batches and the local totals.

    ``cumulative`` holds every local increment taken so far, per live
    window; it is what a snapshot sends. ``backlog`` holds the most recent
    batches, contiguous by sequence, for receivers that were briefly away.
    """

    def __init__(self, series: AuditSeries, origin: Origin, max_backlog: int) -> None:
        self.series = series
        self.origin = origin
        self.max_backlog = max_backlog
        self.lock = threading.Lock()
        self.backlog: collections.deque[IncrementBatch] = collections.deque()
        self.cumulative: dict[int, dict[Key, int]] = {}
        self.last_seq = 0

    def take(self) -> bool:
        # Lock order: ours, then the series' (inside take_batch); never the reverse.
        with self.lock:
            batch = self.series.take_batch(self.origin)
            self._prune_locked()
            if batch is None:
                return False
            if batch.seq != self.last_seq + 1:
                log.warning(
                    "series %s: batch %d follows %d; was take_batch() called elsewhere?",
                    self.series.name,
                    batch.seq,
                    self.last_seq,
                )
            self.last_seq = batch.seq
            self.backlog.append(batch)
            while len(self.backlog) > self.max_backlog:
                self.backlog.popleft()
            cap = self.series.max_keys
            for start, counts in batch.windows.items():
                merge_capped(self.cumulative.setdefault(start, {}), counts, cap)
            return True

    def _prune_locked(self) -> None:
        step = self.series.window_seconds
        now = self.series.clock.time()
        oldest = int(now // step) * step - (self.series.windows - 1) * step
        for start in [s for s in self.cumulative if s < oldest]:
            del self.cumulative[start]

    def items_after(
        self, acked: int, delivered: int
    ) -> tuple[list[tuple[bool, IncrementBatch]], int]:
        """Return what a receiver at ``acked`` still needs, and how many batches it lost.

        ``delivered`` is the highest sequence an earlier incarnation of the
        same receiver confirmed. A receiver that knows nothing from us
        (``acked == 0``) gets a snapshot of the counts up to ``delivered``
        (kept out of its as_logger interval: they were logged before) and
        then the batches after it, which are logged; when the backlog no
        longer reaches back that far, one snapshot of everything.
        """
        with self.lock:
            if acked >= self.last_seq:
                return [], 0
            if acked == 0:
                first = self.backlog[0].seq if self.backlog else self.last_seq + 1
                if delivered == 0 and first == 1:
                    acked = 0  # a receiver new to us, and the whole history is at hand
                elif delivered <= self.last_seq and first <= delivered + 1:
                    later = [b for b in self.backlog if b.seq > delivered]
                    return [(True, self._snapshot_locked(delivered, later))], 0
                else:
                    return [(True, self._snapshot_locked(self.last_seq, []))], 0
            batches = [b for b in self.backlog if b.seq > acked][:ITEMS_PER_PUSH]
            if not batches:
                # The backlog no longer reaches back: move the receiver on to our
                # latest sequence with an empty batch (it reports the gap).
                return [(False, self._empty_locked())], self.last_seq - acked
            return [(False, b) for b in batches], batches[0].seq - acked - 1

    def _empty_locked(self) -> IncrementBatch:
        return IncrementBatch(
            series=self.series.name,
            family=self.series.family,
            window_seconds=self.series.window_seconds,
            origin=self.origin,
            seq=self.last_seq,
            windows={},
        )

    def _snapshot_locked(self, seq: int, minus: list[IncrementBatch]) -> IncrementBatch:
        """The local counts of the live windows up to ``seq``: everything minus later batches."""
        self._prune_locked()
        windows = {start: dict(counts) for start, counts in self.cumulative.items()}
        for batch in minus:
            for start, counts in batch.windows.items():
                window = windows.get(start)
                if window is None:
                    continue  # aged out
                for key, n in counts.items():
                    left = window.get(key, 0) - n
                    if left > 0:
                        window[key] = left
                    else:
                        window.pop(key, None)
        return IncrementBatch(
            series=self.series.name,
            family=self.series.family,
            window_seconds=self.series.window_seconds,
            origin=self.origin,
            seq=seq,
            windows={start: counts for start, counts in windows.items() if counts},
        )

    def trim(self, floor: int) -> None:
        """Forget batches every current receiver has confirmed."""
        with self.lock:
            while self.backlog and self.backlog[0].seq <= floor:
                self.backlog.popleft()
