"""Coordination through ZooKeeper: the session, its fencing lease, membership.

The only subpackage that talks to kazoo. Components receive a started
:class:`Coordinator` and use its :attr:`~Coordinator.znodes`, state, lease
and listeners; a :class:`Membership` registers the node and tracks the view.
"""

from mhafail.coordination._auth import Credentials as Credentials
from mhafail.coordination._auth import Role as Role
from mhafail.coordination._auth import TlsSettings as TlsSettings
from mhafail.coordination._auth import write_credentials_pair as write_credentials_pair
from mhafail.coordination._coordinator import Coordinator as Coordinator
from mhafail.coordination._dispatch import Dispatcher as Dispatcher
from mhafail.coordination._dispatch import in_loop as in_loop
from mhafail.coordination._faults import expire_session as expire_session
from mhafail.coordination._lease import Lease as Lease
from mhafail.coordination._lease import ProofChain as ProofChain
from mhafail.coordination._lease import default_margin as default_margin
from mhafail.coordination._lease import oldest_proof as oldest_proof
from mhafail.coordination._loop import ConvergeLoop as ConvergeLoop
from mhafail.coordination._members import ClusterView as ClusterView
from mhafail.coordination._members import NodeInfo as NodeInfo
from mhafail.coordination._membership import Membership as Membership
from mhafail.coordination._names import check_name as check_name
from mhafail.coordination._names import parse_hosts as parse_hosts
from mhafail.coordination._state import ConnectionState as ConnectionState
from mhafail.coordination._state import LeaseState as LeaseState
from mhafail.coordination._store import Pending as Pending
from mhafail.coordination._store import Seen as Seen
from mhafail.coordination._store import Watch as Watch
from mhafail.coordination._store import Znode as Znode
from mhafail.coordination._store import Znodes as Znodes
from mhafail.coordination._tx import Check as Check
from mhafail.coordination._tx import Create as Create
from mhafail.coordination._tx import Delete as Delete
from mhafail.coordination._tx import Op as Op
from mhafail.coordination._tx import SetData as SetData
from mhafail.coordination._tx import absent as absent

__all__ = [
    "Check",
    "ClusterView",
    "ConnectionState",
    "ConvergeLoop",
    "Coordinator",
    "Create",
    "Credentials",
    "Delete",
    "Dispatcher",
    "Lease",
    "LeaseState",
    "Membership",
    "NodeInfo",
    "Op",
    "Pending",
    "ProofChain",
    "Role",
    "Seen",
    "SetData",
    "TlsSettings",
    "Watch",
    "Znode",
    "Znodes",
    "absent",
    "check_name",
    "default_margin",
    "expire_session",
    "in_loop",
    "oldest_proof",
    "parse_hosts",
    "write_credentials_pair",
]
