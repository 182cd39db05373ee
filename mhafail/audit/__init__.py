"""Audit series, the as_logger and CIDR queries (Momentum's audit_series, as_logger, cidr_server).

* :class:`AuditSeries` counts keys (IPv4/IPv6 addresses or strings) over
  rolling windows and answers CIDR sums fast enough for every SMTP
  connection.
* :class:`IncrementBatch` / :meth:`AuditSeries.take_batch` /
  :meth:`AuditSeries.merge` are the hook for cluster-wide series.
"""

from mhafail.audit._batch import IncrementBatch as IncrementBatch
from mhafail.audit._batch import MergeOutcome as MergeOutcome
from mhafail.audit._batch import MergeStatus as MergeStatus
from mhafail.audit._batch import Origin as Origin
from mhafail.audit._clock import Clock as Clock
from mhafail.audit._clock import ManualClock as ManualClock
from mhafail.audit._clock import SystemClock as SystemClock
from mhafail.audit._keys import KeyFamily as KeyFamily
from mhafail.audit._keys import Prefix as Prefix
from mhafail.audit._keys import format_address as format_address
from mhafail.audit._keys import parse_address as parse_address
from mhafail.audit._keys import parse_prefix as parse_prefix
from mhafail.audit._series import AuditSeries as AuditSeries
from mhafail.audit._series import IntervalCounts as IntervalCounts
from mhafail.audit._series import SeriesStats as SeriesStats

__all__ = [
    "AuditSeries",
    "Clock",
    "IncrementBatch",
    "IntervalCounts",
    "KeyFamily",
    "ManualClock",
    "MergeOutcome",
    "MergeStatus",
    "Origin",
    "Prefix",
    "SeriesStats",
    "SystemClock",
    "format_address",
    "parse_address",
    "parse_prefix",
]
