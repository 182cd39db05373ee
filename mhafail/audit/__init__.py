"""Audit series, the as_logger and CIDR queries (Momentum's audit_series, as_logger, cidr_server).

* :class:`AuditSeries` counts keys (IPv4/IPv6 addresses or strings) over
  rolling windows and answers CIDR sums fast enough for every SMTP
  connection.
* :class:`ASLogger` writes the selected series to versioned snapshot files
  in a :class:`SnapshotStore` every interval, with hourly and daily
  roll-ups and retention.
* :class:`QueryEngine` answers the cidr_cli language (:func:`parse_query`)
  over those files; :class:`CidrServer` serves it over HTTP.
* :class:`IncrementBatch`, :meth:`AuditSeries.take_batch` and
  :meth:`AuditSeries.merge` are the hook for cluster-wide series;
  :class:`ClusterAudit` moves the batches between the nodes of a cluster
  (receivers found through ZooKeeper membership).

See docs/audit.md.
"""

from mhafail.audit._aslogger import ASLogger as ASLogger
from mhafail.audit._aslogger import LogReport as LogReport
from mhafail.audit._batch import IncrementBatch as IncrementBatch
from mhafail.audit._batch import MergeOutcome as MergeOutcome
from mhafail.audit._batch import MergeStatus as MergeStatus
from mhafail.audit._batch import Origin as Origin
from mhafail.audit._clock import Clock as Clock
from mhafail.audit._clock import ManualClock as ManualClock
from mhafail.audit._clock import SystemClock as SystemClock
from mhafail.audit._cluster import ClusterAudit as ClusterAudit
from mhafail.audit._cluster import ClusterStats as ClusterStats
from mhafail.audit._cluster import PeerStatus as PeerStatus
from mhafail.audit._cluster import ReceiverStats as ReceiverStats
from mhafail.audit._engine import QueryEngine as QueryEngine
from mhafail.audit._engine import QueryResult as QueryResult
from mhafail.audit._engine import Row as Row
from mhafail.audit._keys import KeyFamily as KeyFamily
from mhafail.audit._keys import Prefix as Prefix
from mhafail.audit._keys import format_address as format_address
from mhafail.audit._keys import parse_address as parse_address
from mhafail.audit._keys import parse_prefix as parse_prefix
from mhafail.audit._query import CountQuery as CountQuery
from mhafail.audit._query import ShowAvailable as ShowAvailable
from mhafail.audit._query import parse_query as parse_query
from mhafail.audit._series import AuditSeries as AuditSeries
from mhafail.audit._series import IntervalCounts as IntervalCounts
from mhafail.audit._series import SeriesStats as SeriesStats
from mhafail.audit._server import CidrServer as CidrServer
from mhafail.audit._snapshot import Snapshot as Snapshot
from mhafail.audit._snapshot import SnapshotHeader as SnapshotHeader
from mhafail.audit._snapshot import read_snapshot as read_snapshot
from mhafail.audit._snapshot import write_snapshot as write_snapshot
from mhafail.audit._store import CondenseReport as CondenseReport
from mhafail.audit._store import SnapshotRef as SnapshotRef
from mhafail.audit._store import SnapshotStore as SnapshotStore

__all__ = [
    "ASLogger",
    "AuditSeries",
    "CidrServer",
    "Clock",
    "ClusterAudit",
    "ClusterStats",
    "CondenseReport",
    "CountQuery",
    "IncrementBatch",
    "IntervalCounts",
    "KeyFamily",
    "LogReport",
    "ManualClock",
    "MergeOutcome",
    "MergeStatus",
    "Origin",
    "PeerStatus",
    "Prefix",
    "QueryEngine",
    "QueryResult",
    "ReceiverStats",
    "Row",
    "SeriesStats",
    "ShowAvailable",
    "Snapshot",
    "SnapshotHeader",
    "SnapshotRef",
    "SnapshotStore",
    "SystemClock",
    "format_address",
    "parse_address",
    "parse_prefix",
    "parse_query",
    "read_snapshot",
    "write_snapshot",
]
