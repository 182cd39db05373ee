"""DuraVIP: listener and binding addresses owned by exactly one live node each.

Wiring::

    manager = VipManager(coordinator=c, membership=m, plumber=NetlinkPlumber(),
                         vips=[parse_vip("198.18.0.200/24@eth0")]).start()

See docs/vip.md for the safety rules, placement and operations.
"""

from mhafail.vip._beat import Beat as Beat
from mhafail.vip._beat import earliest as earliest
from mhafail.vip._beat import session_for as session_for
from mhafail.vip._fence import FenceProcess as FenceProcess
from mhafail.vip._manager import VipManager as VipManager
from mhafail.vip._ops import VipStatus as VipStatus
from mhafail.vip._ops import clear_move as clear_move
from mhafail.vip._ops import drain as drain
from mhafail.vip._ops import move as move
from mhafail.vip._ops import show as show
from mhafail.vip._ops import undrain as undrain
from mhafail.vip._ops import wait_owner as wait_owner
from mhafail.vip._placement import Action as Action
from mhafail.vip._placement import Decision as Decision
from mhafail.vip._placement import PlacementInput as PlacementInput
from mhafail.vip._placement import decide as decide
from mhafail.vip._placement import rank as rank
from mhafail.vip._plumber import NetlinkPlumber as NetlinkPlumber
from mhafail.vip._plumber import Plumber as Plumber
from mhafail.vip._policy import RebalanceMode as RebalanceMode
from mhafail.vip._policy import RebalancePolicy as RebalancePolicy
from mhafail.vip._servers import VipServers as VipServers
from mhafail.vip._sockets import listen_socket as listen_socket
from mhafail.vip._sockets import outbound_socket as outbound_socket
from mhafail.vip._spec import Vip as Vip
from mhafail.vip._spec import VipKind as VipKind
from mhafail.vip._spec import parse_topology as parse_topology
from mhafail.vip._spec import parse_vip as parse_vip
from mhafail.vip._spec import validate_vips as validate_vips
from mhafail.vip._state import PassResult as PassResult

__all__ = [
    "Action",
    "Beat",
    "Decision",
    "FenceProcess",
    "NetlinkPlumber",
    "PassResult",
    "PlacementInput",
    "Plumber",
    "RebalanceMode",
    "RebalancePolicy",
    "Vip",
    "VipKind",
    "VipManager",
    "VipServers",
    "VipStatus",
    "clear_move",
    "decide",
    "drain",
    "earliest",
    "listen_socket",
    "move",
    "outbound_socket",
    "parse_topology",
    "parse_vip",
    "rank",
    "session_for",
    "show",
    "undrain",
    "validate_vips",
    "wait_owner",
]
