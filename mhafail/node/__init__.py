"""A cluster node's mhafail components, configured once and run together.

* :class:`NodeSettings`: where ZooKeeper, the secrets, the shared storage
  and the VIPs are (from the command line or built directly); checked
  before anything starts.
* :class:`NodeServices`: starts the coordinator, jlogs, audit, config
  replication, membership, spool and DuraVIP in order, and stops them in
  the reverse order, each step bounded.

See docs/node.md for the wiring, the guarantees and the failure behaviour.
"""

from mhafail.node._services import NodeServices as NodeServices
from mhafail.node._settings import NodeSettings as NodeSettings

__all__ = ["NodeServices", "NodeSettings"]
