"""The cluster console: a web UI and a versioned JSON API beside each manager.

A :class:`Console` serves, for one cluster: members with their roles,
labels, lease and uptime (updated live); VIPs with move, drain and undrain;
config heads and drift with pull and rollback; log subscribers' lag with a
chart of the last hour; the CIDR query box over the audit snapshots; and
command delegation with replies as they arrive and a history. Users log
in with the cluster's ZooKeeper identities (:class:`Users`): operators act,
readers (:class:`ConsoleRole`) only look. Plain HTML, CSS and JavaScript
ship in the package; nothing is fetched from elsewhere. See docs/console.md.
"""

from mhafail.console._auth import ConsoleRole as ConsoleRole
from mhafail.console._auth import Users as Users
from mhafail.console._cluster import VipVia as VipVia
from mhafail.console._console import DEFAULT_PORT as DEFAULT_PORT
from mhafail.console._console import Console as Console

__all__ = ["DEFAULT_PORT", "Console", "ConsoleRole", "Users", "VipVia"]
