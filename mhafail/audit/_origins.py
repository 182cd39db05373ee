"""What a series merged from each remote origin (pure: the series locks).

A receiver's series remembers, per origin (node name + incarnation), the
highest batch sequence it merged, so re-sent batches count once. A
cluster-wide series also keeps the counts each origin contributed to every
live window: when a node restarts, its receivers hand those counts of its
earlier incarnations back (``AuditSeries.origin_counts``), so the new
process counts its own pre-crash traffic again instead of starting from
zero. Everything about an origin is forgotten once every window it
contributed to has aged out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs

from mhafail.audit._batch import Origin
from mhafail.audit._window import merge_capped

__all__ = ["OriginLedger", "OriginState"]

Counts = dict[Any, int]


@attrs.define
class OriginState:
    """One remote origin as a series saw it.

    Attributes:
        last_seq: the highest batch sequence merged from it.
        newest_window: the start of the newest window it sent counts for.
        windows: per live window start, the counts merged from it (kept by
            cluster-wide series only).
        incomplete: some of its counts were not kept (``max_keys`` per
            window was reached), so ``windows`` is a lower bound.
    """

    last_seq: int
    newest_window: int
    windows: dict[int, Counts] = attrs.field(factory=dict)
    incomplete: bool = False


@attrs.define
class OriginLedger:
    """Per-origin sequences and, when ``keep_counts``, per-origin counts.

    Args:
        max_keys: entry cap per origin per window (memory stays bounded
            whatever an origin sends).
        keep_counts: keep what each origin contributed per window.
    """

    max_keys: int
    keep_counts: bool
    _states: dict[Origin, OriginState] = attrs.field(factory=dict, init=False)

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[tuple[Origin, OriginState]]:
        return iter(self._states.items())

    def get(self, origin: Origin) -> OriginState | None:
        """Return what is known about ``origin``, or None."""
        return self._states.get(origin)

    def record(
        self, origin: Origin, seq: int, newest_window: int, applied: Mapping[int, Mapping[Any, int]]
    ) -> None:
        """Note that batch ``seq`` of ``origin`` was merged, with ``applied`` per window."""
        state = self._states.get(origin)
        if state is None:
            state = self._states[origin] = OriginState(seq, newest_window)
        else:
            state.last_seq = seq
            state.newest_window = max(state.newest_window, newest_window)
        if not self.keep_counts:
            return
        for start, counts in applied.items():
            if merge_capped(state.windows.setdefault(start, {}), counts, self.max_keys):
                state.incomplete = True

    def prune(self, oldest: int) -> None:
        """Forget windows before ``oldest``, and origins with nothing left in them."""
        for origin in [o for o, st in self._states.items() if st.newest_window < oldest]:
            del self._states[origin]
        if self.keep_counts:
            for state in self._states.values():
                for start in [s for s in state.windows if s < oldest]:
                    del state.windows[start]

    def beyond(
        self, origin: Origin, cumulative: Mapping[int, Mapping[Any, int]]
    ) -> dict[int, Counts]:
        """Return what ``cumulative`` (an origin's whole counts) holds beyond what was merged.

        Per key, the positive difference between ``cumulative`` and the
        counts already merged from ``origin``; so applying a later, larger
        total of the same origin adds only its difference.
        """
        state = self._states.get(origin)
        known = state.windows if state is not None else {}
        out: dict[int, Counts] = {}
        for start, counts in cumulative.items():
            have = known.get(start, {})
            extra = {key: n - have.get(key, 0) for key, n in counts.items() if n > have.get(key, 0)}
            if extra:
                out[start] = extra
        return out
