"""Command delegation: managers send authorized, registered commands to nodes.

Node side: a :class:`CommandAgent` runs the commands the application
registered (with a typed argument :class:`Schema`) and the built-ins
(:func:`register_builtins`), each request at most once per node, with a
deadline, an output cap and cancellation, and appends every execution to a
local audit jlog. Manager side: a :class:`CommandClient` sends to one node
(:meth:`~CommandClient.unicast`), a subcluster (:meth:`~CommandClient.subcluster`
with a :class:`Selector`) or all (:meth:`~CommandClient.broadcast`); requests
and replies live in ZooKeeper, where only operators may create requests
and nodes may only add their own claim and reply. See docs/commands.md.
"""

from mhafail.commands._agent import CommandAgent as CommandAgent
from mhafail.commands._builtins import register_builtins as register_builtins
from mhafail.commands._client import CommandClient as CommandClient
from mhafail.commands._model import Blob as Blob
from mhafail.commands._model import Reply as Reply
from mhafail.commands._model import ReplyStatus as ReplyStatus
from mhafail.commands._model import Request as Request
from mhafail.commands._model import Requester as Requester
from mhafail.commands._registry import Command as Command
from mhafail.commands._registry import CommandContext as CommandContext
from mhafail.commands._results import CommandResult as CommandResult
from mhafail.commands._results import RequestSummary as RequestSummary
from mhafail.commands._runner import AgentStats as AgentStats
from mhafail.commands._schema import Arg as Arg
from mhafail.commands._schema import ArgKind as ArgKind
from mhafail.commands._schema import Schema as Schema
from mhafail.commands._schema import Selector as Selector
from mhafail.commands._schema import parse_cli_args as parse_cli_args

__all__ = [
    "AgentStats",
    "Arg",
    "ArgKind",
    "Blob",
    "Command",
    "CommandAgent",
    "CommandClient",
    "CommandContext",
    "CommandResult",
    "Reply",
    "ReplyStatus",
    "Request",
    "RequestSummary",
    "Requester",
    "Schema",
    "Selector",
    "parse_cli_args",
    "register_builtins",
]
