"""What the console shows and does, as plain JSON-ready dicts (no HTTP here).

Reads come from ZooKeeper (members, VIPs, config heads and reports,
command requests), from the sampler (per-node status and log lag) and from
an audit :class:`~mhafail.audit.QueryEngine`. Actions go through command
delegation (``vip.move``, ``vip.drain``, ``vip.undrain``, ``config.pull``
and any registered command), so every action is a request in ZooKeeper:
any console shows it and its replies, and a node runs it at most once.
"""

from __future__ import annotations

import enum
import re
import time
from pathlib import Path
from typing import Any

import attrs

from mhafail import vip as vip_ops
from mhafail.audit import QueryEngine
from mhafail.commands import CommandClient, Selector
from mhafail.config import ConfigRepository
from mhafail.console._sampler import Sampler
from mhafail.coordination import Coordinator, NodeInfo
from mhafail.errors import (
    ConsoleInvalidArgument,
    InvalidArgument,
    InvalidVipSpec,
)

# ``drained/<node>`` is where drain markers live (docs/security.md's table).
DRAINED = "drained"
_SHA = re.compile(r"[0-9a-f]{40}")
_COMMAND_OPTS = {"ttl": (1.0, 3600.0), "timeout": (1.0, 3600.0)}


class VipVia(enum.Enum):
    """How VIP actions are carried out.

    * ``COMMANDS``: a ``vip.move``/``vip.drain``/``vip.undrain`` request to
      the node concerned (command delegation). Nodes write the operator-only
      znodes, so this works in open and single-identity clusters.
    * ``DIRECT``: the console writes the move target or drain marker with
      its own operator identity (clusters whose nodes have the node role,
      which ZooKeeper forbids to move or drain).
    """

    COMMANDS = "commands"
    DIRECT = "direct"


def default_vip_via(coordinator: Coordinator) -> VipVia:
    """COMMANDS when nodes may write operator znodes (open or single identity), else DIRECT."""
    creds = coordinator.credentials
    if creds is None or set(creds.operators) == set(creds.nodes):
        return VipVia.COMMANDS
    return VipVia.DIRECT


