"""Per-node data on shared storage: a durable spool, fenced locks, automatic takeover.

* :class:`NodePaths`: each node's directories under a shared root (the SAN).
* :class:`Spool`: the durable message store an MTA uses directly.
* :class:`SpoolLock`: the node's exclusive right to its spool (a ZooKeeper
  lock with a fencing token, and the lock file); the spool's fence.
* :class:`Takeover`: survivors import a gone node's spool, exactly once.
* operator functions (:func:`spool_status`, :func:`order_drain`,
  :func:`order_import`, :func:`list_messages`) behind ``mhafail spool``.

See docs/spool.md for the protocol and its guarantees.
"""

from mhafail.spool._fence import Fence as Fence
from mhafail.spool._fence import FileFence as FileFence
from mhafail.spool._fence import LockRecord as LockRecord
from mhafail.spool._lock import LockState as LockState
from mhafail.spool._lock import SpoolLock as SpoolLock
from mhafail.spool._message import Envelope as Envelope
from mhafail.spool._message import Message as Message
from mhafail.spool._message import Recipient as Recipient
from mhafail.spool._message import RecipientState as RecipientState
from mhafail.spool._ops import NodeStatus as NodeStatus
from mhafail.spool._ops import list_messages as list_messages
from mhafail.spool._ops import order_drain as order_drain
from mhafail.spool._ops import order_import as order_import
from mhafail.spool._ops import show_message as show_message
from mhafail.spool._ops import spool_status as spool_status
from mhafail.spool._ops import wait_imported as wait_imported
from mhafail.spool._paths import NodeBinding as NodeBinding
from mhafail.spool._paths import NodePaths as NodePaths
from mhafail.spool._placement import rank as rank
from mhafail.spool._spool import Spool as Spool
from mhafail.spool._takeover import EventKind as EventKind
from mhafail.spool._takeover import Takeover as Takeover
from mhafail.spool._takeover import TakeoverEvent as TakeoverEvent

__all__ = [
    "Envelope",
    "EventKind",
    "Fence",
    "FileFence",
    "LockRecord",
    "LockState",
    "Message",
    "NodeBinding",
    "NodePaths",
    "NodeStatus",
    "Recipient",
    "RecipientState",
    "Spool",
    "SpoolLock",
    "Takeover",
    "TakeoverEvent",
    "list_messages",
    "order_drain",
    "order_import",
    "rank",
    "show_message",
    "spool_status",
    "wait_imported",
]
