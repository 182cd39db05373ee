"""The built-in commands a node can offer: register the ones whose parts it has.

==================  ========================================  =====================
command             what it does                              needs
==================  ========================================  =====================
``ping``            answers ``{"pong": node, "time": t}``     -
``status``          node info, session, lease, uptime         (membership)
``vip.show``        every VIP's owner and state               -
``vip.move``        move ``address`` to ``node`` (or here)    operator credentials
``vip.drain``       drain ``node`` (default: this node)       operator credentials
``vip.undrain``     undrain ``node`` (default: this node)     operator credentials
``config.status``   each repository's last apply outcome      config agents
``config.pull``     apply the published head now              config agents
``logs.status``     every local jlog subscriber's backlog     a JlogService
``audit.count``     a series' count for a key or CIDR         audit series
``spool.status``    this node's spool: messages, due, fence   a Spool
==================  ========================================  =====================

``vip.move``/``drain``/``undrain`` write operator-only znodes (docs/security.md):
a node running with the node role answers ``error`` (AccessDenied) and
changes nothing; in an open or single-identity cluster they work.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from mhafail.commands._registry import CommandContext
from mhafail.commands._schema import Arg, ArgKind
from mhafail.coordination import Membership

if TYPE_CHECKING:
    from mhafail.audit import AuditSeries
    from mhafail.commands._agent import CommandAgent
    from mhafail.config import ConfigAgent
    from mhafail.logs import JlogService
    from mhafail.spool import Spool

_NODE = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"


def register_builtins(
    agent: CommandAgent,
    *,
    membership: Membership | None = None,
    vip: bool = True,
    config_agents: Sequence[ConfigAgent] = (),
    jlog_service: JlogService | None = None,
    audit_series: Mapping[str, AuditSeries] | None = None,
    spool: Spool | None = None,
) -> list[str]:
    """Register the built-ins ``agent`` can serve; returns their names.

    Args:
        agent: the node's agent (not started yet).
        membership: adds the node's published info to ``status``.
        vip: register ``vip.show``, ``vip.move``, ``vip.drain``, ``vip.undrain``.
        config_agents: enables ``config.status`` and ``config.pull``.
        jlog_service: enables ``logs.status``.
        audit_series: series name -> series; enables ``audit.count``.
        spool: this node's open spool; enables ``spool.status``.
    """
    started = time.time()
    coordinator = agent.coordinator

    def ping(ctx: CommandContext, args: dict[str, Any]) -> Any:
        return {"pong": ctx.node, "time": time.time()}

    def status(ctx: CommandContext, args: dict[str, Any]) -> Any:
        info = None if membership is None else attrs.asdict(membership.info)
        return {
            "node": ctx.node,
            "info": info,
            "uptime": time.time() - started,
            "connection": coordinator.state.value,
            "session": f"{coordinator.session_id or 0:#x}",
            "lease_remaining": coordinator.lease_remaining(),
            "commands": [c.name for c in agent.commands()],
            "running": agent.stats.running,
        }

    names = ["ping", "status"]
    agent.register("ping", ping, help="answer pong")
    agent.register("status", status, help="node info, session, lease and uptime")
    if vip:
        names += _register_vip(agent)
    if config_agents:
        names += _register_config(agent, config_agents)
    if jlog_service is not None:
        service = jlog_service

        def logs_status(ctx: CommandContext, args: dict[str, Any]) -> Any:
            return [s.to_json() for s in service.status()]

        agent.register("logs.status", logs_status, help="local jlog subscribers and backlog")
        names.append("logs.status")
    if audit_series:
        series = dict(audit_series)

        def audit_count(ctx: CommandContext, args: dict[str, Any]) -> Any:
            found = series.get(args["series"])
            if found is None:
                raise LookupError(f"no audit series {args['series']!r} on {ctx.node}")
            return {"series": args["series"], "key": args["key"], "count": found.count(args["key"])}

        agent.register(
            "audit.count",
            audit_count,
            [Arg("series", pattern=r"[A-Za-z0-9_.-]{1,64}"), Arg("key", max_length=64)],
            help="an audit series' count for an address, CIDR or key",
        )
        names.append("audit.count")
    if spool is not None:
        names.append(_register_spool(agent, spool))
    return names


def _register_spool(agent: CommandAgent, spool: Spool) -> str:
    def spool_status(ctx: CommandContext, args: dict[str, Any]) -> Any:
        fence = spool.fence
        state = getattr(fence, "state", None)  # a SpoolLock says more than a bare fence
        return {
            "node": spool.node,
            "directory": str(spool.directory),
            "messages": len(spool),
            "due": len(spool.due(limit=args["limit"])),
            "due_limit": args["limit"],
            "token": fence.token,
            "fence_valid": fence.valid(),
            "lock": None if state is None else str(getattr(state, "value", state)),
            "problems": list(spool.problems[-20:]),
        }

    agent.register(
        "spool.status",
        spool_status,
        [Arg("limit", ArgKind.INT, required=False, default=1000, minimum=1, maximum=100000)],
        help="this node's spool: messages, messages due (up to limit), fence, problems",
    )
    return "spool.status"


def _register_vip(agent: CommandAgent) -> list[str]:
    from mhafail import vip as ops

    coordinator = agent.coordinator
    node_arg = Arg("node", required=False, pattern=_NODE, help="default: this node")

    def show(ctx: CommandContext, args: dict[str, Any]) -> Any:
        return [s.to_dict() for s in ops.show(coordinator)]

    def move(ctx: CommandContext, args: dict[str, Any]) -> Any:
        target = args["node"] or ctx.node
        ops.move(coordinator, args["address"], target)
        return {"address": args["address"], "moving_to": target}

    def drain(ctx: CommandContext, args: dict[str, Any]) -> Any:
        target = args["node"] or ctx.node
        ops.drain(coordinator, target)
        return {"drained": target}

    def undrain(ctx: CommandContext, args: dict[str, Any]) -> Any:
        target = args["node"] or ctx.node
        return {"undrained": target, "was_drained": ops.undrain(coordinator, target)}

    agent.register("vip.show", show, help="every VIP's owner and state")
    agent.register(
        "vip.move", move, [Arg("address", max_length=64), node_arg], help="move a VIP to a node"
    )
    agent.register("vip.drain", drain, [node_arg], help="drain a node of its VIPs")
    agent.register("vip.undrain", undrain, [node_arg], help="let a node take VIPs again")
    return ["vip.show", "vip.move", "vip.drain", "vip.undrain"]


def _register_config(agent: CommandAgent, agents: Sequence[ConfigAgent]) -> list[str]:
    by_repo = {a.repository.name: a for a in agents}
    repo_arg = Arg("repo", required=False, pattern=r"[A-Za-z0-9_.-]{1,64}", help="default: all")

    def chosen(args: dict[str, Any]) -> list[ConfigAgent]:
        if args["repo"] is None:
            return list(by_repo.values())
        found = by_repo.get(args["repo"])
        if found is None:
            raise LookupError(f"no config repository {args['repo']!r} on this node")
        return [found]

    def status(ctx: CommandContext, args: dict[str, Any]) -> Any:
        return {a.repository.name: _outcome(a) for a in chosen(args)}

    def pull(ctx: CommandContext, args: dict[str, Any]) -> Any:
        result = {}
        for config in chosen(args):
            before = config.applies
            config.kick()

            def settled(outcome: Any, agent: ConfigAgent = config, before: int = before) -> bool:
                return agent.applies > before or outcome.sha == outcome.target

            # On timeout the outcome below says where it stands.
            with contextlib.suppress(TimeoutError):
                config.wait_for(settled, max(0.0, ctx.remaining() - 0.1))
            result[config.repository.name] = _outcome(config)
        return result

    agent.register("config.status", status, [repo_arg], help="config apply state per repository")
    agent.register("config.pull", pull, [repo_arg], help="apply the published config head now")
    return ["config.status", "config.pull"]


def _outcome(agent: ConfigAgent) -> dict[str, Any] | None:
    outcome = agent.outcome
    if outcome is None:
        return None
    return {
        "state": outcome.state.value,
        "sha": outcome.sha,
        "target": outcome.target,
        "error": outcome.error,
    }