@attrs.define(kw_only=True, eq=False)
class ClusterData:
    """The console's view of one cluster and the actions it offers.

    Args:
        coordinator: a started coordinator (operator credentials, or open).
        client: the console's command client.
        sampler: the status/lag sampler.
        name: this console's name (also its manager name).
        audit: the CIDR query engine, or None when this console has no
            audit snapshots.
        vip_via: how VIP actions are carried out.
        clock: wall clock.
    """

    coordinator: Coordinator
    client: CommandClient
    sampler: Sampler
    name: str
    audit: QueryEngine | None = None
    vip_via: VipVia = VipVia.COMMANDS
    clock: Any = time.time
    _senders: dict[str, CommandClient] = attrs.field(init=False, factory=dict)

    def sender(self, user: str) -> CommandClient:
        """A command client whose requests name the console and its user as the manager.

        Requests then record who asked (``requester.manager`` is
        ``<console>.<user>``), not only the console's ZooKeeper identity.
        """
        if user not in self._senders:
            tag = re.sub(r"[^A-Za-z0-9_.-]", "-", f"{self.name}.{user}")[:63]
            self._senders[user] = CommandClient(coordinator=self.coordinator, name=tag)
        return self._senders[user]

    # --- cluster -------------------------------------------------------------

    def members(self) -> list[NodeInfo]:
        """Live members (malformed member znodes are skipped)."""
        z = self.coordinator.znodes
        names = sorted(z.children("members") or [])
        docs = z.get_many([f"members/{n}" for n in names])
        result = []
        for name in names:
            znode = docs.get(f"members/{name}")
            if znode is None:
                continue
            try:
                result.append(NodeInfo.from_json(znode.data))
            except InvalidArgument:
                continue
        return result

    def cluster(self) -> dict[str, Any]:
        """Members with roles, labels, uptime and their last sampled status; this console."""
        now = self.clock()
        samples = self.sampler.nodes()
        members = []
        for info in self.members():
            labels = dict(r.split("=", 1) for r in info.roles if "=" in r)
            sample = samples.get(info.name)
            out = sample.output if sample is not None else None
            members.append(
                {
                    "name": info.name,
                    "host": info.host,
                    "pid": info.pid,
                    "version": info.version,
                    "roles": [r for r in info.roles if "=" not in r],
                    "labels": labels,
                    "addresses": list(info.addresses),
                    "endpoints": dict(info.endpoints),
                    "started_at": info.started_at or None,
                    "uptime": max(0.0, now - info.started_at) if info.started_at else None,
                    "status": None
                    if sample is None
                    else {
                        "reply": sample.status,
                        "error": sample.error,
                        "age": max(0.0, now - sample.time),
                        "connection": _get(out, "connection", str),
                        "lease_remaining": _get(out, "lease_remaining", float),
                        "commands": _get(out, "commands", list) or [],
                    },
                }
            )
        return {
            "cluster": self.coordinator.cluster,
            "console": {
                "name": self.name,
                "connection": self.coordinator.state.value,
                "lease_remaining": self.coordinator.lease_remaining(),
                "managers": self.client.managers(),
            },
            "members": members,
        }

    # --- VIPs ----------------------------------------------------------------

    def vips(self) -> dict[str, Any]:
        """Every VIP's owner, state, since, preference, target; drained nodes."""
        return {
            "vips": [s.to_dict() for s in vip_ops.show(self.coordinator)],
            "drained": sorted(self.coordinator.znodes.children(DRAINED) or []),
            "via": self.vip_via.value,
        }

    def move_vip(self, address: str, node: str, user: str = "") -> dict[str, Any]:
        """Move ``address`` to ``node``.

        Raises:
            InvalidVipSpec: unknown VIP; ``node`` is not live, does not
                declare it, or is drained (nothing is sent then).
        """
        statuses = {s.address: s for s in vip_ops.show(self.coordinator)}
        key = _vip_key(address)
        status = statuses.get(key)
        if status is None:
            raise InvalidVipSpec(f"unknown VIP {address!r}: no node declared it")
        if node not in status.declared_by:
            raise InvalidVipSpec(
                f"cannot move {key} to {node!r}: not a live node that declares it "
                f"({', '.join(status.declared_by) or 'none'})"
            )
        if self.coordinator.znodes.get(f"{DRAINED}/{node}") is not None:
            raise InvalidVipSpec(f"cannot move {key} to {node}: {node} is drained")
        if self.vip_via is VipVia.DIRECT:
            vip_ops.move(self.coordinator, key, node)
            return {"via": "direct", "address": key, "node": node}
        rid = self.sender(user).unicast(node, "vip.move", {"address": key}, ttl=30.0, timeout=10.0)
        return {"via": "commands", "request": rid, "address": key, "node": node}

    def drain(self, node: str, *, undo: bool = False, user: str = "") -> dict[str, Any]:
        """Drain (or with ``undo`` undrain) ``node``.

        Through commands the request goes to ``node`` itself when it is
        live, else to another live member (naming ``node``).

        Raises:
            InvalidArgument: a bad node name, or no live member to ask.
        """
        from mhafail.coordination import check_name

        check_name("node name", node)
        command = "vip.undrain" if undo else "vip.drain"
        if self.vip_via is VipVia.DIRECT:
            if undo:
                vip_ops.undrain(self.coordinator, node)
            else:
                vip_ops.drain(self.coordinator, node)
            return {"via": "direct", "node": node, "command": command}
        live = [m.name for m in self.members()]
        if not live:
            raise ConsoleInvalidArgument("no live member to carry out the request")
        if not undo and node not in live:
            raise ConsoleInvalidArgument(f"node {node!r} is not a live member")
        executor = node if node in live else live[0]
        rid = self.sender(user).unicast(executor, command, {"node": node}, ttl=30.0, timeout=10.0)
        return {"via": "commands", "request": rid, "node": node, "command": command}

    # --- config --------------------------------------------------------------

    def _repository(self, repo: str) -> ConfigRepository:
        from mhafail.coordination import check_name

        check_name("config repository name", repo)
        # Only its ZooKeeper side is used (head, reports): no local checkout is made.
        base = Path("/nonexistent/mhafail-console")
        return ConfigRepository(name=repo, base=base, node=self.name, coordinator=self.coordinator)

    def config(self) -> dict[str, Any]:
        """Per repository: the published head, every node's report, drift."""
        live = {m.name for m in self.members()}
        repos = []
        for repo in sorted(self.coordinator.znodes.children("config") or []):
            try:
                status = self._repository(repo).status()
            except InvalidArgument:
                continue
            nodes = []
            for name, report in sorted(status.nodes.items()):
                nodes.append(
                    {
                        "node": name,
                        "sha": report.sha,
                        "state": report.state.value,
                        "target": report.target,
                        "error": report.error,
                        "mode": report.mode.value,
                        "time": report.time,
                        "live": name in live,
                        "drift": name in status.drift,
                    }
                )
            repos.append(
                {
                    "name": repo,
                    "head": None if status.head is None else attrs.asdict(status.head),
                    "nodes": nodes,
                    "drift": list(status.drift),
                    "silent": sorted(live - set(status.nodes)),
                }
            )
        return {"repos": repos}

    def config_pull(self, repo: str, node: str | None, user: str = "") -> dict[str, Any]:
        """Ask ``node`` (None: every live member) to apply ``repo``'s published head now."""
        self._repository(repo)  # checks the name
        args = {"repo": repo}
        if node:
            rid = self.sender(user).unicast(node, "config.pull", args, ttl=30.0, timeout=20.0)
        else:
            rid = self.sender(user).broadcast("config.pull", args, ttl=30.0, timeout=20.0)
        return {"via": "commands", "request": rid, "repo": repo}

    def config_rollback(self, repo: str, sha: str, user: str = "") -> dict[str, Any]:
        """Ask a live node to publish a new head whose tree is ``sha``'s (``config.rollback``).

        The rollback runs on a node, not in the console: the new commit must
        be in a repository that peers fetch from (a member's git daemon).
        The node is the first live member whose report for ``repo`` holds
        ``sha``, else the first live reporting member; it must offer the
        ``config.rollback`` command (the application registers it, see
        docs/console.md).

        Raises:
            ConsoleInvalidArgument: not a full sha, unknown repository, or
                no live member reports on it.
        """
        if not isinstance(sha, str) or not _SHA.fullmatch(sha):
            raise ConsoleInvalidArgument(f"invalid sha {sha!r}: expected 40 lower-case hex digits")
        repository = self._repository(repo)
        if repo not in (self.coordinator.znodes.children("config") or []):
            raise ConsoleInvalidArgument(f"unknown config repository {repo!r}")
        live = {m.name for m in self.members()}
        reports = {n: r for n, r in repository.reports().items() if n in live}
        if not reports:
            raise ConsoleInvalidArgument(f"no live member reports on config repository {repo!r}")
        holders = sorted(n for n, r in reports.items() if r.sha == sha)
        node = holders[0] if holders else sorted(reports)[0]
        rid = self.sender(user).unicast(
            node, "config.rollback", {"repo": repo, "sha": sha}, ttl=30.0, timeout=20.0
        )
        return {"via": "commands", "request": rid, "repo": repo, "node": node}

    # --- logs and audit ------------------------------------------------------------

    def logs(self) -> dict[str, Any]:
        """The sampled backlog per (node, log, subscriber) and its last hour."""
        return self.sampler.lag()

    def audit_query(self, text: str) -> dict[str, Any]:
        """Answer a CIDR query.

        Raises:
            ConsoleInvalidArgument: this console has no audit snapshots.
            QuerySyntaxError, UnknownSeries, AuditInvalidArgument: from the engine.
        """
        if self.audit is None:
            raise ConsoleInvalidArgument(
                "this console has no audit snapshots (start it with --audit-dir)"
            )
        return self.audit.run(text).to_json()

    # --- commands --------------------------------------------------------------

    def send(
        self, command: str, args: Any, target: Any, opts: Any, user: str = ""
    ) -> dict[str, Any]:
        """Send a registered command to one node, a subcluster or every live member.

        Args:
            command: the command name.
            args: a JSON object of arguments.
            target: ``{"all": true}``, ``{"node": N}`` or ``{"select": SELECTOR}``.
            opts: optional ``ttl`` and ``timeout`` (seconds).

        Raises:
            ConsoleInvalidArgument: a malformed target, arguments or option.
            CommandInvalidArgument: from the command client (bad name, node...).
        """
        if not isinstance(command, str):
            raise ConsoleInvalidArgument("'command' must be a string")
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ConsoleInvalidArgument("'args' must be a JSON object")
        kwargs: dict[str, Any] = {}
        for key, value in (opts or {}).items():
            if key not in _COMMAND_OPTS:
                raise ConsoleInvalidArgument(f"unknown option {key!r}: use ttl or timeout")
            low, high = _COMMAND_OPTS[key]
            if not isinstance(value, int | float) or not low <= value <= high:
                raise ConsoleInvalidArgument(f"{key} must be a number within [{low:g}, {high:g}]")
            kwargs[key] = float(value)
        if not isinstance(target, dict) or len(target) != 1:
            raise ConsoleInvalidArgument(
                '\'target\' must be one of {"all": true}, {"node": N}, {"select": S}'
            )
        ((kind, value),) = target.items()
        client = self.sender(user)
        if kind == "all" and value is True:
            rid = client.broadcast(command, args, **kwargs)
        elif kind == "node" and isinstance(value, str):
            rid = client.unicast(value, command, args, **kwargs)
        elif kind == "select" and isinstance(value, str):
            rid = client.subcluster(Selector.parse(value), command, args, **kwargs)
        else:
            raise ConsoleInvalidArgument(
                '\'target\' must be one of {"all": true}, {"node": N}, {"select": S}'
            )
        return {"request": rid}

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The newest ``limit`` requests in the cache, newest first."""
        summaries = self.client.list_requests()
        return [s.to_dict() for s in reversed(summaries[-limit:])]

    def request(self, rid: str) -> dict[str, Any]:
        """One request and its replies so far (any console, any sender)."""
        return self.client.get(rid).to_dict()

    def cancel(self, rid: str) -> dict[str, Any]:
        """Cancel a request; ``found`` is False when it does not exist."""
        return {"request": rid, "found": self.client.cancel(rid)}


def _vip_key(address: str) -> str:
    if not isinstance(address, str) or not address or len(address) > 64:
        raise InvalidVipSpec(f"invalid VIP address {address!r}")
    try:
        return str(vip_ops.Vip(address=address).address)
    except InvalidVipSpec:
        raise
    except ValueError as exc:
        raise InvalidVipSpec(f"invalid VIP address {address!r}: {exc}") from exc


def _get(doc: dict[str, Any] | None, key: str, kind: type) -> Any:
    if doc is None:
        return None
    value = doc.get(key)
    if kind is float and isinstance(value, int | float):
        return float(value)
    return value if isinstance(value, kind) else None
