"""The nemesis kit's pure parts: the seeded schedule, the overlap and gap arithmetic,
the report, the packet builders, and (root) fence discovery and CPU starvation."""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from pathlib import Path

import pytest

from mhafail.errors import TestingError
from mhafail.testing._children import reap, spawn
from mhafail.testing.nemesis import (
    ALL_KINDS,
    SAFE_KINDS,
    CpuStarvation,
    Fault,
    FaultRecord,
    FaultSchedule,
    Finding,
    NemesisReport,
    NetEvent,
    fence_pid,
    find_overlaps,
    parse_kinds,
    starvation_unavailable,
)
from mhafail.testing.nemesis._arp import _checksum, arp_request, neighbour_solicitation
from mhafail.testing.nemesis._monitor import find_gaps

NODES = ("h1", "h2", "h3")
VIPS = ("198.18.0.200", "2001:db8::200")


def schedule(seed: int, kinds: tuple[str, ...] = ALL_KINDS, zk: int = 3) -> FaultSchedule:
    return FaultSchedule(seed=seed, kinds=kinds, nodes=NODES, vips=VIPS, zk_servers=zk)


def test_same_seed_gives_the_same_faults() -> None:
    """Two schedules with one seed draw identical faults; another seed draws others."""
    assert schedule(7).take(50) == schedule(7).take(50)
    assert schedule(7).take(50) != schedule(8).take(50)


def test_schedule_draws_only_the_given_kinds_with_valid_targets() -> None:
    """Kinds, targets, holds and quotas stay within what the runner can apply."""
    faults = schedule(3, ("pause", "zk-kill", "move", "starve")).take(300)
    assert {f.kind for f in faults} == {"pause", "zk-kill", "move", "starve"}
    assert [f.index for f in faults] == list(range(300))
    for f in faults:
        if f.kind == "zk-kill":
            assert f.target in ("zk0", "zk1", "zk2")
        elif f.kind == "move":
            assert f.target in NODES and f.vip in VIPS and f.hold == 0
        else:
            assert f.target in NODES or f.target in {f"owner:{v}" for v in VIPS}
            assert 0.3 <= f.hold <= 3.0
        if f.kind == "starve":
            assert f.quota in (1500, 3000, 6000)
        assert f.describe().startswith(f"#{f.index} {f.kind}")


def test_schedule_without_an_ensemble_never_kills_zookeeper() -> None:
    """With one ZooKeeper server zk-kill is left out; alone it is refused clearly."""
    assert "zk-kill" not in {f.kind for f in schedule(1, zk=1).take(200)}
    with pytest.raises(TestingError, match="zk-kill needs 3"):
        schedule(1, ("zk-kill",), zk=1).take(1)


def test_bad_kinds_and_tiny_labs_are_refused() -> None:
    """An unknown fault kind or a one-node lab is an error naming the problem."""
    with pytest.raises(TestingError, match="unknown fault kinds \\['explode'\\]"):
        parse_kinds("kill,explode")
    with pytest.raises(TestingError, match="two or more nodes"):
        FaultSchedule(seed=1, kinds=("kill",), nodes=("h1",), vips=VIPS)
    assert parse_kinds("all") == ALL_KINDS
    assert set(SAFE_KINDS) < set(ALL_KINDS)


def ev(seq: int, node: str, op: str, address: str = "198.18.0.200") -> NetEvent:
    return NetEvent(seq, float(seq), node, op, address if op in ("add", "del") else "")


def test_overlaps_follow_the_order_and_ignore_detached_holders() -> None:
    """Two attached holders make an overlap; a detached one does not, until it attaches."""
    events = [
        ev(0, "h1", "add"),
        ev(1, "h1", "detach"),
        ev(2, "h2", "add"),  # h1 is cut off: fine
        ev(3, "h1", "attach"),  # h1 is back with the VIP: overlap from here
        ev(4, "h1", "del"),
        ev(5, "h3", "add"),  # a second overlap, left open
    ]
    overlaps = find_overlaps(events, "198.18.0.200")
    assert [(o.nodes, o.start_seq, o.end_seq) for o in overlaps] == [
        (("h1", "h2"), 3, 4),
        (("h2", "h3"), 5, None),
    ]
    assert overlaps[0].duration == 1.0 and overlaps[1].duration is None
    assert find_overlaps(events, "198.18.0.201") == []


