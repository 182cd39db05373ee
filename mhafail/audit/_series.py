"""``AuditSeries``: rolling per-key counts that answer CIDR sums (pure: no I/O).

Time is cut into windows of ``window_seconds`` aligned to the epoch; the
series keeps the current window (window 0) and the ``windows - 1`` before
it. ``add`` goes to a small pending dict (one C-speed dict update), which is
folded into the window's per-level dicts (see ``_window``) before anything
reads it, so a burst of adds costs one fold, not one per level per add.

Memory: each live window holds at most ``max_keys`` entries per level (four
levels for addresses); measured cost is 80 to 145 bytes per distinct IPv4
address per window (docs/benchmarks.md). Past the cap, the counts of
prefixes answered from a full level (and every longer one) become lower
bounds; :meth:`AuditSeries.stats` says up to which length counts stay exact.
A cluster-wide series (``export_increments``) also keeps what it merged
from each origin per live window (at most ``max_keys`` per origin per
window; about 50 more bytes per merged address), to hand a restarted node
its own counts back (``origin_counts``/``merge_history``).

Thread safety: every public method takes the series' lock, so ``add`` on an
event loop, ``take_interval`` on an as_logger thread and ``merge`` on a
transport thread can run concurrently.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

import attrs

from mhafail.audit._batch import IncrementBatch, MergeOutcome, MergeStatus, Origin
from mhafail.audit._clock import Clock, SystemClock
from mhafail.audit._keys import KeyFamily, Prefix, parse_address, parse_prefix
from mhafail.audit._origins import OriginLedger
from mhafail.audit._values import (
    MAX_INCREMENT,
    MAX_STRING_KEY_BYTES,
    SERIES_NAME,
    IntervalCounts,
    SeriesStats,
    check_batch,
    check_name,
    check_positive,
    check_string_key,
    to_family,
)
from mhafail.audit._window import LEVELS, Window, group_levels, merge_capped
from mhafail.errors import AuditError, AuditInvalidArgument

__all__ = ["SERIES_NAME", "AuditSeries", "IntervalCounts", "SeriesStats"]

Key = int | str
Target = Key | Prefix

# Pending adds are folded once this many distinct keys wait, which bounds
# the pending dict even if nothing reads the series for a whole window.
_FOLD_AT = 1 << 16
_CACHE_SIZE = 4096
_SMALL_FOLD = 32


@attrs.define
class AuditSeries:
    """Counts of keys (IP addresses or strings) over rolling windows.

    Momentum's default shape is six windows of 300 s, which is the default
    here. ``add`` counts a key in window 0; ``count`` sums any prefix over
    any range of windows.

    Args:
        name: series name: letters, digits, ``_`` and ``-``.
        window_seconds: length of a window; windows start at multiples of
            it since the epoch.
        windows: how many windows are kept (window 0 is the current one).
        family: ``"ipv4"``, ``"ipv6"`` or ``"string"`` (or a ``KeyFamily``).
        clock: where the time comes from (inject a ``ManualClock`` in tests).
        max_keys: entry cap per level per window (and for the interval and
            outbox dicts); bounds memory under a flood of distinct keys.
        track_intervals: keep counts since the last :meth:`take_interval`
            (what an as_logger writes).
        export_increments: keep local increments for :meth:`take_batch`
            (cluster-wide series).

    Raises:
        AuditInvalidArgument: a bad name, size or family.
    """

    name: str = attrs.field(validator=check_name)
    window_seconds: int = attrs.field(default=300, validator=check_positive)
    windows: int = attrs.field(default=6, validator=check_positive)
    family: KeyFamily = attrs.field(default=KeyFamily.IPV4, converter=to_family)
    clock: Clock = attrs.field(factory=SystemClock, kw_only=True)
    max_keys: int = attrs.field(default=1 << 20, kw_only=True, validator=check_positive)
    track_intervals: bool = attrs.field(default=False, kw_only=True)
    export_increments: bool = attrs.field(default=False, kw_only=True)

    _lock: threading.Lock = attrs.field(factory=threading.Lock, init=False, repr=False)
    _lengths: tuple[int, ...] = attrs.field(init=False, repr=False)
    _max_value: int = attrs.field(init=False, repr=False)
    _pending: dict[Key, int] = attrs.field(factory=dict, init=False, repr=False)
    _current_start: int = attrs.field(init=False, repr=False)
    _window_end: float = attrs.field(init=False, repr=False)
    _ring: dict[int, Window] = attrs.field(factory=dict, init=False, repr=False)
    # The live windows by index (0: the current one), None where nothing was counted.
    _recent: list[Window | None] = attrs.field(factory=list, init=False, repr=False)
    _interval: dict[Key, int] = attrs.field(factory=dict, init=False, repr=False)
    _interval_start: float = attrs.field(init=False, repr=False)
    _interval_dropped: int = attrs.field(default=0, init=False, repr=False)
    _outbox: dict[int, dict[Key, int]] = attrs.field(factory=dict, init=False, repr=False)
    _seq: int = attrs.field(default=0, init=False, repr=False)
    _origins: OriginLedger = attrs.field(init=False, repr=False)
    _targets: dict[str, tuple[int, Key, int]] = attrs.field(factory=dict, init=False, repr=False)
    _time: Callable[[], float] = attrs.field(init=False, repr=False)
    _shifts: tuple[int, ...] = attrs.field(init=False, repr=False)
    _level_of: list[tuple[int, int]] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._time = self.clock.time  # bound once: add() is the hot path
        self._lengths = LEVELS[self.family]
        width = self.family.width
        self._shifts = tuple(width - length for length in self._lengths)
        # For each prefix length: the first level at least that long, and the gap to it.
        self._level_of = [
            next(((i, lv - length) for i, lv in enumerate(self._lengths) if lv >= length), (0, 0))
            for length in range(width + 1)
        ]
        # -1 makes every int key out of range for string series.
        self._max_value = (1 << width) - 1 if width else -1
        now = self._time()
        start = int(now // self.window_seconds) * self.window_seconds
        self._current_start = start
        self._window_end = start + self.window_seconds
        self._ring[start] = Window(start, len(self._lengths))
        self._index_windows_locked()
        self._interval_start = now
        # Cluster-wide series keep what each origin sent, to give a restarted node its own back.
        self._origins = OriginLedger(self.max_keys, keep_counts=self.export_increments)

    # --- adding -------------------------------------------------------------

    def add(self, key: Key, n: int = 1) -> None:
        """Count ``key`` ``n`` times in the current window.

        Args:
            key: an address as text or as an int (pre-parsed keys are two
                to three times faster), or a string for ``string`` series.
            n: how many times: an ``int`` (not a ``bool`` or ``float``)
                from 1 to ``MAX_INCREMENT`` (2**32 - 1).

        Raises:
            AuditInvalidArgument: the key does not fit the series' family or
                ``n`` is not an integer in range. Nothing is counted.
        """
        if type(key) is not int or key < 0 or key > self._max_value:
            key = self._coerce(key)
        if type(n) is not int or n < 1 or n > MAX_INCREMENT:
            raise AuditInvalidArgument(f"n must be an integer from 1 to {MAX_INCREMENT}, not {n!r}")
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            pending = self._pending
            pending[key] = pending.get(key, 0) + n
            if len(pending) >= _FOLD_AT:
                self._fold_pending_locked()

    def add_many(self, keys: Iterable[Key]) -> int:
        """Count every key in ``keys`` once (repeats count again).

        This is the fast path: the keys are tallied with ``collections.Counter``
        at C speed, each distinct text key is parsed once, and the lock is
        taken once.

        Args:
            keys: addresses (text or int) or strings, per the family.

        Returns:
            How many increments were counted.

        Raises:
            AuditInvalidArgument: some key does not fit; nothing is counted.
        """
        counts = Counter(keys)
        if not counts:
            return 0
        types = set(map(type, counts))
        delta: dict[Key, int]
        plain_ints = types == {int} and min(counts) >= 0 and max(counts) <= self._max_value  # type: ignore[operator]
        plain_strs = (
            types == {str}
            and self.family is KeyFamily.STRING
            and all(map(str.isascii, counts))  # type: ignore[arg-type]
            and max(map(len, counts)) <= MAX_STRING_KEY_BYTES  # type: ignore[arg-type]
        )
        if plain_ints or plain_strs:
            delta = dict(counts)
        else:
            delta = {}
            for key, n in counts.items():
                parsed = self._coerce(key)
                delta[parsed] = delta.get(parsed, 0) + n
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            if self._pending:
                merge_capped(self._pending, delta, len(self._pending) + len(delta))
            else:
                self._pending = delta
            if len(self._pending) >= _FOLD_AT:
                self._fold_pending_locked()
        return counts.total()

    def _coerce(self, key: object) -> Key:
        family = self.family
        if family is KeyFamily.STRING:
            if isinstance(key, str):
                check_string_key(key)
                return key
            raise AuditInvalidArgument(
                f"series {self.name!r} counts strings, not {type(key).__name__}"
            )
        if isinstance(key, str):
            return parse_address(key, family)
        if type(key) is int and 0 <= key <= self._max_value:
            return key
        if type(key) is int:
            raise AuditInvalidArgument(
                f"{key} is not a {family.width}-bit {family.value} address value"
            )
        raise AuditInvalidArgument(
            f"series {self.name!r} counts {family.value} addresses, not {type(key).__name__}"
        )

    # --- counting -----------------------------------------------------------

    def count(self, target: Target, windows: int | range | None = None) -> int:
        """Sum the counts of a key or CIDR prefix over some windows.

        Args:
            target: a CIDR (``"198.18.0.0/15"``), a bare address or int key
                (its exact count), a :class:`Prefix`, or a string key.
            windows: ``None`` for every window, ``k`` for the ``k`` most
                recent (windows ``0..k-1``), or a ``range`` of window indexes
                (0 is the current window).

        Returns:
            The sum. It is exact for prefixes no longer than
            :attr:`SeriesStats.exact_up_to` of every window summed, and a
            lower bound for longer ones (``max_keys`` was reached).

        Raises:
            AuditInvalidArgument: malformed target, wrong family, or window
                indexes outside ``0..windows-1``.
        """
        # A CIDR text seen before is one dict lookup (the common case).
        hit = self._targets.get(target) if type(target) is str else None
        level, bucket, gap = hit if hit is not None else self._locate(target)
        indexes = None if windows is None else self._indexes(windows)
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            if self._pending:
                self._fold_pending_locked()
            recent = self._recent
            if indexes is not None:
                recent = [recent[i] for i in indexes]
            return _sum(recent, level, bucket, gap)

    def _locate(self, target: Target) -> tuple[int, Key, int]:
        # Returns (level index or -1 for the total, bucket, gap); see Window.count.
        if type(target) is int:
            if not 0 <= target <= self._max_value:
                self._coerce(target)
            return len(self._lengths) - 1, target, 0
        if isinstance(target, str):
            if self.family is KeyFamily.STRING:
                return 0, target, 0
            hit = self._targets.get(target)
            if hit is None:
                hit = self._locate_prefix(parse_prefix(target, self.family))
                if len(self._targets) >= _CACHE_SIZE:
                    self._targets.clear()
                self._targets[target] = hit
            return hit
        if isinstance(target, Prefix):
            if target.family is not self.family:
                raise AuditInvalidArgument(f"{target} is not a {self.family.value} prefix")
            return self._locate_prefix(target)
        raise AuditInvalidArgument(f"cannot count {type(target).__name__} {target!r}")

    def _locate_prefix(self, prefix: Prefix) -> tuple[int, Key, int]:
        length = prefix.length
        if length == 0:
            return -1, 0, 0
        level, gap = self._level_of[length]
        return level, prefix.value >> (self.family.width - length), gap

    def _indexes(self, windows: int | range | None) -> range:
        if windows is None:
            return range(self.windows)
        if type(windows) is int:
            if not 0 <= windows <= self.windows:
                raise AuditInvalidArgument(f"windows={windows} is outside 0..{self.windows}")
            return range(windows)
        if isinstance(windows, range):
            if len(windows) and (min(windows) < 0 or max(windows) >= self.windows):
                raise AuditInvalidArgument(
                    f"window indexes {windows} are outside 0..{self.windows - 1}"
                )
            return windows
        raise AuditInvalidArgument(f"windows must be None, an int or a range, not {windows!r}")

    # --- rolling and folding ---------------------------------------------------

    def _roll_locked(self) -> None:
        if self._pending:
            self._fold_pending_locked()
        step = self.window_seconds
        start = int(self._time() // step) * step
        self._current_start = start
        self._window_end = start + step
        if start not in self._ring:
            self._ring[start] = Window(start, len(self._lengths))
        oldest = start - (self.windows - 1) * step
        for old in [s for s in self._ring if s < oldest]:
            del self._ring[old]
        for old in [s for s in self._outbox if s < oldest]:
            # Receivers would drop these as stale anyway; do not let a
            # stalled transport grow the outbox without bound.
            del self._outbox[old]
        self._origins.prune(oldest)
        self._index_windows_locked()

    def _index_windows_locked(self) -> None:
        start = self._current_start
        step = self.window_seconds
        self._recent = [self._ring.get(start - i * step) for i in range(self.windows)]

    def _fold_pending_locked(self) -> None:
        delta, self._pending = self._pending, {}
        self._apply_locked(self._ring[self._current_start], delta, local=True)

    def _apply_locked(
        self, window: Window, delta: dict[Key, int], *, local: bool, interval: bool = True
    ) -> None:
        cap = self.max_keys
        if self.track_intervals and interval:
            self._interval_dropped += merge_capped(self._interval, delta, cap)
        if local and self.export_increments:
            merge_capped(self._outbox.setdefault(window.start, {}), delta, cap)
        if len(delta) <= _SMALL_FOLD:
            # The per-connection pattern (add, then count) folds one key at a
            # time; building per-level dicts for it would cost more than the add.
            window.fold_small(delta, self._shifts, cap)
        else:
            window.fold(group_levels(delta, self._lengths), cap, owned=True)

    # --- as_logger and cluster hooks --------------------------------------------

    def take_interval(self) -> IntervalCounts:
        """Return the counts since the previous call and start a new interval.

        Returns:
            The interval's counts (local adds and merged remote batches).

        Raises:
            AuditError: the series was created without ``track_intervals``.
        """
        if not self.track_intervals:
            raise AuditError(f"series {self.name!r} was created without track_intervals=True")
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            if self._pending:
                self._fold_pending_locked()
            now = self._time()
            taken = IntervalCounts(
                series=self.name,
                family=self.family,
                start=self._interval_start,
                end=max(now, self._interval_start),
                counts=self._interval,
                dropped=self._interval_dropped,
            )
            self._interval = {}
            self._interval_dropped = 0
            self._interval_start = taken.end
            return taken

    def take_batch(self, origin: Origin) -> IncrementBatch | None:
        """Hand out the local increments counted since the previous batch.

        The caller sends the batch to other nodes, which pass it to their
        :meth:`merge`; re-sending the same batch is safe. Increments merged
        from other nodes are never exported again.

        Args:
            origin: this process's node name and incarnation.

        Returns:
            The batch, or ``None`` if nothing was counted since the last one.

        Raises:
            AuditError: the series was created without ``export_increments``.
        """
        if not self.export_increments:
            raise AuditError(f"series {self.name!r} was created without export_increments=True")
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            if self._pending:
                self._fold_pending_locked()
            if not self._outbox:
                return None
            windows, self._outbox = self._outbox, {}
            self._seq += 1
            seq = self._seq
        return IncrementBatch(
            series=self.name,
            family=self.family,
            window_seconds=self.window_seconds,
            origin=origin,
            seq=seq,
            windows=windows,
        )

    def merge(self, batch: IncrementBatch, *, track_interval: bool = True) -> MergeOutcome:
        """Count another node's increments in the matching windows here.

        A batch whose sequence is at or below the last one applied from the
        same origin is a duplicate and changes nothing. Windows that already
        aged out here, or that start more than one window in the future, are
        skipped and reported. Never pass this series' own batches back in.

        Args:
            batch: from another node's :meth:`take_batch`.
            track_interval: also count the increments in the as_logger
                interval (``track_intervals``). A transport passes False
                for a *snapshot* refilling a restarted receiver: those
                increments were logged before (by its previous incarnation).

        Returns:
            What was applied, skipped, or recognised as a duplicate.

        Raises:
            AuditInvalidArgument: the batch is for another series, family or
                window length, or holds malformed keys; nothing is applied.
        """
        self._check_batch(batch)
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            state = self._origins.get(batch.origin)
            if state is not None and batch.seq <= state.last_seq:
                return MergeOutcome(MergeStatus.DUPLICATE)
            gap = state is not None and batch.seq != state.last_seq + 1
            return self._merge_locked(batch, batch.windows, track_interval, gap=gap)

    def merge_history(self, batch: IncrementBatch) -> MergeOutcome:
        """Count an earlier incarnation's counts, as :meth:`origin_counts` returns them, once.

        ``batch`` holds the *whole* live counts of its origin up to its
        ``seq`` (not the increments after the previous batch). Applied to
        a series that knows nothing from that origin, it counts entirely;
        when an earlier history of the same origin up to a lower sequence
        was applied (another receiver had not got the last batches), only
        what this one holds beyond it counts. Kept out of the as_logger
        interval: those increments were logged before.

        Args:
            batch: from another node's :meth:`origin_counts`.

        Returns:
            What was applied, or DUPLICATE when this sequence (or a later
            one) of the origin is here already, or when what was kept of
            the origin is incomplete (``max_keys``), since a difference
            against it could count twice.

        Raises:
            AuditInvalidArgument: as :meth:`merge`; nothing is applied.
        """
        self._check_batch(batch)
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            state = self._origins.get(batch.origin)
            if state is None:
                return self._merge_locked(batch, batch.windows, False, gap=False)
            if batch.seq <= state.last_seq or state.incomplete or not self.export_increments:
                return MergeOutcome(MergeStatus.DUPLICATE)
            beyond = self._origins.beyond(batch.origin, batch.windows)
            return self._merge_locked(batch, beyond, False, gap=False)

    def _merge_locked(
        self,
        batch: IncrementBatch,
        windows: Mapping[int, Mapping[Key, int]],
        track_interval: bool,
        *,
        gap: bool,
    ) -> MergeOutcome:
        step = self.window_seconds
        oldest = self._current_start - (self.windows - 1) * step
        newest = self._current_start + step
        applied = stale = too_new = 0
        kept: dict[int, Mapping[Key, int]] = {}
        for start, counts in windows.items():
            n = sum(counts.values())
            if start < oldest:
                stale += n
                continue
            if start > newest:
                too_new += n
                continue
            window = self._ring.get(start)
            if window is None:
                window = self._ring[start] = Window(start, len(self._lengths))
                self._index_windows_locked()
            self._apply_locked(window, dict(counts), local=False, interval=track_interval)
            kept[start] = counts
            applied += n
        newest_seen = max(batch.windows, default=oldest - step)
        self._origins.record(batch.origin, batch.seq, newest_seen, kept)
        return MergeOutcome(
            MergeStatus.APPLIED,
            applied=applied,
            stale=stale,
            too_new=too_new,
            gap=gap,
        )

    def origin_counts(self, node: str, exclude_incarnation: int) -> list[IncrementBatch]:
        """Return what earlier incarnations of ``node`` sent, for its new process.

        One batch per origin named ``node`` other than ``exclude_incarnation``
        that still has counts in a live window: its whole merged counts per
        window, stamped with the last sequence merged from it. The restarted
        node passes each to its own :meth:`merge_history`. Only cluster-wide
        series (``export_increments``) keep these counts; others return [].

        Args:
            node: the restarted node's name.
            exclude_incarnation: its current incarnation.

        Returns:
            The batches (lower bounds where ``max_keys`` was reached).
        """
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            return [
                IncrementBatch(
                    series=self.name,
                    family=self.family,
                    window_seconds=self.window_seconds,
                    origin=origin,
                    seq=state.last_seq,
                    windows={start: dict(counts) for start, counts in state.windows.items()},
                )
                for origin, state in self._origins
                if origin.node == node
                and origin.incarnation != exclude_incarnation
                and any(state.windows.values())
            ]

    def last_seq(self, origin: Origin) -> int:
        """Return the highest batch sequence merged from ``origin``.

        A transport asks this when a sender (re)connects, to resend only
        what the series has not applied yet.

        Args:
            origin: a remote node's name and incarnation.

        Returns:
            The sequence, or 0 when the series remembers nothing from that
            origin (never heard of it, or forgot it once every window it
            contributed to aged out).
        """
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            state = self._origins.get(origin)
            return 0 if state is None else state.last_seq

    def _check_batch(self, batch: IncrementBatch) -> None:
        check_batch(batch, self.name, self.family, self.window_seconds)

    def stats(self) -> SeriesStats:
        """Return the size of every live window and what was dropped."""
        with self._lock:
            if self._time() >= self._window_end:
                self._roll_locked()
            if self._pending:
                self._fold_pending_locked()
            keys = []
            dropped = []
            exact = []
            for i in range(self.windows):
                window = self._ring.get(self._current_start - i * self.window_seconds)
                keys.append(len(window.levels[-1]) if window else 0)
                dropped.append(max(window.dropped) if window else 0)
                exact.append(self._exact_up_to(window))
            return SeriesStats(
                name=self.name,
                family=self.family,
                current_start=self._current_start,
                keys=tuple(keys),
                dropped=tuple(dropped),
                origins=len(self._origins),
                exact_up_to=tuple(exact),
            )

    def _exact_up_to(self, window: Window | None) -> int:
        if window is not None:
            for i, lost in enumerate(window.dropped):
                if lost:
                    return self._lengths[i - 1] if i else 0
        return self.family.width


def _sum(recent: list[Window | None], level: int, bucket: Key, gap: int) -> int:
    # Per window one dict lookup, inlined (no Window.count call unless a
    # regrouped level must be built first): this is the hot read path.
    total = 0
    if level < 0:
        for window in recent:
            if window is not None:
                total += window.total
    elif not gap:
        for window in recent:
            if window is not None:
                total += window.levels[level].get(bucket, 0)
    else:
        key = (level, gap)
        for window in recent:
            if window is not None:
                counts = window.derived.get(key)
                if counts is None:
                    total += window.count(bucket, level, gap)
                else:
                    total += counts.get(bucket, 0)
    return total
