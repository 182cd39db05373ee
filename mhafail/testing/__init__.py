"""The mhafail testing kit: real ZooKeeper servers, namespace hosts, faults.

A public part of the product. Applications test their own HA wiring with
it; mhafail tests itself with it. Installing mhafail registers the pytest
plugin (``mhafail.testing.plugin``) with the fixtures ``zookeeper``,
``zk_cluster``, ``coordinator_factory``, ``zk_ensemble``,
``tcp_proxy_factory`` and ``netns_lab_factory``.
"""

from mhafail.coordination import expire_session as expire_session
from mhafail.testing._cluster import EventProcess as EventProcess
from mhafail.testing._cluster import NodeProcess as NodeProcess
from mhafail.testing._fakes import FakeNetwork as FakeNetwork
from mhafail.testing._fakes import FakePlumber as FakePlumber
from mhafail.testing._faults import pause_process as pause_process
from mhafail.testing._faults import resume_process as resume_process
from mhafail.testing._netns import Host as Host
from mhafail.testing._netns import NetnsLab as NetnsLab
from mhafail.testing._netns import remove_stale_namespaces as remove_stale_namespaces
from mhafail.testing._netns import run_in_netns as run_in_netns
from mhafail.testing._ports import free_port as free_port
from mhafail.testing._ports import in_ci as in_ci
from mhafail.testing._proxy import TcpProxy as TcpProxy
from mhafail.testing._simcluster import SimNode as SimNode
from mhafail.testing._simcluster import SimulatedCluster as SimulatedCluster
from mhafail.testing._zookeeper import ZooKeeperEnsemble as ZooKeeperEnsemble
from mhafail.testing._zookeeper import ZooKeeperServer as ZooKeeperServer
from mhafail.testing._zookeeper import find_classpath as find_classpath
from mhafail.testing._zookeeper import zookeeper_available as zookeeper_available

__all__ = [
    "EventProcess",
    "FakeNetwork",
    "FakePlumber",
    "Host",
    "NetnsLab",
    "NodeProcess",
    "SimNode",
    "SimulatedCluster",
    "TcpProxy",
    "ZooKeeperEnsemble",
    "ZooKeeperServer",
    "expire_session",
    "find_classpath",
    "free_port",
    "in_ci",
    "pause_process",
    "remove_stale_namespaces",
    "resume_process",
    "run_in_netns",
    "zookeeper_available",
]
