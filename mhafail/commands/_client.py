"""CommandClient: a manager sends commands to one node, a subcluster or all nodes.

Requests and replies live in ZooKeeper, so any manager can read the
replies of any request by its id, whichever manager sent it and whether
or not that manager still lives; replies stay until someone collects
them or the request's ``keep_until`` passes (then any live manager's
garbage collector deletes them).

The request is written twice in one transaction: as the data of its
results folder (``results/<id>``, the cache entry managers read) and as
``requests/<id>``, which every node watches. Once every node asked has
answered, the request leaves ``requests/`` (see ``_cleanup``): the folder
every node lists on every change then holds only unanswered requests,
not an hour of history. Reading replies back is in ``_results``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from mhafail.channel import ChannelSecurity
from mhafail.commands._cleanup import Retirer, collect_garbage
from mhafail.commands._model import (
    MANAGERS,
    MAX_CHANNEL_OUTPUT,
    MAX_OUTPUT,
    REQUESTS,
    RESULTS,
    Reply,
    Request,
    Requester,
    check_request_id,
    claim_path,
    new_request_id,
    reply_path,
    request_path,
)
from mhafail.commands._outputs import fetch
from mhafail.commands._reading import cached_requests
from mhafail.commands._results import CommandResult, RequestSummary, current, gather
from mhafail.commands._schema import (
    Selector,
    check_command_name,
    check_plain_args,
    node_labels,
)
from mhafail.coordination import ConvergeLoop, Coordinator, NodeInfo, Znodes, check_name
from mhafail.errors import (
    CommandError,
    CommandInvalidArgument,
    CoordinationError,
    InvalidArgument,
    MalformedData,
    UnknownRequest,
)

logger = logging.getLogger(__name__)


@attrs.define(kw_only=True, eq=False)
class CommandClient:
    """Sends commands and reads their replies (the manager side).

    Args:
        coordinator: a started coordinator with the operator role (ZooKeeper
            refuses requests from any other identity).
        name: manager name; with :meth:`start` it is registered as
            ``commands/managers/<name>`` (ephemeral) and the garbage
            collector runs. Sending and reading need neither.
        gc_period: seconds between garbage-collection passes.
        clock: wall clock (``time.time``) for request times and expiry.
        channel: how to authenticate to the nodes' reply channels (the
            cluster's shared secret or TLS), for :meth:`fetch_output`.

    Thread safety: every method may be called from any thread.
    """

    coordinator: Coordinator
    name: str = ""
    gc_period: float = 10.0
    clock: Callable[[], float] = time.time
    channel: ChannelSecurity | None = None

    _loop: ConvergeLoop | None = attrs.field(init=False, default=None)
    _layout: bool = attrs.field(init=False, default=False)
    _retirer: Retirer = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.name:
            check_name("manager name", self.name)
        self._retirer = Retirer(lambda: self.coordinator.znodes)

    # --- life cycle ---------------------------------------------------------

    def start(self) -> CommandClient:
        """Register as a live manager and start garbage collection.

        Raises:
            CommandError: another live manager holds this name, or no name.
            AccessDenied: not an operator identity.
        """
        if not self.name:
            raise CommandError("a command manager needs a name to register")
        self._ensure_layout()
        info = json.dumps(
            {"name": self.name, "host": socket.gethostname(), "pid": os.getpid(),
             "user": self._requester().user, "started": self.clock()}
        ).encode()  # fmt: skip
        z = self.coordinator.znodes
        if z.create(f"{MANAGERS}/{self.name}", info, ephemeral=True) is None:
            node = z.get(f"{MANAGERS}/{self.name}")
            if node is None or node.ephemeral_owner != self.coordinator.session_id:
                raise CommandError(f"command manager name {self.name!r} is held by a live process")
        self._loop = ConvergeLoop(
            f"mhafail-command-gc-{self.name}", self._gc_pass, period=self.gc_period
        )
        self._loop.start()
        return self

    def stop(self) -> None:
        """Stop garbage collection and leave ``commands/managers`` (bounded, 1 s)."""
        if self._loop is None:
            return
        self._loop.stop(timeout=1.0)
        self._loop = None
        try:
            self.coordinator.znodes.bounded(1.0).delete(f"{MANAGERS}/{self.name}")
        except CoordinationError:
            logger.info("manager %s: registration goes with the session", self.name)

    def managers(self) -> list[str]:
        """Names of the live command managers."""
        return self.coordinator.znodes.children(MANAGERS) or []

    # --- sending --------------------------------------------------------------

    def broadcast(self, command: str, args: Mapping[str, Any] | None = None, **opts: Any) -> str:
        """Send to every live member; returns the request id (see :meth:`send`)."""
        return self.send(command, args, nodes=self.select(None), **opts)

    def unicast(
        self,
        node: str,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        require_live: bool = True,
        **opts: Any,
    ) -> str:
        """Send to one node; returns the request id.

        Raises:
            CommandInvalidArgument: ``node`` is not a live member (unless
                ``require_live`` is False: the request then waits for it
                until it expires).
        """
        check_name("node name", node)
        if require_live and node not in self._live_names():
            raise CommandInvalidArgument(f"node {node!r} is not a live member of the cluster")
        return self.send(command, args, nodes=[node], **opts)

    def subcluster(
        self, selector: Selector | str, command: str, args: Mapping[str, Any] | None = None,
        **opts: Any,
    ) -> str:  # fmt: skip
        """Send to the live members ``selector`` matches; returns the request id."""
        if isinstance(selector, str):
            selector = Selector.parse(selector)
        return self.send(command, args, nodes=self.select(selector), **opts)

    def select(self, selector: Selector | None) -> list[str]:
        """The live members ``selector`` matches (None: all), sorted.

        Raises:
            CommandInvalidArgument: nothing matches.
        """
        z = self.coordinator.znodes
        names = z.children("members") or []
        if selector is None:
            chosen = names
        else:
            docs = z.get_many([f"members/{n}" for n in names])
            chosen = []
            for name in names:
                znode = docs.get(f"members/{name}")
                if znode is None:
                    continue
                try:
                    info = NodeInfo.from_json(znode.data)
                except InvalidArgument as exc:  # shared data: skip the bad member
                    logger.warning("skipping member %s: %s", name, exc)
                    continue
                labels = node_labels(info.name, info.host, info.roles, info.version)
                if selector.matches(labels):
                    chosen.append(name)
        if not chosen:
            raise CommandInvalidArgument(
                "no live member matches " + ("(the cluster is empty)" if selector is None
                                             else f"the selector {selector}")
            )  # fmt: skip
        return sorted(chosen)

    def send(
        self,
        command: str,
        args: Mapping[str, Any] | None = None,
        *,
        nodes: Sequence[str],
        ttl: float = 60.0,
        keep: float = 3600.0,
        timeout: float = 30.0,
        max_output: int = MAX_OUTPUT,
    ) -> str:
        """Create a request for ``nodes``; returns its id.

        Args:
            command: the command name.
            args: its arguments (each node checks them against its schema).
            nodes: node names to ask.
            ttl: seconds after which no node starts it (a node that sees it
                later answers ``expired``).
            keep: seconds after ``ttl`` that the request and replies are
                kept when nobody collects them.
            timeout: seconds a node lets the handler run.
            max_output: largest output (JSON bytes) a node sends; above
                64 KiB, nodes with a reply channel keep it for
                :meth:`fetch_output` (others cut it to 64 KiB).

        Raises:
            CommandInvalidArgument: a bad name, argument, node list or option.
            AccessDenied: this identity is not an operator.
            CoordinationUnavailable: ZooKeeper could not be asked (the
                request may or may not exist; :meth:`list_requests` shows).
        """
        check_command_name(command)
        plain = check_plain_args(dict(args or {}))
        targets = sorted(set(nodes))
        if not targets:
            raise CommandInvalidArgument("a request needs at least one node")
        for node in targets:
            check_name("node name", node)
        if not 0 < ttl <= 86400 or not 0 <= keep <= 7 * 86400 or not 0 < timeout <= 86400:
            raise CommandInvalidArgument(
                "ttl and timeout must be within (0, 86400] s, keep within [0, 604800] s"
            )
        if not 0 < max_output <= MAX_CHANNEL_OUTPUT:
            raise CommandInvalidArgument(f"max_output must be 1-{MAX_CHANNEL_OUTPUT} bytes")
        now = self.clock()
        request = Request(
            id=new_request_id(now),
            command=command,
            args=plain,
            nodes=tuple(targets),
            requester=self._requester(),
            created=now,
            expires=now + ttl,
            keep_until=now + ttl + keep,
            timeout=timeout,
            max_output=max_output,
        )
        data = request.to_json()
        try:
            Request.from_json(data)
        except MalformedData as exc:  # e.g. too many nodes for one znode
            raise CommandInvalidArgument(f"request refused: {exc}") from exc
        self._ensure_layout()
        rid = request.id
        # One transaction: the folders exist before any node can see the
        # request, and a send cut short leaves nothing half made.
        taken = self.coordinator.znodes.create_all(
            [
                (f"{RESULTS}/{rid}", data),
                (claim_path(rid), b""),
                (reply_path(rid), b""),
                (request_path(rid), data),
            ]
        )
        if taken is not None:
            raise CommandError(f"request id {rid} is taken ({taken} exists); send again")
        return rid

    # --- reading -------------------------------------------------------------------

    def get(self, rid: str) -> CommandResult:
        """The request and its replies so far.

        Raises:
            UnknownRequest: no such request (never sent, collected or expired).
            CommandInvalidArgument: not a request id.
            MalformedData: the request znode fails its checks.
        """
        return current(self.coordinator.znodes, rid)

    def wait(self, rid: str, timeout: float) -> CommandResult:
        """Block until every node asked answered or ``timeout`` passed; return what there is.

        Each change of the reply folder costs one round trip (the list
        that re-arms the watch) and a read of each new reply; the claims
        are read only on timeout. A request every node answered leaves
        the node folder soon after (batched, off the caller's path).

        Raises:
            UnknownRequest: no such request.
        """
        result = gather(self.coordinator.znodes, rid, timeout)
        if not result.running and not result.pending and not result.malformed:
            self._retirer.add(rid)
        return result

    def fetch_output(
        self, rid: str, node: str, *, max_size: int = MAX_CHANNEL_OUTPUT, timeout: float = 30.0
    ) -> Any:
        """The whole output of ``node``'s reply to ``rid``, from ZooKeeper or its reply channel.

        Any manager may fetch it, until the request is collected or expires.

        Args:
            rid: the request id.
            node: the answering node.
            max_size: refuse outputs larger than this (bytes), before fetching.
            timeout: seconds for the whole fetch.

        Returns:
            The output's JSON value (the cut text when the reply is ``truncated``).

        Raises:
            UnknownRequest: no reply (not answered, collected or expired), or
                the node no longer has the output.
            CommandInvalidArgument: a bad id or node, or the output is over ``max_size``.
            CommandError: the output is on a reply channel and this client has no ``channel``.
            MalformedData: the reply, or the fetched bytes, fail their checks.
            ChannelError: the node cannot be reached or authenticated.
        """
        check_request_id(rid)
        check_name("node name", node)
        znode = self.coordinator.znodes.get(reply_path(rid, node))
        if znode is None:
            raise UnknownRequest(f"no reply from {node} to {rid} (not yet, collected or expired)")
        reply = Reply.from_json(znode.data, what=f"reply of {node} to {rid}")
        if reply.blob is None:
            return reply.output
        if self.channel is None:
            raise CommandError(
                f"the output of {node} for {rid} ({reply.blob.size} bytes) waits on its reply "
                "channel: give the CommandClient a channel (the cluster's shared secret)"
            )
        data = fetch(reply.blob, rid, self.channel, max_size=max_size, timeout=timeout)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise MalformedData(f"the output of {node} for {rid} is not JSON: {exc}") from exc

    def collect(self, rid: str) -> CommandResult:
        """Read the request and its replies, then delete them (the cache entry is used up).

        Raises:
            UnknownRequest: no such request.
        """
        result = self.get(rid)
        self.delete(rid)
        return result

    def delete(self, rid: str) -> bool:
        """Delete a request and its replies; True if the request existed."""
        check_request_id(rid)
        z = self.coordinator.znodes
        live = z.delete(request_path(rid))
        kept = z.delete(f"{RESULTS}/{rid}", recursive=True)
        return live or kept

    def cancel(self, rid: str) -> bool:
        """Ask the nodes to cancel ``rid``; False when it does not exist.

        Nodes that have not started it answer ``cancelled``; running
        handlers are told to stop (``ctx.cancelled``). Answers already
        given stay.
        """
        check_request_id(rid)
        kept = self._mark_cancelled(f"{RESULTS}/{rid}", rid)
        live = self._mark_cancelled(request_path(rid), rid)
        return kept or live

    def _mark_cancelled(self, path: str, rid: str) -> bool:
        """Set ``cancelled`` in the request at ``path`` (compare-and-set); False if absent."""
        z = self.coordinator.znodes
        for _ in range(10):
            znode = z.get(path)
            if znode is None or not znode.data:
                return False
            request = Request.from_json(znode.data, what=f"command request {rid}")
            if request.cancelled:
                return True
            data = attrs.evolve(request, cancelled=True).to_json()
            if z.set(path, data, version=znode.version) is not None:
                return True
        raise CommandError(f"could not cancel {rid}: the request kept changing")

    def list_requests(self) -> list[RequestSummary]:
        """Every request in the cache, oldest first (malformed ones are skipped and logged)."""
        z = self.coordinator.znodes
        requests = cached_requests(self.coordinator.znodes, z.children(RESULTS) or [])
        counts = z.children_many([reply_path(rid) for rid in requests])
        return [
            RequestSummary(
                id=rid,
                command=req.command,
                nodes=len(req.nodes),
                replies=len(counts.get(reply_path(rid)) or []),
                requester=req.requester.user,
                created=req.created,
                expires=req.expires,
                cancelled=req.cancelled,
            )
            for rid, req in requests.items()
        ]

    def gc(self) -> int:
        """Delete requests past ``keep_until`` and orphaned results, retire answered ones.

        Returns:
            How many requests were deleted.
        """
        return collect_garbage(self.coordinator.znodes, self.clock(), self.delete)

    # --- internals -----------------------------------------------------------------

    def _gc_pass(self) -> None:
        removed = self.gc()
        if removed:
            logger.info("manager %s: deleted %d expired command requests", self.name, removed)

    def _ensure_layout(self) -> None:
        if not self._layout:
            ensure_layout(self.coordinator.znodes)
            self._layout = True

    def _live_names(self) -> list[str]:
        return self.coordinator.znodes.children("members") or []

    def _requester(self) -> Requester:
        creds = self.coordinator.credentials
        return Requester(
            # In an open cluster anyone may write anything: there is only one role.
            user="(open)" if creds is None else creds.user,
            role="operator" if creds is None else creds.role.value,
            manager=self.name,
            host=socket.gethostname()[:255],
            pid=os.getpid(),
        )


def ensure_layout(znodes: Znodes) -> None:
    """Create ``commands/`` folders that are missing (operators; nodes may only read)."""
    for folder in (REQUESTS, RESULTS, MANAGERS):
        znodes.ensure(folder)
