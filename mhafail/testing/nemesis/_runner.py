"""The nemesis: applies a fault schedule to a lab of agents and judges the record.

Faults run one at a time: apply, hold, heal, wait until every VIP has
exactly one attached, live owner again (or a bound passes), rest, next.
Safety is judged on the kernel-ordered record of the
:class:`OverlapMonitor` and on what the :class:`ArpObserver` heard; every
finding names the fault during which it began, so a failing seed points at
the fault that broke the invariant.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from mhafail.errors import TestingError
from mhafail.testing._cluster import EventProcess
from mhafail.testing._faults import pause_process, resume_process
from mhafail.testing._netns import NetnsLab
from mhafail.testing._zookeeper import ZooKeeperServer
from mhafail.testing.nemesis import _schedule as s
from mhafail.testing.nemesis._arp import ArpConflict, ArpObserver
from mhafail.testing.nemesis._inject import (
    CpuStarvation,
    fence_pid,
    run_quiet,
    starvation_unavailable,
)
from mhafail.testing.nemesis._monitor import Overlap, OverlapMonitor

logger = logging.getLogger(__name__)


@attrs.frozen
class FaultRecord:
    """What happened to one fault.

    Attributes:
        fault: the scheduled fault.
        target: the node or server it hit (``owner:...`` resolved).
        start: ``time.monotonic()`` when it was applied.
        healed: when it was healed (None if skipped).
        settled: when every VIP had one attached live owner again (None: not
            within the bound, or skipped).
        skipped: why the fault was not applied, or None.
        notes: anything worth knowing (a failed move, a slow restart).
        owners: VIP -> the node that owned it once settled (``""``: nobody).
        outage: the longest stretch, in seconds, during which some VIP was
            on no attached node between the fault's start and settling. A
            lower bound on what clients feel: a node whose agent is dead or
            frozen still answers ARP for an address it holds.
    """

    fault: s.Fault
    target: str
    start: float
    healed: float | None = None
    settled: float | None = None
    skipped: str | None = None
    notes: tuple[str, ...] = ()
    owners: tuple[tuple[str, str], ...] = ()
    outage: float = 0.0

    @property
    def recovery(self) -> float | None:
        """Seconds from healing to settled (None if it did not settle)."""
        if self.healed is None or self.settled is None:
            return None
        return max(0.0, self.settled - self.healed)


@attrs.frozen
class Finding:
    """A broken promise: ``kind`` is ``overlap``, ``two-macs``, ``monitor-lost``,
    ``unsettled``, ``restart-failed`` or ``agent-exited`` (an agent ended on
    its own; the nemesis restarts it); ``fault`` is the index of the fault
    during which it began (None: before the first fault)."""

    kind: str
    fault: int | None
    fault_kind: str | None
    text: str


@attrs.frozen
class NemesisReport:
    """The outcome of a nemesis run. ``ok`` is True when nothing was found."""

    seed: int
    kinds: tuple[str, ...]
    started: float
    ended: float
    faults: tuple[FaultRecord, ...]
    overlaps: tuple[Overlap, ...]
    conflicts: tuple[ArpConflict, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True when no overlap, no two MACs, no lost record and every VIP settled."""
        return not self.findings

    def summary(self) -> str:
        """A readable report: the faults with times, then every finding."""
        lines = [
            f"nemesis seed {self.seed}, kinds {','.join(self.kinds)}: {len(self.faults)} faults "
            f"in {self.ended - self.started:.1f} s, {len(self.findings)} findings"
        ]
        for r in self.faults:
            at = r.start - self.started
            if r.skipped:
                lines.append(f"  +{at:7.2f} {r.fault.describe()} -> skipped: {r.skipped}")
                continue
            rec = "not settled" if r.recovery is None else f"settled {r.recovery:.2f} s after heal"
            rec += f", outage {r.outage:.2f} s, owners {' '.join(n or '-' for _, n in r.owners)}"
            note = f" ({'; '.join(r.notes)})" if r.notes else ""
            lines.append(f"  +{at:7.2f} {r.fault.describe()} -> {r.target}: {rec}{note}")
        for f in self.findings:
            where = "before any fault" if f.fault is None else f"during #{f.fault} {f.fault_kind}"
            lines.append(f"  FINDING {f.kind} {where}: {f.text}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (times relative to the start)."""
        return {
            "seed": self.seed,
            "kinds": list(self.kinds),
            "ok": self.ok,
            "seconds": round(self.ended - self.started, 3),
            "faults": [
                {
                    "index": r.fault.index,
                    "kind": r.fault.kind,
                    "target": r.target,
                    "hold": r.fault.hold,
                    "at": round(r.start - self.started, 3),
                    "recovery": None if r.recovery is None else round(r.recovery, 3),
                    "outage": round(r.outage, 3),
                    "owners": dict(r.owners),
                    "skipped": r.skipped,
                    "notes": list(r.notes),
                }
                for r in self.faults
            ],
            "findings": [attrs.asdict(f) for f in self.findings],
        }

    def assert_safe(self) -> None:
        """Raise AssertionError with :meth:`summary` unless ``ok``."""
        if not self.ok:
            raise AssertionError(self.summary())


@attrs.define(kw_only=True, eq=False)
class Nemesis:
    """Applies faults to a lab of ``mhafail agent`` processes.

    Args:
        lab: the namespaces (agents run in ``lab[node]``).
        agents: node name -> the agent (started).
        monitor: the overlap monitor over those nodes and ``vips``.
        observer: the ARP observer (optional, but without it two MACs go unseen).
        vips: the VIP addresses.
        zk_hosts: ZooKeeper connection string, reachable from ``lab.lan``.
        cluster: the agents' cluster name (for ``vip move``/``drain``).
        zk_servers: the ZooKeeper servers (``zk-kill`` targets them).
        session_timeout: the agents' session timeout (for restart waits).
        settle_timeout: how long a VIP may stay without one owner after healing.
        log: where fault lines go (default: this module's logger).
    """

    lab: NetnsLab
    agents: dict[str, EventProcess]
    monitor: OverlapMonitor
    observer: ArpObserver | None
    vips: tuple[str, ...]
    zk_hosts: str
    cluster: str
    zk_servers: list[ZooKeeperServer] = attrs.field(factory=list)
    session_timeout: float = 1.0
    settle_timeout: float = 15.0
    log: Callable[[str], None] = logger.info
    _dead: set[str] = attrs.field(init=False, factory=set)
    _notes: list[str] = attrs.field(init=False, factory=list)
    _restart_failures: list[tuple[int, str, str]] = attrs.field(init=False, factory=list)
    _exits: list[tuple[int | None, str, str]] = attrs.field(init=False, factory=list)
    _last_index: int | None = attrs.field(init=False, default=None)
    _t0: float = attrs.field(init=False, default=0.0)

    # -- state ---------------------------------------------------------------

    def live(self) -> set[str]:
        """Nodes whose agent runs (and was not left dead by a failed restart)."""
        return {n for n, a in self.agents.items() if a.running and n not in self._dead}

    def owners(self, vip: str) -> set[str]:
        """Attached nodes holding ``vip`` now (from the monitor)."""
        return self.monitor.holders(vip)

    def settled(self) -> bool:
        """True when every VIP has exactly one attached holder and it is live."""
        live = self.live()
        for vip in self.vips:
            owners = self.owners(vip)
            if len(owners) != 1 or not owners <= live:
                return False
            if self.observer is not None and self.observer.answering(vip) not in owners:
                return False
        return True

    def wait_settled(self, timeout: float) -> float | None:
        """Block until :meth:`settled`; return when it happened (None: not in time)."""
        if self.monitor.wait_for(self.settled, timeout):
            return time.monotonic()
        return None

    # -- faults --------------------------------------------------------------

    def _resolve(self, fault: s.Fault) -> str:
        if fault.target.startswith("owner:"):
            owners = sorted(self.owners(fault.target.split(":", 1)[1]) & self.live())
            return owners[0] if owners else sorted(self.live() or self.agents)[0]
        return fault.target

    def _cli(self, *args: str) -> tuple[int, str]:
        argv = ["ip", "netns", "exec", self.lab.lan, sys.executable, "-m", "mhafail", "vip"]
        argv += [args[0], "--zk", self.zk_hosts, "--zk-open", "--cluster", self.cluster, *args[1:]]
        return run_quiet(argv, timeout=30)

    def _restart(self, index: int, node: str) -> None:
        agent = self.agents[node]
        last = ""
        for attempt in range(2):
            try:
                agent.start(timeout=max(10.0, 5 * self.session_timeout))
                self._dead.discard(node)
                if attempt:
                    self._notes.append(f"{node} started on the second try")
                return
            except TestingError as exc:
                last = str(exc)
                agent.kill()
                time.sleep(self.session_timeout)
        self._dead.add(node)
        self._restart_failures.append((index, node, last))

    def _apply(self, fault: s.Fault, node: str) -> str | None:
        """Apply, hold and heal ``fault`` on ``node``; return a skip reason or None."""
        handler = {
            s.KILL: self._kill,
            s.PAUSE: self._pause,
            s.PAUSE_FENCE: self._pause_fence,
            s.PAUSE_BOTH: self._pause_fence,
            s.PARTITION: self._partition,
            s.ZK_KILL: self._zk_kill,
            s.MOVE: self._move,
            s.DRAIN: self._drain,
            s.STARVE: self._starve,
        }[fault.kind]
        return handler(fault, node)

    def _kill(self, fault: s.Fault, node: str) -> str | None:
        self.agents[node].kill()
        time.sleep(fault.hold)
        self._restart(fault.index, node)
        return None

    def _pause(self, fault: s.Fault, node: str) -> str | None:
        agent = self.agents[node]
        agent.pause()
        try:
            time.sleep(fault.hold)
        finally:
            agent.resume()
        return None

    def _pause_fence(self, fault: s.Fault, node: str) -> str | None:
        agent = self.agents[node]
        fence = fence_pid(agent.pid)
        if fence is None:
            return "no fence process found (agent runs without one?)"
        together = fault.kind == s.PAUSE_BOTH
        pause_process(fence)
        try:
            if together:
                agent.pause()
            time.sleep(fault.hold)
        finally:
            with contextlib.suppress(ProcessLookupError):
                if together:
                    agent.resume()
                resume_process(fence)
        return None

    def _partition(self, fault: s.Fault, node: str) -> str | None:
        host = self.lab[node]
        host.link_down()
        try:
            time.sleep(fault.hold)
        finally:
            host.link_up()
        return None

    def _zk_kill(self, fault: s.Fault, node: str) -> str | None:
        server = self.zk_servers[int(node[2:])]
        server.kill()
        time.sleep(fault.hold)
        server.start(wait=True, timeout=60)
        return None

    def _move(self, fault: s.Fault, node: str) -> str | None:
        code, text = self._cli("move", fault.vip, node, "--wait", "10")
        if code != 0:
            self._notes.append(f"move exited {code}: {text}")
        return None

    def _drain(self, fault: s.Fault, node: str) -> str | None:
        code, text = self._cli("drain", node)
        if code != 0:
            self._notes.append(f"drain exited {code}: {text}")
        time.sleep(fault.hold)
        code, text = self._cli("undrain", node)
        if code != 0:
            self._notes.append(f"undrain exited {code}: {text}")
        return None

    def _starve(self, fault: s.Fault, node: str) -> str | None:
        why = starvation_unavailable()
        if why:
            return why
        agent = self.agents[node]
        fence = fence_pid(agent.pid)
        starve = CpuStarvation([agent.pid] + ([fence] if fence else []), fault.quota)
        try:
            time.sleep(fault.hold)
        finally:
            starve.end()
        return None

    def _skip_reason(self, fault: s.Fault, node: str) -> str | None:
        if fault.kind == s.ZK_KILL:
            if len(self.zk_servers) < 3:
                return "zk-kill needs a 3-server ensemble"
            return None
        if node not in self.agents:
            return f"unknown node {node!r}"
        if fault.kind in (s.KILL, s.PAUSE, s.PAUSE_FENCE, s.PAUSE_BOTH, s.STARVE) and (
            node not in self.live()
        ):
            return f"{node}'s agent is not running"
        return None

    def _check_exits(self) -> None:
        """Record and restart agents that ended without the nemesis killing them."""
        for name, agent in self.agents.items():
            if name in self._dead or agent.running:
                continue
            last = agent.events[-1] if agent.events else {}
            self._exits.append((self._last_index, name, f"last event {last}"))
            self.log(f"           {name}'s agent exited on its own; restarting it")
            self._restart(self._last_index or 0, name)

    def apply(self, fault: s.Fault) -> FaultRecord:
        """Apply one fault, heal it, wait for the VIPs to settle; return its record."""
        self._check_exits()
        self._last_index = fault.index
        node = self._resolve(fault)
        start = time.monotonic()
        self._notes = []
        self.log(f"+{start - self._t0:8.2f} {fault.describe()} -> {node}")
        skipped = self._skip_reason(fault, node)
        if skipped is None:
            skipped = self._apply(fault, node)
        if skipped is not None:
            self.log(f"           skipped: {skipped}")
            return FaultRecord(fault, node, start, skipped=skipped)
        healed = time.monotonic()
        settled = self.wait_settled(self.settle_timeout)
        if settled is None:
            self.log(f"           not settled {self.settle_timeout:g} s after healing")
        owners = tuple((v, ",".join(sorted(self.owners(v)))) for v in self.vips)
        return FaultRecord(
            fault, node, start, healed, settled, notes=tuple(self._notes), owners=owners,
            outage=self._outage(start, settled or time.monotonic()),
        )  # fmt: skip

    def _outage(self, start: float, end: float) -> float:
        longest = 0.0
        for vip in self.vips:
            for began, ended in self.monitor.gaps(vip):
                stop = end if ended is None else min(ended, end)
                longest = max(longest, stop - max(began, start))
        return longest

    def run(
        self,
        schedule: Iterable[s.Fault],
        *,
        seconds: float | None = None,
        count: int | None = None,
        seed: int = 0,
        kinds: tuple[str, ...] = (),
    ) -> NemesisReport:
        """Apply faults from ``schedule`` until ``seconds`` pass or ``count`` faults ran.

        Waits for the lab to settle first, and at the end waits up to
        ``settle_timeout`` for every VIP to have one live owner. Never leaves
        a process paused, a link down or a server stopped behind.
        """
        self._t0 = time.monotonic()
        if self.wait_settled(max(30.0, self.settle_timeout)) is None:
            raise TestingError(
                f"the lab did not settle before the first fault: owners "
                f"{ {v: sorted(self.owners(v)) for v in self.vips} }"
            )
        start = time.monotonic()
        self._t0 = start
        records: list[FaultRecord] = []
        for fault in schedule:
            if count is not None and len(records) >= count:
                break
            if seconds is not None and time.monotonic() - start >= seconds:
                break
            record = self.apply(fault)
            records.append(record)
            if record.skipped is None:
                time.sleep(fault.gap)
        self._check_exits()
        final = self.wait_settled(self.settle_timeout)
        end = time.monotonic()
        return self._judge(
            seed=seed, kinds=kinds, start=start, end=end, records=records, final=final
        )

    # -- verdict ---------------------------------------------------------------

    def _judge(
        self,
        *,
        seed: int,
        kinds: tuple[str, ...],
        start: float,
        end: float,
        records: list[FaultRecord],
        final: float | None,
    ) -> NemesisReport:
        def during(t: float) -> tuple[int | None, str | None]:
            hit: FaultRecord | None = None
            for r in records:
                if r.start <= t:
                    hit = r
            return (None, None) if hit is None else (hit.fault.index, hit.fault.kind)

        overlaps = tuple(self.monitor.overlaps())
        conflicts = tuple(self.observer.conflicts) if self.observer is not None else ()
        findings: list[Finding] = []
        for o in overlaps:
            length = "still open" if o.duration is None else f"{o.duration * 1000:.0f} ms"
            text = (
                f"{o.address} held by {', '.join(o.nodes)} at +{o.start - start:.2f} s "
                f"({length}, events {o.start_seq}..{o.end_seq})"
            )
            findings.append(Finding("overlap", *during(o.start), text))
        for group in _merge_conflicts(conflicts):
            first = group[0]
            text = (
                f"{first.address} answered by {', '.join(first.nodes)} for {len(group)} "
                f"probes from +{first.sent - start:.2f} s"
            )
            findings.append(Finding("two-macs", *during(first.sent), text))
        if self.monitor.lost:
            findings.append(Finding("monitor-lost", None, None, self.monitor.lost))
        kinds_of = {r.fault.index: r.fault.kind for r in records}
        for index, node, text in self._restart_failures:
            findings.append(
                Finding("restart-failed", index, kinds_of.get(index), f"{node}: {text[-300:]}")
            )
        for after, node, text in self._exits:
            kind = None if after is None else kinds_of.get(after)
            findings.append(Finding("agent-exited", after, kind, f"{node}: {text}"))
        if final is None:
            owners = {v: sorted(self.owners(v)) for v in self.vips}
            findings.append(
                Finding("unsettled", *during(end), f"VIPs without one live owner at the end: "
                        f"{owners}, live {sorted(self.live())}")
            )  # fmt: skip
        return NemesisReport(
            seed, kinds, start, end, tuple(records), overlaps, conflicts, tuple(findings)
        )

    def heal_all(self) -> None:
        """Undo whatever a crashed run may have left: resume, link up, restart servers."""
        for name, agent in self.agents.items():
            if agent.running:
                with contextlib.suppress(ProcessLookupError, TestingError):
                    os.killpg(agent.pid, signal.SIGCONT)
                    fence = fence_pid(agent.pid)
                    if fence:
                        resume_process(fence)
            with contextlib.suppress(TestingError):
                self.lab[name].link_up()
        for server in self.zk_servers:
            if not server.running:
                with contextlib.suppress(TestingError):
                    server.start(wait=False)


def _merge_conflicts(conflicts: Iterable[ArpConflict]) -> list[list[ArpConflict]]:
    """Group consecutive-probe conflicts of one address and node set into one finding."""
    groups: list[list[ArpConflict]] = []
    for c in sorted(conflicts, key=lambda c: (c.address, c.probe)):
        last = groups[-1][-1] if groups else None
        if (
            last is not None
            and last.address == c.address
            and last.nodes == c.nodes
            and c.probe - last.probe <= 3
        ):
            groups[-1].append(c)
        else:
            groups.append([c])
    return groups


def normal(address: str) -> str:
    """``198.18.0.200/24@eth0`` -> ``198.18.0.200``."""
    return str(ipaddress.ip_interface(address.split("@", 1)[0].split(",", 1)[0]).ip)
