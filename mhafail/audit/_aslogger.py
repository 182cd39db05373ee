"""``ASLogger``: Momentum's as_logger, writing series snapshots every interval.

On a manager, every ``log_interval`` seconds the logger takes each selected
series' interval counts (which resets them) and writes one raw snapshot per
series; after that it writes due roll-ups and applies retention.

Selection follows Momentum: a series is logged when some ``include``
regular expression matches its name (``re.search``) and no ``exclude``
expression does. With no ``include`` nothing is logged, on purpose: every
series logged costs a file per interval.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence

import attrs

from mhafail.audit._clock import Clock, SystemClock
from mhafail.audit._series import AuditSeries
from mhafail.audit._store import CondenseReport, SnapshotStore
from mhafail.errors import AuditError, AuditInvalidArgument

__all__ = ["ASLogger", "LogReport"]

log = logging.getLogger(__name__)


def _compile(patterns: Sequence[str]) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise AuditInvalidArgument(f"bad series pattern {pattern!r}: {exc}") from None
    return tuple(compiled)


@attrs.frozen
class LogReport:
    """What one :meth:`ASLogger.run_once` pass did.

    Attributes:
        written: the raw snapshot files written, one per selected series.
        maintenance: roll-ups written and files expired.
    """

    written: tuple[str, ...]
    maintenance: CondenseReport


@attrs.define(kw_only=True)
class ASLogger:
    """Writes snapshot files of the selected series every ``log_interval``.

    Args:
        store: the snapshot directory.
        series: every series the application has; the logger picks by name.
        include: regular expressions; a series is logged if one matches.
        exclude: regular expressions; a matching series is never logged.
        log_interval: seconds between snapshots (60, as Momentum).
        clock: the wall clock (snapshot times and roll-up deadlines).

    Raises:
        AuditInvalidArgument: a bad pattern or interval, or a selected
            series was created without ``track_intervals=True``.
    """

    store: SnapshotStore
    series: Sequence[AuditSeries]
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    log_interval: float = 60.0
    clock: Clock = attrs.field(factory=SystemClock)

    _include: tuple[re.Pattern[str], ...] = attrs.field(init=False, repr=False)
    _exclude: tuple[re.Pattern[str], ...] = attrs.field(init=False, repr=False)
    _stop: threading.Event = attrs.field(factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.log_interval > 0:
            raise AuditInvalidArgument(f"log_interval must be positive, not {self.log_interval!r}")
        self._include = _compile(self.include)
        self._exclude = _compile(self.exclude)
        for series in self.selected():
            if not series.track_intervals:
                raise AuditInvalidArgument(
                    f"series {series.name!r} is selected for logging but was created "
                    "without track_intervals=True"
                )

    def selected(self) -> list[AuditSeries]:
        """Return the series the include/exclude patterns select."""
        return [
            s
            for s in self.series
            if any(p.search(s.name) for p in self._include)
            and not any(p.search(s.name) for p in self._exclude)
        ]

    def run_once(self) -> LogReport:
        """Snapshot every selected series now, then roll up and expire.

        Returns:
            The files written and the maintenance done.

        Raises:
            AuditError: some snapshot could not be written. Every other
                series is still written and maintenance still runs; the
                failed series' counts are lost for this interval (logged),
                never doubled.
        """
        written = []
        failed = []
        for series in self.selected():
            interval = series.take_interval()
            try:
                written.append(str(self.store.write_interval(interval)))
            except (OSError, AuditError) as exc:
                log.error("cannot write snapshot of %r: %s", series.name, exc)
                failed.append(f"{series.name!r}: {exc}")
        maintenance = self.store.maintain(self.clock.time(), grace_seconds=2 * self.log_interval)
        if failed:
            raise AuditError(f"cannot write snapshot of {'; '.join(failed)}")
        return LogReport(tuple(written), maintenance)

    def start(self) -> None:
        """Run :meth:`run_once` every ``log_interval`` seconds on a daemon thread.

        Errors are logged and the loop goes on: a full disk must not stop
        the next interval from being tried.
        """
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mhafail-as-logger", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the thread started by :meth:`start` and wait for it."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.wait(self.log_interval):
            try:
                self.run_once()
            except Exception:
                log.exception("as_logger pass failed; trying again next interval")
