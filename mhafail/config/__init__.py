"""Git-backed cluster configuration: validated commits, replicated and applied atomically.

Momentum's ecconfigd/eccfg, done better. Each node keeps the repository
in ``<base>/<repo>/`` (a working copy in ``work/``, applied versions in
``versions/<sha>``, the live one behind the ``current`` symlink). A commit
is validated, then published by compare-and-set on
``config/<repo>/head``; every node's :class:`ConfigAgent` fetches the
commit from a peer's git daemon, validates it locally, switches
``current`` atomically and calls the reload hooks. A file is resolved for
a node in the order ``<node>/``, ``global/``, ``default/``.
"""

from mhafail.config._agent import ConfigAgent as ConfigAgent
from mhafail.config._agent import ReloadHook as ReloadHook
from mhafail.config._apply import Checkouts as Checkouts
from mhafail.config._model import ApplyOutcome as ApplyOutcome
from mhafail.config._model import ApplyState as ApplyState
from mhafail.config._model import ClusterStatus as ClusterStatus
from mhafail.config._model import Commit as Commit
from mhafail.config._model import Head as Head
from mhafail.config._model import LogEntry as LogEntry
from mhafail.config._model import NodeReport as NodeReport
from mhafail.config._model import UpdateMode as UpdateMode
from mhafail.config._node import ConfigNode as ConfigNode
from mhafail.config._paths import Limits as Limits
from mhafail.config._paths import check_changes as check_changes
from mhafail.config._paths import check_path as check_path
from mhafail.config._repository import ConfigRepository as ConfigRepository
from mhafail.config._serve import GitDaemon as GitDaemon
from mhafail.config._validate import CheckCommand as CheckCommand
from mhafail.config._validate import Validator as Validator
from mhafail.config._validate import cluster_check as cluster_check
from mhafail.config._validate import load_check as load_check
from mhafail.config._validate import run_validators as run_validators
from mhafail.config._validate import syntax_check as syntax_check
from mhafail.config._view import ConfigView as ConfigView

__all__ = [
    "ApplyOutcome",
    "ApplyState",
    "CheckCommand",
    "Checkouts",
    "ClusterStatus",
    "Commit",
    "ConfigAgent",
    "ConfigNode",
    "ConfigRepository",
    "ConfigView",
    "GitDaemon",
    "Head",
    "Limits",
    "LogEntry",
    "NodeReport",
    "ReloadHook",
    "UpdateMode",
    "Validator",
    "check_changes",
    "check_path",
    "cluster_check",
    "load_check",
    "run_validators",
    "syntax_check",
]