def test_overlap_needs_both_copies_gone_and_other_addresses_do_not_count() -> None:
    """One node holding a VIP on two interfaces holds it until both copies go."""
    events = [
        NetEvent(0, 0.0, "h1", "add", "198.18.0.200", (2, 32)),
        NetEvent(1, 1.0, "h1", "add", "198.18.0.200", (3, 32)),
        NetEvent(2, 2.0, "h1", "del", "198.18.0.200", (2, 32)),
        NetEvent(3, 3.0, "h2", "add", "198.18.0.200", (2, 32)),
        NetEvent(4, 4.0, "h3", "add", "198.18.0.9", (2, 32)),
        NetEvent(5, 5.0, "h1", "del", "198.18.0.200", (3, 32)),
    ]
    assert [(o.nodes, o.start_seq, o.end_seq) for o in find_overlaps(events, "198.18.0.200")] == [
        (("h1", "h2"), 3, 5)
    ]


def test_gaps_count_only_after_the_first_owner() -> None:
    """An outage is a stretch with no attached owner after one existed."""
    events = [ev(0, "h1", "add"), ev(1, "h1", "detach"), ev(3, "h2", "add"), ev(4, "h2", "del")]
    assert find_gaps(events, "198.18.0.200") == [(1.0, 3.0), (4.0, None)]
    assert find_gaps([ev(0, "h1", "detach")], "198.18.0.200") == []


def test_report_summary_names_the_fault_of_each_finding() -> None:
    """A report with findings is not ok, and its summary and assertion name fault and seed."""
    fault = Fault(2, "pause-both", "owner:198.18.0.200", 2.0, 0.5, "198.18.0.200")
    record = FaultRecord(fault, "h1", 11.0, 13.0, 14.5, owners=(("198.18.0.200", "h2"),))
    finding = Finding("overlap", 2, "pause-both", "198.18.0.200 held by h1, h2")
    report = NemesisReport(42, ("pause-both",), 10.0, 20.0, (record,), (), (), (finding,))
    assert not report.ok
    text = report.summary()
    assert "seed 42" in text and "+   1.00 #2 pause-both" in text
    assert "settled 1.50 s after heal" in text and "during #2 pause-both" in text
    with pytest.raises(AssertionError, match="FINDING overlap"):
        report.assert_safe()
    data = report.to_dict()
    assert data["faults"][0]["owners"] == {"198.18.0.200": "h2"}
    assert data["findings"][0]["fault_kind"] == "pause-both"


def test_probe_frames_are_well_formed() -> None:
    """The ARP request and the neighbour solicitation carry the probe MAC and a valid checksum."""
    mac = bytes.fromhex("0218fe000007")
    arp = arp_request(mac, "198.18.0.254", "198.18.0.200")
    assert arp[:6] == b"\xff" * 6 and arp[6:12] == mac and arp[22:28] == mac
    assert arp[38:42] == ipaddress.IPv4Address("198.18.0.200").packed
    ns = neighbour_solicitation(mac, "2001:db8::fe", "2001:db8::200")
    assert ns[:6] == bytes.fromhex("3333ff000200") and ns[20] == 58 and ns[21] == 255
    body = ns[54:]
    assert body[0] == 135 and body[-6:] == mac
    pseudo = ns[22:54] + len(body).to_bytes(4, "big") + bytes(3) + b"\x3a"
    assert _checksum(pseudo + body) == 0


@pytest.mark.root
def test_fence_pid_finds_a_child_in_its_own_session(tmp_path: Path) -> None:
    """fence_pid finds the child running mhafail.vip.fence even in another session."""
    script = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', "
        "'mhafail.vip.fence'], start_new_session=True)\n"
        "time.sleep(30)\n"
    )
    parent = spawn([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 5
        while fence_pid(parent.pid) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        child = fence_pid(parent.pid)
        assert child is not None and os.getsid(child) == child
    finally:
        if (child := fence_pid(parent.pid)) is not None:
            os.kill(child, 9)
        reap(parent)


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return sum(int(x) for x in stat[stat.rfind(")") + 2 :].split()[11:13])


@pytest.mark.root
def test_cpu_starvation_throttles_and_restores() -> None:
    """A process in the starvation cgroup gets a sliver of CPU and is put back afterwards."""
    why = starvation_unavailable()
    if why:
        pytest.skip(why)
    victim = spawn([sys.executable, "-c", "while True: pass"])
    try:
        before = Path(f"/proc/{victim.pid}/cgroup").read_text()
        starve = CpuStarvation([victim.pid], 1500)
        try:
            assert starve.path.name in Path(f"/proc/{victim.pid}/cgroup").read_text()
            first = cpu_ticks(victim.pid)
            time.sleep(1.0)
            used = (cpu_ticks(victim.pid) - first) / os.sysconf("SC_CLK_TCK")
        finally:
            starve.end()
        assert used < 0.2  # 1.5 ms per 100 ms, shared with the busy loop: about 15 ms
        assert Path(f"/proc/{victim.pid}/cgroup").read_text() == before
        assert not starve.path.exists()
    finally:
        reap(victim)
