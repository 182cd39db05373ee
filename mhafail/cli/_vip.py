"""``mhafail vip ...`` (operations) and ``mhafail agent`` (the VIP daemon)."""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import socket
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from mhafail.cli._output import add_json_flag, emit
from mhafail.cli._signals import STOP_CLOSE, stop_on_signals
from mhafail.cli._zkargs import add_zk_flags, add_zk_security_flags, coordinator_for, zk_security
from mhafail.errors import InvalidArgument


def register(subparsers: Any) -> None:
    """Add ``vip show|move|drain|undrain`` and ``agent``."""
    vip = subparsers.add_parser("vip", help="show and move VIPs (DuraVIP operations)")
    sub = vip.add_subparsers(dest="vip_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="every VIP with owner, state and candidates")
    add_zk_flags(show)
    add_json_flag(show)
    show.set_defaults(func=_show)
    move = sub.add_parser("move", help="move a VIP to a node (safe planned handover)")
    add_zk_flags(move)
    move.add_argument("address")
    move.add_argument("node", nargs="?", help="target node (omit with --clear)")
    move.add_argument("--clear", action="store_true", help="forget the move target instead")
    move.add_argument("--wait", type=float, default=0.0, help="wait up to S seconds for it")
    move.set_defaults(func=_move)
    for name, helptext in (
        ("drain", "a node gives up its VIPs and takes none (maintenance)"),
        ("undrain", "let a drained node take VIPs again"),
    ):
        p = sub.add_parser(name, help=helptext)
        add_zk_flags(p)
        p.add_argument("node")
        p.set_defaults(func=_drain if name == "drain" else _undrain)

    agent = subparsers.add_parser(
        "agent",
        help="run the VIP daemon: coordinator, membership and VIP manager",
        description="Run mhafail's VIP daemon in the foreground. SIGTERM hands every "
        "VIP over to the other nodes first, then exits.",
    )
    agent.add_argument("--config", type=Path, help="TOML file with the same keys as the flags")
    agent.add_argument("--zk", metavar="HOSTS")
    agent.add_argument("--cluster")
    agent.add_argument("--node")
    agent.add_argument(
        "--vip",
        action="append",
        default=[],
        metavar="SPEC",
        help="ADDRESS[/PREFIX][@IFACE][,prefer=NODE][,binding=NAME][,follow=NAME]",
    )
    agent.add_argument("--topology", action="append", default=[], metavar="CIDR=IFACE")
    agent.add_argument(
        "--session-timeout",
        type=float,
        help="seconds (default 3; with --beat, at least what the budget needs)",
    )
    agent.add_argument(
        "--zk-tick",
        type=float,
        metavar="SECONDS",
        help="the ZooKeeper servers' tickTime, if known: the lease then waits tickTime/2 "
        "for follower reports instead of assuming the largest tick (a later release, "
        "a shorter client outage when the owner is cut off)",
    )
    agent.add_argument("--rebalance", help="immediate | never | after:SECONDS (default after:30)")
    agent.add_argument("--claim-step", type=float)
    agent.add_argument(
        "--beat",
        type=float,
        metavar="SECONDS",
        help="detect a silent owner by its beats within this budget instead of by its "
        "session expiry (docs/vip.md, Beats); off by default. Without "
        "--session-timeout the session is then made long enough to outlast the budget",
    )
    agent.add_argument(
        "--lapse-holddown",
        type=float,
        metavar="SECONDS",
        help="how long a node stands aside after its lease lapsed while its session lived "
        "on (default 30; 0: never)",
    )
    agent.add_argument(
        "--plumber", default=None, help="netlink (default) or fake:PATH (tests, demos)"
    )
    agent.add_argument("--no-fence", action="store_true", help="run without the fence process")
    agent.add_argument(
        "--no-kernel-lifetimes",
        action="store_true",
        help="plumb without kernel address lifetimes (tests of the fence alone)",
    )
    agent.add_argument("--events", action="store_true", help="print JSON events on stdout")
    add_zk_security_flags(agent)
    agent.set_defaults(func=_agent)


def _show(args: argparse.Namespace) -> int:
    from mhafail.vip import show

    with coordinator_for(args) as c:
        rows = [s.to_dict() for s in show(c)]
    emit(args, {"cluster": args.cluster, "vips": rows}, _show_text)
    return 0


def _show_text(data: dict[str, Any]) -> str:
    if not data["vips"]:
        return f"cluster {data['cluster']}: no VIPs declared"
    lines = [
        f"{'VIP':<28} {'STATE':<9} {'OWNER':<12} {'SINCE':<20} {'PREFERRED':<10} {'NEXT':<12} LIVE"
    ]
    for v in data["vips"]:
        since = (
            datetime.datetime.fromtimestamp(v["since"]).strftime("%Y-%m-%d %H:%M:%S")
            if v["since"]
            else "-"
        )
        lines.append(
            f"{v['address']:<28} {v['state']:<9} {v['owner'] or '-':<12} {since:<20} "
            f"{v['preferred'] or '-':<10} {v.get('next_in_line') or '-':<12} "
            f"{','.join(v['declared_by']) or '-'}"
        )
    return "\n".join(lines)


def _move(args: argparse.Namespace) -> int:
    from mhafail.vip import clear_move, move, wait_owner

    with coordinator_for(args) as c:
        if args.clear:
            cleared = clear_move(c, args.address)
            print("move target cleared" if cleared else "no move target was set")
            return 0
        if not args.node:
            raise InvalidArgument("vip move needs a NODE (or --clear)")
        move(c, args.address, args.node)
        if args.wait > 0 and not wait_owner(c, args.address, args.node, args.wait):
            print(f"{args.address} not yet on {args.node} after {args.wait:g} s", file=sys.stderr)
            return 1
    print(f"{args.address} -> {args.node}")
    return 0


def _drain(args: argparse.Namespace) -> int:
    from mhafail.vip import drain

    with coordinator_for(args) as c:
        drain(c, args.node)
    print(f"{args.node} drained")
    return 0


def _undrain(args: argparse.Namespace) -> int:
    from mhafail.vip import undrain

    with coordinator_for(args) as c:
        was = undrain(c, args.node)
    print(f"{args.node} undrained" if was else f"{args.node} was not drained")
    return 0


def _load_config(path: Path | None) -> dict[str, Any]:
    """The agent's TOML config file, or {} without one."""
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument(f"--config {path}: {exc}") from exc


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """Merge the TOML config (if any) with the flags; flags win."""
    cfg = _load_config(args.config)
    known = {
        "zk",
        "cluster",
        "node",
        "vips",
        "topology",
        "session_timeout",
        "rebalance",
        "claim_step",
        "plumber",
        "fence",
        "kernel_lifetimes",
        "zk_tick",
        "lapse_holddown",
        "beat",
    }
    unknown = set(cfg) - known
    if unknown:
        raise InvalidArgument(f"--config {args.config}: unknown keys {sorted(unknown)}")
    merged = dict(cfg)
    for key in (
        "zk",
        "cluster",
        "node",
        "session_timeout",
        "rebalance",
        "claim_step",
        "plumber",
        "zk_tick",
        "lapse_holddown",
        "beat",
    ):
        value = getattr(args, key)
        if value is not None:
            merged[key] = value
    if args.vip:
        merged["vips"] = args.vip
    topology = dict(cfg.get("topology", {}))
    for entry in args.topology:
        cidr, sep, iface = entry.partition("=")
        if not sep:
            raise InvalidArgument(f"--topology {entry!r}: expected CIDR=IFACE")
        topology[cidr] = iface
    merged["topology"] = topology
    for flag, key in (("no_fence", "fence"), ("no_kernel_lifetimes", "kernel_lifetimes")):
        if getattr(args, flag):
            merged[key] = False
    for required in ("zk", "cluster", "node"):
        if not merged.get(required):
            raise InvalidArgument(f"agent needs --{required} (or '{required}' in --config)")
    if not merged.get("vips"):
        raise InvalidArgument("agent needs at least one --vip (or 'vips' in --config)")
    return merged


def _plumber(spec: str, node: str, vips: list[Any]) -> Any:
    """The plumber named by ``--plumber``: netlink, or a fake for tests and demos."""
    if spec == "netlink":
        from mhafail.vip import NetlinkPlumber

        return NetlinkPlumber()
    if spec.startswith("fake:"):
        from mhafail.testing import FakeNetwork, FakePlumber

        ifaces = {v.interface: [f"{v.network.network_address}/{v.network.prefixlen}"] for v in vips}
        return FakePlumber(FakeNetwork(path=spec[5:]), node, ifaces)
    raise InvalidArgument(f"--plumber {spec!r}: use netlink or fake:PATH")


def _session_timeout(s: dict[str, Any]) -> float:
    """The session timeout: as given, else 3 s, or with beats the shortest that
    outlasts the beat budget (``session_for``) if that is longer."""
    if s.get("session_timeout") is not None:
        return float(s["session_timeout"])
    if s.get("beat") is None:
        return 3.0
    from mhafail.vip import session_for

    tick = float(s["zk_tick"]) if s.get("zk_tick") is not None else None
    return max(3.0, session_for(float(s["beat"]), tick))


def _agent(args: argparse.Namespace) -> int:
    from mhafail.coordination import Coordinator, Membership, NodeInfo
    from mhafail.vip import (
        Beat,
        FenceProcess,
        RebalancePolicy,
        VipManager,
        earliest,
        parse_topology,
        parse_vip,
    )

    s = _settings(args)
    # The agent is a dedicated daemon whose threads hand events to each other
    # on the failover path; a 0.2 ms GIL switch interval (default 5 ms) keeps
    # each hand-off short. Libraries leave this to their application.
    sys.setswitchinterval(0.0002)
    topology = parse_topology(s["topology"])
    vips = [parse_vip(text, topology=topology) for text in s["vips"]]
    policy = RebalancePolicy.parse(str(s.get("rebalance", "after:30")))
    plumber_spec = str(s.get("plumber") or "netlink")
    plumber = _plumber(plumber_spec, s["node"], vips)

    # A second signal, or a stop still running after the grace period, ends
    # the process at once: the fence and the kernel lifetimes still remove
    # the addresses, so nothing stays plumbed without an agent.
    stop = stop_on_signals()

    def event(kind: str, **fields: Any) -> None:
        if args.events:
            line = json.dumps({"event": kind, "t": time.monotonic(), **fields}, sort_keys=True)
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    coordinator = Coordinator(
        hosts=s["zk"],
        cluster=s["cluster"],
        session_timeout=_session_timeout(s),
        server_tick=float(s["zk_tick"]) if s.get("zk_tick") is not None else None,
        close_timeout=STOP_CLOSE,
        **zk_security(args),
    ).start()
    info = NodeInfo(
        name=s["node"],
        interfaces=sorted({v.interface for v in vips}),
        roles=("vip",),
        started_at=time.time(),
        host=socket.gethostname(),
        pid=os.getpid(),
    )
    membership = Membership(coordinator=coordinator, info=info, stop_timeout=0.5).start()
    use_fence = plumber_spec == "netlink" and s.get("fence", True)
    beat = Beat(coordinator, s["node"], float(s["beat"])) if s.get("beat") is not None else None
    # Addresses are owned while the session lease and the beat lease both run.
    deadline = coordinator.lease_deadline
    if beat is not None:
        deadline = earliest(coordinator.lease_deadline, beat.deadline)
    budget = min(coordinator.effective_timeout, beat.budget if beat else math.inf)
    try:
        fence = (
            FenceProcess(
                deadline,
                interval=min(0.1, budget / 8),
                stall_limit=max(0.5, min(2.0, budget / 2)),
                lifetimes=bool(s.get("kernel_lifetimes", True)),
            )
            if use_fence
            else None
        )
    except Exception:
        membership.stop()
        coordinator.stop()
        raise
    manager = VipManager(
        coordinator=coordinator,
        membership=membership,
        plumber=plumber,
        vips=vips,
        rebalance=policy,
        claim_step=float(s.get("claim_step", 0.25)),
        lapse_holddown=float(s.get("lapse_holddown", 30.0)),
        beat=beat,
        fence=fence,
        validate_host=plumber_spec == "netlink",
        kernel_lifetimes=bool(s.get("kernel_lifetimes", True)),
        stop_timeout=2.0,  # with the rest, inside the signal grace period
    )
    manager.on_acquire(lambda v: event("acquire", address=v.key))
    manager.on_release(lambda v: event("release", address=v.key))
    manager.on_step(lambda step, at, count: event("step", step=step, at=at, count=count))
    try:
        manager.start()
    except Exception:
        if fence is not None:
            fence.close()
        membership.stop()
        coordinator.stop()
        raise
    event("ready", node=s["node"], pid=os.getpid())
    stop.wait()
    manager.stop(release=True)
    membership.stop()
    coordinator.stop()
    event("stopped", node=s["node"])
    return 0
