"""The fence process and the kernel's re-checks, against real processes and addresses.

The fence runs as it does under the agent (``python -I -m mhafail.vip.fence``),
inside a network namespace of its own (root), fed by hand or by
``FenceProcess``; the kernel tests drive ``Kernel`` with a plumber that
stalls where a paused agent would.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from mhafail.errors import PlumbingError
from mhafail.testing import FakeNetwork, FakePlumber, Host, NetnsLab
from mhafail.vip import FenceProcess, Vip, parse_vip
from mhafail.vip._kernel import Kernel

VIP = "198.18.0.200"


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


@pytest.fixture
def host() -> Iterator[Host]:
    with NetnsLab(hosts=1, ipv6=False) as lab:
        yield lab["h1"]


def present(host: Host) -> bool:
    return any(a.startswith(f"{VIP}/") for a in host.addresses())


def plumb(host: Host) -> None:
    host.run(["ip", "addr", "add", f"{VIP}/32", "dev", "eth0", "label", "eth0:mha"])


@pytest.fixture
def fence(host: Host) -> Iterator[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-I", "-m", "mhafail.vip.fence", "--lifetimes"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", host.netns, *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().startswith(b"ready ")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def send(proc: subprocess.Popen[bytes], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()


@pytest.mark.root
def test_fence_removes_at_once_an_address_it_is_told_about_after_the_deadline(
    host: Host, fence: subprocess.Popen[bytes]
) -> None:
    """A manage notice arriving after its deadline removes the address at once, and again."""
    plumb(host)
    send(fence, f"manage eth0 {VIP} {time.monotonic() - 1:.6f}")
    wait_for(lambda: not present(host), 1.0)
    # An agent that stalled after its check and plumbs now finds it gone again.
    plumb(host)
    added = time.monotonic()
    wait_for(lambda: not present(host), 1.0)
    print(f"re-added address removed after {time.monotonic() - added:.3f} s")


@pytest.mark.root
def test_fence_removes_managed_addresses_at_the_deadline_and_keeps_them_off(
    host: Host, fence: subprocess.Popen[bytes]
) -> None:
    """At the deadline managed addresses go; one re-added later goes too (no one-shot latch)."""
    plumb(host)
    send(fence, f"manage eth0 {VIP} {time.monotonic() + 0.3:.6f}")
    time.sleep(0.1)
    assert present(host)
    wait_for(lambda: not present(host), 2.0)
    time.sleep(0.2)
    plumb(host)
    wait_for(lambda: not present(host), 1.0)
    # A new deadline ends the enforcement: the agent holds a lease again.
    send(fence, f"deadline {time.monotonic() + 5:.6f}")
    time.sleep(0.1)
    plumb(host)
    time.sleep(0.2)
    assert present(host)


@pytest.mark.root
def test_fence_removes_what_it_manages_on_sigterm(
    host: Host, fence: subprocess.Popen[bytes]
) -> None:
    """SIGTERM (a supervisor stopping the service) removes managed addresses before exit."""
    plumb(host)
    send(fence, f"manage eth0 {VIP} {time.monotonic() + 60:.6f}")
    time.sleep(0.1)
    assert present(host)
    fence.send_signal(signal.SIGTERM)
    assert fence.wait(5) == 0
    assert not present(host)


@pytest.mark.root
def test_fence_ignores_malformed_lines_and_keeps_working(
    host: Host, fence: subprocess.Popen[bytes]
) -> None:
    """Garbage on the fence's input is logged and skipped; the fence still enforces."""
    plumb(host)
    for junk in ["manage eth0 not-an-address 1", "deadline x", "x" * 5000, "\x00\x01"]:
        send(fence, junk)
    send(fence, f"manage eth0 {VIP} {time.monotonic() + 0.2:.6f}")
    wait_for(lambda: not present(host), 2.0)
    assert fence.poll() is None


