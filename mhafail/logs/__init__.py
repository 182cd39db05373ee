"""Central log aggregation: nodes' jlogs pulled by cluster managers, exactly once.

Node side: a :class:`JlogService` offers the node's jlogs over TCP to
managers (advertise its :attr:`~JlogService.endpoint` as the ``jlog``
endpoint in the node's member info). Manager side: a
:class:`LogAggregator` discovers nodes through membership and writes every
(node, log) into files under a path pattern, keeping a durable position
per stream so that each record lands in the output exactly once, whatever
crashes. Any number of managers may run, each with its own subscriber name.
See ``docs/logs.md``.
"""

from ._aggregator import LogAggregator as LogAggregator
from ._auth import read_secret_file as read_secret_file
from ._client import query_status as query_status
from ._framing import Framing as Framing
from ._framing import read_records as read_records
from ._output import DEFAULT_PATTERN as DEFAULT_PATTERN
from ._output import PathPattern as PathPattern
from ._service import JlogService as JlogService
from ._service import ensure_log as ensure_log
from ._state import StreamState as StreamState
from ._status import SubscriberStatus as SubscriberStatus
from ._stream import Commit as Commit
from ._stream import StreamStatus as StreamStatus

__all__ = [
    "DEFAULT_PATTERN",
    "Commit",
    "Framing",
    "JlogService",
    "LogAggregator",
    "PathPattern",
    "StreamState",
    "StreamStatus",
    "SubscriberStatus",
    "ensure_log",
    "query_status",
    "read_records",
    "read_secret_file",
]
