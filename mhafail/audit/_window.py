"""One window of an audit series: counts per key and per prefix (pure).

A window keeps one dict per *level*: the exact keys (a /32 or /128) and a
few coarser prefix lengths (/8, /16, /24 for IPv4; /32, /48, /64 for IPv6).
Counting a prefix at a level is one dict lookup; a length between levels
is one lookup too, in the next finer level regrouped at that length (built
on first use, then kept up to date by every fold).

Every level holds at most ``max_keys`` entries. When a level is full, new
entries at *that level only* are dropped and tallied in ``dropped``; the
coarser levels and the window total stay exact, so a flood of distinct
addresses costs bounded memory. Every prefix answered from the full level
undercounts, including those between it and the kept level before it
(a /12 is summed from the /16 level); :meth:`AuditSeries.stats` reports
the longest exact length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mhafail.audit._keys import KeyFamily

__all__ = ["LEVELS", "Window", "group_levels"]

# Regrouped levels kept per window: each costs at most its level's memory
# and a little on every fold, so only the lengths queried most recently.
_MAX_DERIVED = 6

# Keys are int addresses or str keys, per series; Any keeps the shift arithmetic typed simply.
Counts = dict[Any, int]

# Prefix lengths kept per window, coarse to fine; the last is the exact key.
LEVELS: dict[KeyFamily, tuple[int, ...]] = {
    KeyFamily.IPV4: (8, 16, 24, 32),
    KeyFamily.IPV6: (32, 48, 64, 128),
    KeyFamily.STRING: (0,),
}


def group_levels(exact: Counts, lengths: tuple[int, ...]) -> list[Counts]:
    """Return ``exact`` regrouped at every level, coarse to fine.

    Each coarser level is built from the next finer one, so the big loop
    runs once over the exact keys and the others over far fewer buckets.

    Args:
        exact: increments per exact key (kept as the finest level, not copied).
        lengths: the level prefix lengths, coarse to fine.

    Returns:
        One dict per level; the last one is ``exact`` itself.
    """
    out: list[Counts] = [exact]
    finer: Counts = exact
    for i in range(len(lengths) - 2, -1, -1):
        shift = lengths[i + 1] - lengths[i]
        grouped: Counts = {}
        get = grouped.get
        for key, n in finer.items():
            bucket = key >> shift
            grouped[bucket] = get(bucket, 0) + n
        out.append(grouped)
        finer = grouped
    out.reverse()
    return out


class Window:
    """The counts of one series window. Not thread-safe: the series locks.

    Attributes:
        start: epoch second the window starts at.
        levels: one dict per level, coarse to fine.
        dropped: per level, increments not stored there because it was full.
        total: every increment in the window (never dropped).
        derived: ``{(level, gap): counts}``: a level regrouped at a length
            ``gap`` bits shorter, built on the first count at that length
            and kept equal to the regrouped level from then on, so a length
            between levels costs one lookup instead of up to ``2**gap``.
    """

    __slots__ = ("derived", "dropped", "levels", "start", "total")

    def __init__(self, start: int, nlevels: int) -> None:
        self.start = start
        self.levels: list[Counts] = [{} for _ in range(nlevels)]
        self.dropped = [0] * nlevels
        self.total = 0
        self.derived: dict[tuple[int, int], Counts] = {}

    def fold(self, deltas: list[Counts], max_keys: int, *, owned: bool) -> None:
        """Add per-level increments (from :func:`group_levels`).

        Args:
            deltas: increments per level, coarse to fine.
            max_keys: the per-level entry cap.
            owned: the caller hands the delta dicts over, so an empty level
                may adopt one instead of copying it.
        """
        self.total += sum(deltas[-1].values())
        derived = self.derived
        for i, delta in enumerate(deltas):
            level = self.levels[i]
            if derived:
                self._fold_derived(i, delta, fits=len(level) + len(delta) <= max_keys)
            if not level and len(delta) <= max_keys:
                self.levels[i] = delta if owned else dict(delta)
                continue
            self.dropped[i] += merge_capped(level, delta, max_keys)

    def _fold_derived(self, i: int, delta: Mapping[Any, int], *, fits: bool) -> None:
        for level, gap in [k for k in self.derived if k[0] == i]:
            if not fits:
                # Some of delta may be dropped at the level: rebuild on demand
                # rather than let the derived counts disagree with it.
                del self.derived[level, gap]
                continue
            counts = self.derived[level, gap]
            get = counts.get
            for key, n in delta.items():
                bucket = key >> gap
                counts[bucket] = get(bucket, 0) + n

    def fold_small(self, delta: Mapping[Any, int], shifts: tuple[int, ...], max_keys: int) -> None:
        """Add a few exact-key increments straight into every level.

        Args:
            delta: increments per exact key.
            shifts: per level, how far to shift a key to get its bucket
                (ignored for string keys, which have a single level).
            max_keys: the per-level entry cap.
        """
        levels = self.levels
        dropped = self.dropped
        string_keys = len(levels) == 1
        if self.derived:
            self._fold_small_derived(delta, shifts, max_keys)
            return
        for key, n in delta.items():
            self.total += n
            for i, level in enumerate(levels):
                bucket = key if string_keys else key >> shifts[i]
                old = level.get(bucket)
                if old is not None:
                    level[bucket] = old + n
                elif len(level) < max_keys:
                    level[bucket] = n
                else:
                    dropped[i] += n

    def _fold_small_derived(
        self, delta: Mapping[Any, int], shifts: tuple[int, ...], max_keys: int
    ) -> None:
        # fold_small, also adding what each level keeps to its regrouped copies.
        levels = self.levels
        dropped = self.dropped
        string_keys = len(levels) == 1
        per_level: list[list[tuple[int, Counts]]] = [[] for _ in levels]
        for (at, gap), counts in self.derived.items():
            per_level[at].append((gap, counts))
        for key, n in delta.items():
            self.total += n
            for i, level in enumerate(levels):
                bucket = key if string_keys else key >> shifts[i]
                old = level.get(bucket)
                if old is not None:
                    level[bucket] = old + n
                elif len(level) < max_keys:
                    level[bucket] = n
                else:
                    dropped[i] += n
                    continue
                for gap, counts in per_level[i]:
                    coarse = bucket >> gap
                    counts[coarse] = counts.get(coarse, 0) + n

    def count(self, bucket: Any, level: int, gap: int) -> int:
        """Return the count of one prefix.

        Args:
            bucket: the prefix's number at its own length
                (``value >> (width - length)``), or the key itself.
            level: index of the first level at least as long as the prefix.
            gap: that level's length minus the prefix length.

        Returns:
            The count (a lower bound if ``dropped[level]`` is non-zero).
        """
        if not gap:
            return self.levels[level].get(bucket, 0)
        derived = self.derived
        counts = derived.get((level, gap))
        if counts is None:
            if len(derived) >= _MAX_DERIVED:
                # Bounded memory and fold cost: forget the oldest length.
                del derived[next(iter(derived))]
            counts = derived[level, gap] = _regroup(self.levels[level], gap)
        return counts.get(bucket, 0)


def _regroup(counts: Counts, gap: int) -> Counts:
    out: Counts = {}
    get = out.get
    for key, n in counts.items():
        bucket = key >> gap
        out[bucket] = get(bucket, 0) + n
    return out


def merge_capped(into: Counts, delta: Mapping[Any, int], max_keys: int) -> int:
    """Add ``delta`` into ``into`` without growing it past ``max_keys`` entries.

    Args:
        into: the counts to update.
        delta: the increments.
        max_keys: the entry cap.

    Returns:
        The sum of increments that were dropped because ``into`` was full.
    """
    if not into and len(delta) <= max_keys:
        into.update(delta)  # C speed: the common case of a fresh interval or outbox
        return 0
    get = into.get
    if len(into) + len(delta) <= max_keys:
        for key, n in delta.items():
            into[key] = get(key, 0) + n
        return 0
    dropped = 0
    for key, n in delta.items():
        old = get(key)
        if old is not None:
            into[key] = old + n
        elif len(into) < max_keys:
            into[key] = n
        else:
            dropped += n
    return dropped
