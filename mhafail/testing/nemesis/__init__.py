"""The nemesis: a kernel-ordered overlap monitor, an ARP observer and seeded faults.

Proves (or breaks) DuraVIP's promise, "never two owners of one VIP at the
same instant", with real agents in network namespaces:

- :class:`OverlapMonitor` reads every node's address changes on one netlink
  socket (``NETLINK_LISTEN_ALL_NSID``), in the kernel's own order, and
  reports any moment two attached nodes held a VIP.
- :class:`ArpObserver` asks for each VIP every 15 ms from the client's
  side and flags two MACs answering one request.
- :class:`FaultSchedule` draws faults from a seed (kill, pause, pause the
  fence, pause both, partition, ZooKeeper server kill, move, drain, CPU
  starvation); :class:`Nemesis` applies them to a lab and returns a
  :class:`NemesisReport`; :class:`NemesisLab` builds the standard lab.

``python -m mhafail.testing.nemesis --minutes N --seed S`` runs a soak
(``nox -s soak``). Root and ZooKeeper only.
"""

from mhafail.testing.nemesis._arp import ArpAnswer as ArpAnswer
from mhafail.testing.nemesis._arp import ArpConflict as ArpConflict
from mhafail.testing.nemesis._arp import ArpObserver as ArpObserver
from mhafail.testing.nemesis._inject import CpuStarvation as CpuStarvation
from mhafail.testing.nemesis._inject import fence_pid as fence_pid
from mhafail.testing.nemesis._inject import starvation_unavailable as starvation_unavailable
from mhafail.testing.nemesis._lab import NemesisLab as NemesisLab
from mhafail.testing.nemesis._monitor import NetEvent as NetEvent
from mhafail.testing.nemesis._monitor import Overlap as Overlap
from mhafail.testing.nemesis._monitor import OverlapMonitor as OverlapMonitor
from mhafail.testing.nemesis._monitor import find_overlaps as find_overlaps
from mhafail.testing.nemesis._runner import FaultRecord as FaultRecord
from mhafail.testing.nemesis._runner import Finding as Finding
from mhafail.testing.nemesis._runner import Nemesis as Nemesis
from mhafail.testing.nemesis._runner import NemesisReport as NemesisReport
from mhafail.testing.nemesis._schedule import ALL_KINDS as ALL_KINDS
from mhafail.testing.nemesis._schedule import SAFE_KINDS as SAFE_KINDS
from mhafail.testing.nemesis._schedule import Fault as Fault
from mhafail.testing.nemesis._schedule import FaultSchedule as FaultSchedule
from mhafail.testing.nemesis._schedule import parse_kinds as parse_kinds

__all__ = [
    "ALL_KINDS",
    "SAFE_KINDS",
    "ArpAnswer",
    "ArpConflict",
    "ArpObserver",
    "CpuStarvation",
    "Fault",
    "FaultRecord",
    "FaultSchedule",
    "Finding",
    "Nemesis",
    "NemesisLab",
    "NemesisReport",
    "NetEvent",
    "Overlap",
    "OverlapMonitor",
    "fence_pid",
    "find_overlaps",
    "parse_kinds",
    "starvation_unavailable",
]
