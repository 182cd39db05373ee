"""Durable multi-subscriber journals, on-disk compatible with libjlog 2.x.

A jlog is a directory of append-only segments that several subscribers
read independently, each with its own checkpoint; data stays until every
subscriber has read it. mhafail reads and writes the real libjlog format
(docs/jlog.md, "Format compatibility"), so C tools (``jlogctl``, ``jlogtail``, Momentum) and
Python processes can share a jlog, and it fixes libjlog's known traps
(retention, torn writes, silent skips). Start with :class:`Jlog`.
"""

from ._block import MessageBlock as MessageBlock
from ._durability import Durability as Durability
from ._durability import DurabilityMode as DurabilityMode
from ._format import Message as Message
from ._format import MessageId as MessageId
from ._format import Meta as Meta
from ._format import Safety as Safety
from ._format import Whence as Whence
from ._handler import JlogHandler as JlogHandler
from ._jlog import Jlog as Jlog
from ._jlog import SegmentInfo as SegmentInfo
from ._reader import Interval as Interval
from ._reader import JlogReader as JlogReader
from ._reader import JlogTail as JlogTail
from ._repair import CheckpointMove as CheckpointMove
from ._repair import Cut as Cut
from ._repair import InspectReport as InspectReport
from ._repair import Problem as Problem
from ._repair import ProblemKind as ProblemKind
from ._repair import RepairReport as RepairReport
from ._repair import inspect as inspect
from ._repair import repair as repair
from ._subscribers import SubscriberInfo as SubscriberInfo
from ._writer import JlogWriter as JlogWriter

__all__ = [
    "CheckpointMove",
    "Cut",
    "Durability",
    "DurabilityMode",
    "InspectReport",
    "Interval",
    "Jlog",
    "JlogHandler",
    "JlogReader",
    "JlogTail",
    "JlogWriter",
    "Message",
    "MessageBlock",
    "MessageId",
    "Meta",
    "Problem",
    "ProblemKind",
    "RepairReport",
    "Safety",
    "SegmentInfo",
    "SubscriberInfo",
    "Whence",
    "inspect",
    "repair",
]
