"""mhafail: high availability for Python mail transfer agents.

The names users need most are re-exported here; every component lives in
its own subpackage (``mhafail.coordination``, ``mhafail.jlog``, ...).
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from mhafail.coordination import ClusterView as ClusterView
from mhafail.coordination import ConnectionState as ConnectionState
from mhafail.coordination import Coordinator as Coordinator
from mhafail.coordination import LeaseState as LeaseState
from mhafail.coordination import Membership as Membership
from mhafail.coordination import NodeInfo as NodeInfo
from mhafail.errors import MhafailError as MhafailError

try:
    __version__ = _version("mhafail")
except _PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "ClusterView",
    "ConnectionState",
    "Coordinator",
    "LeaseState",
    "Membership",
    "MhafailError",
    "NodeInfo",
    "__version__",
]
