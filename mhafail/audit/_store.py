"""The snapshot directory: raw files, hourly and daily roll-ups, retention, query plans.

Layout (every name is ``<series>.<YYYYMMDDTHHMMSS>``, the UTC start of the
counts it holds)::

    <root>/<series>.<ts>          raw: one as_logger interval
    <root>/hourly/<series>.<ts>   the sum of the raw files starting in that hour
    <root>/daily/<series>.<ts>    the sum of the hourly files of that UTC day
    <root>/quarantine/<res>/...   damaged files moved aside by maintenance

A roll-up is written only once its period is over (plus a grace period for
the last interval's write), and a raw file written late into a period that
was already rolled up is added to the roll-ups too, so a roll-up always
equals the sum of the raw files it covers. Query plans use the coarsest file
that lies wholly inside the requested time range.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import operator
import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from mhafail.audit._series import SERIES_NAME, IntervalCounts
from mhafail.audit._snapshot import Snapshot, SnapshotHeader, read_snapshot, write_snapshot
from mhafail.errors import AuditError, AuditInvalidArgument, SnapshotCorrupt

__all__ = ["CondenseReport", "SnapshotRef", "SnapshotStore", "format_stamp", "parse_stamp"]

log = logging.getLogger(__name__)

HOUR = 3600
DAY = 86400
_SUBDIRS = {"raw": "", "hour": "hourly", "day": "daily"}
_SPANS = {"hour": HOUR, "day": DAY}
# attrs' generated ordering builds tuples per comparison: far too slow for 43,200 files.
_BY_TIME = operator.attrgetter("start", "series")
_FILE_NAME = re.compile(rf"({SERIES_NAME.pattern})\.(\d{{8}}T\d{{6}})")


def format_stamp(epoch: float) -> str:
    """Return the ``YYYYMMDDTHHMMSS`` UTC stamp of an epoch second."""
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y%m%dT%H%M%S")


@functools.lru_cache(maxsize=1 << 17)
def parse_stamp(stamp: str) -> int:
    """Return the epoch second of a ``YYYYMMDDTHHMMSS`` UTC stamp.

    Raises:
        AuditInvalidArgument: the stamp is not a valid time.
    """
    # Not strptime: listing 43,200 one-minute files must stay well under a second.
    try:
        if len(stamp) != 15 or stamp[8] != "T" or not stamp.replace("T", "", 1).isdigit():
            raise ValueError(stamp)
        when = dt.datetime(
            int(stamp[0:4]),
            int(stamp[4:6]),
            int(stamp[6:8]),
            int(stamp[9:11]),
            int(stamp[11:13]),
            int(stamp[13:15]),
            tzinfo=dt.UTC,
        )
    except ValueError:
        raise AuditInvalidArgument(f"{stamp!r} is not a YYYYMMDDTHHMMSS time") from None
    return int(when.timestamp())


@attrs.frozen(order=True)
class SnapshotRef:
    """One snapshot file, known from its name alone.

    Attributes:
        start: epoch second in the name.
        series: series name.
        resolution: ``"raw"``, ``"hour"`` or ``"day"``.
        directory: the directory it is in.
    """

    start: int
    series: str
    resolution: str
    directory: Path = attrs.field(order=False, eq=False, repr=False)

    @property
    def path(self) -> Path:
        """Where the file is (built on demand: listings stay cheap)."""
        return self.directory / f"{self.series}.{format_stamp(self.start)}"


@attrs.frozen
class CondenseReport:
    """What one :meth:`SnapshotStore.maintain` pass did.

    Attributes:
        hourly: roll-ups written for hours.
        daily: roll-ups written for days.
        expired: files deleted by retention.
        quarantined: damaged files moved to ``<root>/quarantine/`` (their
            counts are missing from the roll-ups written since).
    """

    hourly: tuple[Path, ...] = ()
    daily: tuple[Path, ...] = ()
    expired: tuple[Path, ...] = ()
    quarantined: tuple[Path, ...] = ()


@attrs.define(kw_only=True)
class SnapshotStore:
    """A directory of snapshot files for many series.

    Safe for one writer (the as_logger) and any number of readers: files
    are replaced atomically and never modified in place.

    Args:
        root: the directory; created if missing.
        retention_seconds: raw files older than this are deleted (30 days).
        rollup_retention_seconds: roll-ups older than this are deleted
            (defaults to ``retention_seconds``).
    """

    root: Path = attrs.field(converter=Path)
    retention_seconds: int = 30 * DAY
    rollup_retention_seconds: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.retention_seconds < 1 or (self.rollup_retention_seconds or 1) < 1:
            raise AuditInvalidArgument("retention must be at least one second")
        for sub in ("hourly", "daily"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # --- listing ----------------------------------------------------------------

    def refs(self, resolution: str = "raw", series: str | None = None) -> list[SnapshotRef]:
        """List snapshot files of one resolution, sorted by start.

        Args:
            resolution: ``"raw"``, ``"hour"`` or ``"day"``.
            series: only this series (``None``: all).

        Returns:
            The files, oldest first.
        """
        directory = self.root / _SUBDIRS[resolution]
        out = []
        with os.scandir(directory) as entries:
            for entry in entries:
                match = _FILE_NAME.fullmatch(entry.name)
                if match is None or (series is not None and match[1] != series):
                    continue
                try:
                    start = parse_stamp(match[2])
                except AuditInvalidArgument:
                    continue
                out.append(SnapshotRef(start, match[1], resolution, directory))
        out.sort(key=_BY_TIME)
        return out

    def index(self) -> dict[str, dict[str, list[SnapshotRef]]]:
        """List every file once: ``{series: {resolution: [refs, oldest first]}}``.

        A query lists the directory once through this and plans every
        series from it.
        """
        out: dict[str, dict[str, list[SnapshotRef]]] = {}
        for resolution in _SUBDIRS:
            for ref in self.refs(resolution):
                files = out.get(ref.series)
                if files is None:
                    files = out[ref.series] = {r: [] for r in _SUBDIRS}
                files[resolution].append(ref)
        return out

    def series_names(self) -> list[str]:
        """Return the names of every series with at least one file."""
        return sorted(self.index())

    def read(self, ref: SnapshotRef) -> Snapshot:
        """Read one snapshot file.

        Raises:
            SnapshotCorrupt: the file does not verify, or its header
                disagrees with its name.
        """
        try:
            snap = read_snapshot(ref.path)
        except OSError as exc:
            raise AuditError(f"cannot read snapshot {ref.path}: {exc}") from exc
        if snap.header.series != ref.series or snap.header.start != ref.start:
            raise SnapshotCorrupt(
                f"{ref.path}: header names {snap.header.series} at {snap.header.start}"
            )
        return snap

    # --- writing ------------------------------------------------------------------

    def write_interval(self, interval: IntervalCounts) -> Path:
        """Write one as_logger interval as a raw snapshot.

        If a raw file with the same name exists (two intervals starting in
        the same second), the counts are added to it rather than replacing
        it; if the period was already rolled up, the roll-ups get the counts
        too, so nothing is lost or counted twice.

        Args:
            interval: from :meth:`AuditSeries.take_interval`.

        Returns:
            The raw file's path.
        """
        start = int(interval.start)
        header = SnapshotHeader(
            series=interval.series,
            family=interval.family,
            resolution="raw",
            start=start,
            end=max(int(interval.end), start + 1),
            entries=0,
            total=0,
            dropped=interval.dropped,
        )
        path = self.root / f"{interval.series}.{format_stamp(start)}"
        self._add_to(path, header, interval.counts)
        for resolution, span in _SPANS.items():
            period = start - start % span
            rollup = self.root / _SUBDIRS[resolution] / f"{interval.series}.{format_stamp(period)}"
            if rollup.exists():
                log.info(
                    "raw snapshot %s arrived after its %s roll-up; adding it", path, resolution
                )
                rollup_header = attrs.evolve(
                    header, resolution=resolution, start=period, end=period + span
                )
                self._add_to(rollup, rollup_header, interval.counts)
        return path

    def _add_to(self, path: Path, header: SnapshotHeader, counts: Mapping[Any, int]) -> None:
        old = None
        if path.exists():
            try:
                old = read_snapshot(path)
            except SnapshotCorrupt as exc:
                # Refusing to write would lose this interval too; the damaged
                # file's counts are lost either way.
                self._quarantine(path, exc)
        if old is not None:
            merged = old.items()
            for key, n in counts.items():
                merged[key] = merged.get(key, 0) + n
            header = attrs.evolve(
                header,
                start=old.header.start,
                end=max(old.header.end, header.end),
                dropped=old.header.dropped + header.dropped,
                sources=old.header.sources + header.sources,
            )
            counts = merged
        write_snapshot(path, header, counts)

    # --- roll-ups and retention ---------------------------------------------------------

    def maintain(self, now: float, *, grace_seconds: float = 120) -> CondenseReport:
        """Write the roll-ups that are due and delete files past retention.

        Idempotent: running it twice writes nothing the second time.

        Args:
            now: the current epoch time.
            grace_seconds: how long after a period ends its last raw file
                may still be written (at least the as_logger interval).

        Returns:
            What was written and deleted.
        """
        quarantined: list[Path] = []
        hourly = self._condense("raw", "hour", now - grace_seconds, quarantined)
        daily = self._condense("hour", "day", now - grace_seconds, quarantined)
        expired = self._expire(now)
        return CondenseReport(tuple(hourly), tuple(daily), tuple(expired), tuple(quarantined))

    def _quarantine(self, path: Path, reason: Exception) -> Path:
        """Move a damaged file to ``quarantine/<resolution dir>/`` and log it."""
        rel = path.relative_to(self.root)
        target = self.root / "quarantine" / (rel.parent if rel.parent.parts else Path("raw"))
        target.mkdir(parents=True, exist_ok=True)
        dest = target / path.name
        os.replace(path, dest)
        log.error("snapshot %s is damaged (%s); moved it to %s", path, reason, dest)
        return dest

    def read_or_quarantine(self, ref: SnapshotRef, quarantined: list[Path]) -> Snapshot | None:
        """Read a file for maintenance; a damaged one is moved aside and ``None`` returned."""
        try:
            return self.read(ref)
        except SnapshotCorrupt as exc:
            quarantined.append(self._quarantine(ref.path, exc))
            return None

    def _condense(
        self, source: str, target: str, complete_before: float, quarantined: list[Path]
    ) -> list[Path]:
        span = _SPANS[target]
        done = {(ref.series, ref.start) for ref in self.refs(target)}
        groups: dict[tuple[str, int], list[SnapshotRef]] = defaultdict(list)
        for ref in self.refs(source):
            period = ref.start - ref.start % span
            if period + span <= complete_before and (ref.series, period) not in done:
                groups[ref.series, period].append(ref)
        written = []
        for (series, period), refs in sorted(groups.items()):
            read = [self.read_or_quarantine(ref, quarantined) for ref in refs]
            snaps = [snap for snap in read if snap is not None]
            if not snaps:
                continue
            total = sum_counts(snaps)
            first = snaps[0].header
            header = SnapshotHeader(
                series=series,
                family=first.family,
                resolution=target,
                start=period,
                end=period + span,
                entries=0,
                total=0,
                dropped=sum(s.header.dropped for s in snaps),
                sources=sum(s.header.sources for s in snaps),
            )
            path = self.root / _SUBDIRS[target] / f"{series}.{format_stamp(period)}"
            write_snapshot(path, header, total)
            written.append(path)
        return written

    def _expire(self, now: float) -> list[Path]:
        deleted = []
        rollup_keep = self.rollup_retention_seconds or self.retention_seconds
        for resolution in _SUBDIRS:
            keep = self.retention_seconds if resolution == "raw" else rollup_keep
            span = _SPANS.get(resolution, 0)
            for ref in self.refs(resolution):
                if ref.start + span < now - keep:
                    ref.path.unlink(missing_ok=True)
                    deleted.append(ref.path)
        return deleted

    # --- query plans --------------------------------------------------------------------

    def plan(
        self,
        series: str,
        start: int | None,
        end: int | None,
        index: dict[str, dict[str, list[SnapshotRef]]] | None = None,
    ) -> list[SnapshotRef]:
        """Choose the fewest files whose sum covers ``[start, end)`` for one series.

        A raw file belongs to the range when its start does; a roll-up is
        used when its whole period lies inside the range, and then the finer
        files of that period are left out.

        Args:
            series: the series.
            start: epoch second, inclusive (``None``: from the beginning).
            end: epoch second, exclusive (``None``: to the end).
            index: a listing from :meth:`index` to reuse (default: list now).

        Returns:
            The files to sum, oldest first.
        """
        files = (index if index is not None else self.index()).get(series, {})
        listed = {res: files.get(res, []) for res in _SUBDIRS}
        lo = start if start is not None else -(1 << 62)
        hi = end if end is not None else 1 << 62
        days = {
            ref.start: ref for ref in listed["day"] if lo <= ref.start and ref.start + DAY <= hi
        }
        hours = {
            ref.start: ref
            for ref in listed["hour"]
            if lo <= ref.start
            and ref.start + HOUR <= hi
            and ref.start - ref.start % DAY not in days
        }
        chosen = list(days.values()) + list(hours.values())
        for ref in listed["raw"]:
            if not lo <= ref.start < hi:
                continue
            if ref.start - ref.start % DAY in days or ref.start - ref.start % HOUR in hours:
                continue
            chosen.append(ref)
        chosen.sort(key=_BY_TIME)
        return chosen

    def available(self) -> list[dict[str, Any]]:
        """Summarise every series: family, file counts, first and last snapshot.

        The family comes from the newest file that verifies (raw files first:
        they are the smallest): a damaged file costs nothing here; queries that
        need it still raise :class:`SnapshotCorrupt`. A series none of whose
        files verify is listed with family ``"unknown"``.
        """
        out = []
        for name, per_res in sorted(self.index().items()):
            every = [ref for refs in per_res.values() for ref in refs]
            out.append(
                {
                    "series": name,
                    "family": self._family_of(per_res),
                    "raw": len(per_res["raw"]),
                    "hourly": len(per_res["hour"]),
                    "daily": len(per_res["day"]),
                    "first": format_stamp(min(ref.start for ref in every)),
                    "last": format_stamp(max(ref.start for ref in every)),
                }
            )
        return out

    def _family_of(self, per_res: Mapping[str, list[SnapshotRef]]) -> str:
        for resolution in ("raw", "hour", "day"):
            for ref in reversed(per_res[resolution]):
                try:
                    return self.read(ref).header.family.value
                except AuditError as exc:
                    log.warning("skipping damaged snapshot %s: %s", ref.path, exc)
        return "unknown"


def sum_counts(snaps: Iterable[Snapshot]) -> dict[Any, int]:
    """Return the key-wise sum of several snapshots."""
    total: dict[Any, int] = {}
    for snap in snaps:
        for key, n in snap.items().items():
            total[key] = total.get(key, 0) + n
    return total
