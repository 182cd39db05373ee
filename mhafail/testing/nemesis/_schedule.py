"""The seeded fault schedule: which fault, on whom, for how long. Pure: no I/O.

The same seed, fault kinds and lab shape always give the same sequence of
faults, so a failing soak is replayed with its seed. Targets that depend on
the run (the current owner of a VIP) are named, not resolved, here:
``owner:198.18.0.200`` means "whoever owns that VIP when the fault starts".
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import attrs

from mhafail.errors import TestingError

KILL = "kill"  # SIGKILL the agent (its fence lives on), restart it after the hold
PAUSE = "pause"  # SIGSTOP the agent's process group (not its fence)
PAUSE_FENCE = "pause-fence"  # SIGSTOP the fence only
PAUSE_BOTH = "pause-both"  # SIGSTOP agent and fence together (a frozen container)
PARTITION = "partition"  # the node's bridge port down
ZK_KILL = "zk-kill"  # SIGKILL one ZooKeeper server, restart it after the hold
MOVE = "move"  # `mhafail vip move VIP NODE`
DRAIN = "drain"  # `mhafail vip drain NODE`, undrain after the hold
STARVE = "starve"  # agent, fence and a busy loop in a CPU cgroup with a tiny quota

ALL_KINDS = (KILL, PAUSE, PAUSE_FENCE, PAUSE_BOTH, PARTITION, ZK_KILL, MOVE, DRAIN, STARVE)
# Faults the design survives with no overlap at all. A frozen host
# (pause-both) is covered by kernel address lifetimes: their unit is one
# second (no overlap only from 2 s sessions up), and a thaw in the middle
# of the fence's lifetime renewal re-creates the address for about a
# millisecond (docs/vip.md, residual windows).
SAFE_KINDS = (KILL, PAUSE, PAUSE_FENCE, PARTITION, ZK_KILL, MOVE, DRAIN, STARVE)


@attrs.frozen
class Fault:
    """One fault of a schedule.

    Attributes:
        index: position in the schedule (0, 1, ...).
        kind: one of :data:`ALL_KINDS`.
        target: a node name, ``owner:<VIP>``, or ``zk<N>`` (a ZooKeeper server index).
        hold: seconds the fault lasts before it is healed (0 for move).
        gap: seconds of calm after the system settled, before the next fault.
        vip: the VIP a move concerns (``""`` otherwise).
        quota: for ``starve``, the CPU quota in microseconds per 100 ms.
    """

    index: int
    kind: str
    target: str
    hold: float
    gap: float
    vip: str = ""
    quota: int = 0

    def describe(self) -> str:
        """A one-line description (``#3 pause-both owner:198.18.0.200 for 2.1 s``)."""
        what = f"#{self.index} {self.kind} {self.target}"
        if self.kind == MOVE:
            return f"{what} {self.vip}"
        extra = f" quota {self.quota} us/100 ms" if self.kind == STARVE else ""
        return f"{what} for {self.hold:.2f} s{extra}"


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"kill,pause"`` -> ``("kill", "pause")``; ``"all"`` -> every kind.

    Raises:
        TestingError: an unknown kind (the message lists the known ones).
    """
    if text.strip() == "all":
        return ALL_KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in ALL_KINDS]
    if unknown or not kinds:
        raise TestingError(
            f"unknown fault kinds {unknown or [text]}; known: {', '.join(ALL_KINDS)}"
        )
    return kinds


@attrs.frozen
class FaultSchedule:
    """An endless, seeded sequence of faults for a lab.

    Args:
        seed: the seed; the same arguments give the same faults.
        kinds: the fault kinds to draw from (equally likely).
        nodes: node names.
        vips: the VIPs (addresses).
        zk_servers: how many ZooKeeper servers (``zk-kill`` needs 3 or more).
        session_timeout: the agents' session timeout T; holds are drawn in
            units of T so that some faults outlast the lease and some do not.
    """

    seed: int
    kinds: tuple[str, ...]
    nodes: tuple[str, ...]
    vips: tuple[str, ...]
    zk_servers: int = 3
    session_timeout: float = 1.0

    def __attrs_post_init__(self) -> None:
        parse_kinds(",".join(self.kinds))
        if len(self.nodes) < 2 or not self.vips:
            raise TestingError("a fault schedule needs two or more nodes and a VIP")

    def __iter__(self) -> Iterator[Fault]:
        rng = random.Random(self.seed)  # noqa: S311 - reproducible test faults, not secrets
        kinds = [k for k in self.kinds if k != ZK_KILL or self.zk_servers >= 3]
        if not kinds:
            raise TestingError("no fault kind applies to this lab (zk-kill needs 3 servers)")
        index = 0
        t = self.session_timeout
        while True:
            kind = rng.choice(kinds)
            vip = rng.choice(self.vips)
            node = rng.choice(self.nodes)
            # Mostly hit the owner: that is where a second owner can come from.
            target = f"owner:{vip}" if rng.random() < 0.7 else node
            hold = round(rng.uniform(0.3, 3.0) * t, 3)
            gap = round(rng.uniform(0.2, 1.0) * t, 3)
            quota = 0
            if kind == ZK_KILL:
                target = f"zk{rng.randrange(self.zk_servers)}"
            elif kind == MOVE:
                target, hold = node, 0.0
            elif kind == STARVE:
                quota = rng.choice((1500, 3000, 6000))
            yield Fault(index, kind, target, hold, gap, vip, quota)
            index += 1

    def take(self, count: int) -> list[Fault]:
        """The first ``count`` faults."""
        faults: list[Fault] = []
        for fault in self:
            if len(faults) == count:
                break
            faults.append(fault)
        return faults