@pytest.mark.root
def test_fence_process_runs_isolated_from_the_working_directory(
    tmp_path: os.PathLike[str],
) -> None:
    """A planted mhafail/vip/fence.py in the agent's directory is never what runs as the fence."""
    planted = os.path.join(tmp_path, "mhafail", "vip")
    os.makedirs(planted)
    marker = os.path.join(tmp_path, "pwned")
    for d in (os.path.join(tmp_path, "mhafail"), planted):
        with open(os.path.join(d, "__init__.py"), "w") as f:
            f.write("")
    with open(os.path.join(planted, "fence.py"), "w") as f:
        f.write(f"open({marker!r}, 'w').write('ran')\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        fence = FenceProcess(lambda: None)
        fence.close()
    finally:
        os.chdir(cwd)
    assert not os.path.exists(marker)


def test_fence_start_failure_is_one_clear_error() -> None:
    """A fence that cannot start gives a PlumbingError naming why, not a traceback."""
    command = [
        sys.executable,
        "-c",
        "import sys; sys.stderr.write('mhafail-fence: cannot start: no netlink\\n'); sys.exit(2)",
    ]
    with pytest.raises(PlumbingError, match="could not start: cannot start: no netlink"):
        FenceProcess(lambda: None, command=command)


def test_writes_to_a_stopped_fence_never_block_and_it_is_reported() -> None:
    """A SIGSTOPped fence fills no pipe the agent waits on; it is declared failed and refused."""
    failures: list[str] = []
    fence = FenceProcess(lambda: time.monotonic() + 5, interval=0.01, stall_limit=0.5)
    fence.on_failure(failures.append)
    vip = parse_vip(f"{VIP}/24@eth0")
    os.kill(fence.pid, signal.SIGSTOP)
    try:
        done = threading.Event()

        def hammer() -> None:
            for _ in range(20000):  # far more than a pipe buffer holds
                fence.manage(vip)
                fence.unmanage(vip)
            done.set()

        threading.Thread(target=hammer, daemon=True).start()
        assert done.wait(30), "a write to the stopped fence blocked"
        wait_for(lambda: bool(failures), 5)
        assert "silent" in failures[0]
        assert not fence.healthy()
        assert fence.manage(vip) is False
        fence.restart()
        assert fence.healthy()
        assert fence.manage(vip) is True
    finally:
        fence.close()


def test_a_dead_fence_is_reported_and_refused_until_restarted() -> None:
    """A fence that exits is reported through on_failure; manage refuses until restart."""
    failures: list[str] = []
    fence = FenceProcess(lambda: time.monotonic() + 5, interval=0.01)
    fence.on_failure(failures.append)
    try:
        os.kill(fence.pid, signal.SIGKILL)
        wait_for(lambda: bool(failures), 5)
        assert "exited" in failures[0] or "closed" in failures[0]
        assert fence.manage(parse_vip(f"{VIP}/24@eth0")) is False
        fence.restart()
        assert fence.healthy()
    finally:
        fence.close()


class StallingPlumber(FakePlumber):
    """A fake plumber whose add stalls, as a paused agent would, while the lease runs out."""

    def __init__(self, network: FakeNetwork, lease: list[bool]) -> None:
        super().__init__(network, "n1", {"eth0": ["198.18.0.1/24"]})
        self.lease = lease

    def ensure_present(self, vip: Vip, valid_for: float | None = None) -> bool:
        added = super().ensure_present(vip, valid_for)
        self.lease[0] = False  # the process stalled here past its lease
        return added


def test_add_that_stalls_past_the_lease_is_undone_and_never_announced() -> None:
    """Kernel.add re-checks the lease after plumbing: a stalled add is removed, not announced."""
    network = FakeNetwork()
    lease = [True]
    plumber = StallingPlumber(network, lease)
    kernel = Kernel(plumber, lambda: lease[0], announce_schedule=(0.0, 0.05))
    try:
        vip = parse_vip(f"{VIP}/24@eth0")
        assert kernel.add(vip) is False
        assert network.holders(VIP) == frozenset()
        assert VIP not in kernel.plumbed()
        time.sleep(0.2)
        assert network.announcements == []
    finally:
        kernel.stop()


def test_announcements_check_the_lease_immediately_before_sending() -> None:
    """Once the lease is gone no scheduled announcement goes out, even for a plumbed VIP."""
    network = FakeNetwork()
    lease = [True]
    plumber = FakePlumber(network, "n1", {"eth0": ["198.18.0.1/24"]})
    kernel = Kernel(plumber, lambda: lease[0], announce_schedule=(0.0, 0.1, 0.2))
    try:
        assert kernel.add(parse_vip(f"{VIP}/24@eth0"))
        assert len(network.announcements) == 1
        lease[0] = False
        time.sleep(0.4)
        assert len(network.announcements) == 1
    finally:
        kernel.stop()


def leased_kernel(ahead: float, renew_interval: float) -> tuple[FakeNetwork, list[float], Kernel]:
    """A Kernel on a fake host whose lease runs ``ahead`` seconds (tests move ``deadline[0]``)."""
    network = FakeNetwork()
    deadline = [time.monotonic() + ahead]
    kernel = Kernel(
        FakePlumber(network, "n1", {"eth0": ["198.18.0.1/24"]}),
        lambda: time.monotonic() < deadline[0],
        lease_deadline=lambda: deadline[0],
        renew_interval=renew_interval,
        announce_schedule=(),
    )
    return network, deadline, kernel


def test_addresses_carry_a_lifetime_renewed_from_the_lease() -> None:
    """With a lease deadline the address expires with the lease unless renewed."""
    network, deadline, kernel = leased_kernel(0.5, renew_interval=0.05)
    try:
        assert kernel.add(parse_vip(f"{VIP}/24@eth0"))
        for _ in range(10):  # the lease keeps being renewed: the address stays
            deadline[0] = time.monotonic() + 0.5
            time.sleep(0.1)
        assert network.holders(VIP) == {"n1"}
        frozen = time.monotonic()
        kernel.stop()  # nothing renews any more, as in a frozen process
        wait_for(lambda: network.holders(VIP) == frozenset(), 2)
        # Kernel lifetimes are whole seconds (at least 1): the last renewal
        # gave 1 s, from at most one renewal interval before the freeze.
        assert time.monotonic() - frozen < 1.1
    finally:
        kernel.stop()


def test_fake_plumber_keeps_whole_second_lifetimes_like_the_kernel() -> None:
    """A lease shorter than the renewal interval must not make the address flap.

    With a 0.5 s session the lease runs about 0.2 s ahead, less than the
    0.25 s between renewals; the kernel rounds every lifetime to whole
    seconds (at least 1), so a real address stays. The fake used the raw
    0.2 s and dropped it between renewals: an agent on the fake plumber
    lost its VIP a second after taking it ("announce ...: not plumbed").
    """
    network, deadline, kernel = leased_kernel(0.2, renew_interval=0.25)
    try:
        assert kernel.add(parse_vip(f"{VIP}/24@eth0"))
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            deadline[0] = time.monotonic() + 0.2
            assert network.holders(VIP) == {"n1"}
            time.sleep(0.02)
    finally:
        kernel.stop()


@pytest.mark.root
def test_fence_renews_lifetimes_of_present_addresses_and_never_recreates_one(
    host: Host, fence: subprocess.Popen[bytes]
) -> None:
    """Renewal gives a present address the lease's lifetime; a removed one stays removed."""
    send(fence, f"manage eth0 {VIP} {time.monotonic() + 5:.6f}")
    time.sleep(0.6)  # two renewal rounds
    assert not present(host), "the fence must never add an address"
    plumb(host)
    finite = re.compile(rf"{re.escape(VIP)}/32 .*valid_lft [1-4]sec")
    wait_for(lambda: bool(finite.search(host.run(["ip", "-o", "addr", "show"]).stdout)), 2)
    host.run(["ip", "addr", "del", f"{VIP}/32", "dev", "eth0"])
    time.sleep(0.6)
    assert not present(host)


@pytest.mark.root
def test_fence_runs_real_time_with_locked_memory(fence: subprocess.Popen[bytes]) -> None:
    """As root the fence gets SCHED_FIFO and locked memory while it works."""
    # ``ip netns exec`` execs the fence: the child's pid is the fence's.
    assert os.sched_getscheduler(fence.pid) == os.SCHED_FIFO
    with open(f"/proc/{fence.pid}/status") as status:
        locked_kb = next(int(line.split()[1]) for line in status if line.startswith("VmLck:"))
    assert locked_kb > 0


@pytest.mark.root
def test_fence_leaves_real_time_before_its_teardown() -> None:
    """Exit paths drop SCHED_FIFO first.

    Tearing down the fence's locked 45 MiB took 50-100 ms of CPU; at
    real-time priority it held a CPU away from the survivors taking over
    the VIPs it had just handed back (graceful handover 82 ms median
    instead of 40 on two cores).
    """
    code = (
        "import os\n"
        "from mhafail.vip import fence\n"
        "rt, locked = fence._realtime()\n"
        "assert rt and locked, (rt, locked)\n"
        "assert os.sched_getscheduler(0) == os.SCHED_FIFO\n"
        "fence._leave_realtime()\n"
        "print(os.sched_getscheduler(0) == os.SCHED_OTHER)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_fence_renews_only_lifetimes_that_may_end_soon() -> None:
    """Each address is renewed when its kernel lifetime nears its end, not every look.

    With a hundred VIPs per node the fence renewed every address four times
    a second at real-time priority, most of a CPU, and a mass takeover ran
    1.8 s slower behind it.
    """
    from mhafail.vip import fence as fence_module

    clock = [100.0]
    calls: list[list[str]] = []

    def renew(vips: list[Vip], deadline: float) -> dict[str, float]:
        calls.append([v.key for v in vips])
        return {v.key: float(max(1, int(deadline - clock[0]))) for v in vips}

    state = fence_module.Fence(lambda _vip: True, clock=lambda: clock[0], renew=renew)
    for i in range(100):
        state.handle(f"manage eth0 198.18.1.{i} {clock[0] + 2.8:.6f}")
    looks = 0
    end = clock[0] + 5.0
    while clock[0] < end:
        state.handle(f"deadline {clock[0] + 2.8:.6f}")  # the agent keeps the lease fresh
        # Never late: no lifetime may run out while the lease holds.
        assert min(state.kernel_end.values()) > clock[0]
        if state.renew_due():
            state.renew_lifetimes()
            looks += 1
        clock[0] += fence_module.RENEW_INTERVAL
    assert looks == 20  # the fence looked every interval...
    # ...but renewed each address only when its 2 s lifetime neared its end.
    per_address = sum(len(c) for c in calls) / 100
    assert 2 <= per_address <= 5, per_address


def test_an_address_a_renewal_added_back_is_removed_once_unmanaged() -> None:
    """A renewal that checked an address present and replaced it after the agent removed it
    (adding it back) is undone when the agent's unmanage arrives; an address unmanaged and
    managed again in the same batch is left alone."""
    from mhafail.vip import fence as fence_module

    kernel: set[str] = set()

    def remove(vip: Vip) -> bool:
        present = vip.key in kernel
        kernel.discard(vip.key)
        return present

    def renew(vips: list[Vip], deadline: float) -> dict[str, float]:
        kernel.update(v.key for v in vips)  # a replace: adds what is missing
        return {v.key: 1.0 for v in vips}

    clock = [100.0]
    state = fence_module.Fence(remove, clock=lambda: clock[0], renew=renew)
    for address in ("198.18.1.1", "198.18.1.2"):
        state.handle(f"manage eth0 {address} 102.000000")
        kernel.add(address)
    clock[0] += 0.5  # their first lifetimes near their end: renewal due
    kernel.clear()  # the agent removed both ...
    state.renew_lifetimes()  # ... while a renewal that had seen them present replaced them
    assert kernel == {"198.18.1.1", "198.18.1.2"}
    # The agent's messages arrive: one address let go, the other plumbed again at once.
    for line in (
        "unmanage eth0 198.18.1.1",
        "unmanage eth0 198.18.1.2",
        "manage eth0 198.18.1.2 102.000000",
    ):
        state.handle(line)
    state.settle()
    assert kernel == {"198.18.1.2"}
    state.handle("unmanage eth0 bad-address")  # malformed: ignored, nothing removed
    state.settle()
    assert kernel == {"198.18.1.2"}
