"""Batched plumbing for mass takeovers: Kernel.add_many, the plumbers' batch methods.

The kernel tests drive ``Kernel`` with the fake plumber and a recording
fence; the netlink tests run ``NetlinkPlumber`` inside a network namespace
of their own (root), against the real kernel.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable, Iterator, Sequence

import pytest

from mhafail.errors import PlumbingError
from mhafail.testing import FakeNetwork, FakePlumber, Host, NetnsLab, run_in_netns
from mhafail.vip import NetlinkPlumber, Vip, parse_vip
from mhafail.vip._kernel import Kernel
from mhafail.vip.fence import Fence

ADDRESSES = [f"198.18.0.{100 + i}" for i in range(20)]
ETH_P_ALL = 0x0003


def vips(addresses: Sequence[str] = ADDRESSES, iface: str = "eth0") -> list[Vip]:
    return [parse_vip(f"{a}@{iface}") for a in addresses]


class RecordingFence:
    """Stands in for FenceProcess: records what it is told, in order, with the plumber's adds."""

    def __init__(self, log: list[tuple[str, str]], *, works: bool = True) -> None:
        self.log = log
        self.works = works
        self.renews_lifetimes = True

    def manage_many(self, batch: Sequence[Vip]) -> bool:
        if not self.works:
            return False
        self.log += [("manage", v.key) for v in batch]
        return True

    def unmanage_many(self, batch: Sequence[Vip]) -> None:
        self.log += [("unmanage", v.key) for v in batch]

    def unmanage(self, vip: Vip) -> None:
        self.log.append(("unmanage", vip.key))


class LoggingPlumber(FakePlumber):
    """A fake plumber that logs each add next to the fence's messages, and can end the lease."""

    def __init__(
        self, network: FakeNetwork, log: list[tuple[str, str]], on_add: Callable[[int], None]
    ) -> None:
        super().__init__(network, "n1", {"eth0": ["198.18.0.1/24"]})
        self.log = log
        self.on_add = on_add

    def ensure_present(self, vip: Vip, valid_for: float | None = None) -> bool:
        added = super().ensure_present(vip, valid_for)
        self.log.append(("add", vip.key))
        self.on_add(sum(1 for op, _ in self.log if op == "add"))
        return added


@pytest.fixture
def stopped() -> Iterator[list[Kernel]]:
    kernels: list[Kernel] = []
    yield kernels
    for kernel in kernels:
        kernel.stop()


def make_kernel(
    stopped: list[Kernel],
    *,
    lease: list[bool],
    end_lease_at_add: int | None = None,
    fence_works: bool = True,
) -> tuple[Kernel, FakeNetwork, list[tuple[str, str]]]:
    network = FakeNetwork()
    log: list[tuple[str, str]] = []

    def on_add(count: int) -> None:
        if count == end_lease_at_add:
            lease[0] = False  # the process stalled here, mid-batch, past its lease

    plumber = LoggingPlumber(network, log, on_add)
    kernel = Kernel(
        plumber,
        lambda: lease[0],
        fence=RecordingFence(log, works=fence_works),  # type: ignore[arg-type]
        announce_schedule=(0.0, 0.05),
        lease_deadline=lambda: time.monotonic() + 5 if lease[0] else None,
    )
    stopped.append(kernel)
    return kernel, network, log


def test_a_batch_is_fenced_as_a_whole_before_anything_is_plumbed(stopped: list[Kernel]) -> None:
    """The fence hears of every address of the batch before the first one is added."""
    kernel, network, log = make_kernel(stopped, lease=[True])
    added = kernel.add_many(vips())
    assert [v.key for v in added.new] == ADDRESSES
    first_add = next(i for i, (op, _) in enumerate(log) if op == "add")
    assert log[:first_add] == [("manage", a) for a in ADDRESSES]
    assert [step for step, _ in added.steps] == ["fenced", "plumbed", "announced"]
    assert {a for _, _, a in network.announcements} == set(ADDRESSES)
    assert kernel.plumbed() == frozenset(ADDRESSES)


def test_a_lease_that_ends_mid_batch_leaves_nothing_plumbed(stopped: list[Kernel]) -> None:
    """The lease re-check after the batch undoes all of it; nothing is announced."""
    kernel, network, log = make_kernel(stopped, lease=[True], end_lease_at_add=7)
    added = kernel.add_many(vips())
    assert added.new == () and added.plumbed == ()
    assert all(network.holders(a) == frozenset() for a in ADDRESSES)
    assert kernel.plumbed() == frozenset()
    assert {a for op, a in log if op == "unmanage"} == set(ADDRESSES)
    time.sleep(0.15)  # past the second scheduled announcement
    assert network.announcements == []


def test_a_fence_that_refuses_means_nothing_is_plumbed(stopped: list[Kernel]) -> None:
    """A fence that is not working refuses the batch: no address reaches the plumber."""
    kernel, network, _ = make_kernel(stopped, lease=[True], fence_works=False)
    assert kernel.add_many(vips()).plumbed == ()
    assert network.history == []
    assert kernel.plumbed() == frozenset()


def test_an_expired_lease_plumbs_nothing_and_tells_the_fence_nothing(
    stopped: list[Kernel],
) -> None:
    """Without a valid lease the batch stops before the fence is told anything."""
    kernel, network, log = make_kernel(stopped, lease=[False])
    assert kernel.add_many(vips()).plumbed == ()
    assert log == [] and network.history == []


def test_an_unknown_interface_refuses_the_whole_batch(stopped: list[Kernel]) -> None:
    """One VIP on a missing interface: a PlumbingError naming it, and nothing is plumbed."""
    kernel, network, log = make_kernel(stopped, lease=[True])
    batch = [*vips(ADDRESSES[:5]), parse_vip("198.18.0.250@eth9"), *vips(ADDRESSES[5:])]
    with pytest.raises(PlumbingError, match="'eth9' does not exist"):
        kernel.add_many(batch)
    assert network.history == []
    assert kernel.plumbed() == frozenset()
    assert {a for op, a in log if op == "unmanage"} == {v.key for v in batch}


def test_announcements_go_out_in_bursts_and_stop_when_the_lease_ends(
    stopped: list[Kernel],
) -> None:
    """Scheduled announcements of a batch leave together; the lease is asked before each one."""
    lease = [True]
    kernel, network, _ = make_kernel(stopped, lease=lease)
    kernel.add_many(vips())
    time.sleep(0.15)
    times = [t for t, _, _ in network.announcements]
    assert len(times) == 2 * len(ADDRESSES)
    second = times[len(ADDRESSES) :]
    assert max(second) - min(second) < 0.02  # one burst, not one hand-off per address
    sent = []

    def valid() -> bool:
        sent.append(1)
        return len(sent) <= 3

    kernel.plumber.announce_many(vips(ADDRESSES[:10]), valid)
    assert len(network.announcements) == 2 * len(ADDRESSES) + 3


def test_remove_all_removes_a_batch_and_tells_the_fence(stopped: list[Kernel]) -> None:
    """remove_all takes every address away in one batch and unmanages them all."""
    kernel, network, log = make_kernel(stopped, lease=[True])
    kernel.add_many(vips())
    removed = kernel.remove_all()
    assert {v.key for v in removed} == set(ADDRESSES)
    assert all(network.holders(a) == frozenset() for a in ADDRESSES)
    assert {a for op, a in log if op == "unmanage"} == set(ADDRESSES)


def test_fake_batch_lifetimes_match_single_adds() -> None:
    """The fake's batch add sets the same whole-second lifetimes as its single add."""
    network = FakeNetwork()
    plumber = FakePlumber(network, "n1", {"eth0": ["198.18.0.1/24"]})
    plumber.ensure_present_many(vips(ADDRESSES[:3]), 1.7)
    plumber.ensure_present(parse_vip(f"{ADDRESSES[3]}@eth0"), 1.7)
    untils = [until - t for t, _, _, until in network.lifetimes]
    assert len(untils) == 4
    assert all(abs(u - 1.0) < 0.01 for u in untils)


# --- NetlinkPlumber against the kernel (root) --------------------------------------


@pytest.fixture
def host() -> Iterator[Host]:
    with NetnsLab(hosts=1) as lab:
        yield lab["h1"]


def in_host(host: Host, fn: Callable[[NetlinkPlumber], object]) -> object:
    """Run ``fn`` with a plumber created inside the host's namespace."""

    def call() -> object:
        plumber = NetlinkPlumber()
        try:
            return fn(plumber)
        finally:
            plumber.close()

    return run_in_netns(host.netns, call)


def listing(host: Host) -> str:
    return host.run(["ip", "-o", "addr", "show", "dev", "eth0"]).stdout


@pytest.mark.root
def test_netlink_batch_adds_and_removes_hundreds_of_addresses(host: Host) -> None:
    """300 addresses (more than one send's worth) go in and out in one call each."""
    many = [parse_vip(f"198.18.{1 + i // 250}.{1 + i % 250}/16@eth0") for i in range(290)]
    many += [parse_vip(f"2001:db8::{0x100 + i:x}/64@eth0") for i in range(10)]
    added = in_host(host, lambda p: p.ensure_present_many(many, 3.5))
    assert added == frozenset(v.key for v in many)
    text = listing(host)
    for vip in many:
        assert f" {vip.key}/{vip.address.max_prefixlen} " in text
    v4 = next(line for line in text.splitlines() if "198.18.1.1/32" in line)
    assert "eth0:mha" in v4 and "valid_lft 3sec" in v4
    v6 = next(line for line in text.splitlines() if "2001:db8::100/128" in line)
    assert "nodad" in v6 and "deprecated" in v6 and "valid_lft 3sec" in v6
    # Again: everything is there already, so nothing is added (the lifetimes renew).
    assert in_host(host, lambda p: p.ensure_present_many(many, 2.5)) == frozenset()
    removed = in_host(host, lambda p: p.ensure_absent_many(many))
    assert removed == frozenset(v.key for v in many)
    assert in_host(host, lambda p: p.ensure_absent_many(many)) == frozenset()
    assert "198.18.1." not in listing(host) and "2001:db8::100" not in listing(host)


@pytest.mark.root
def test_netlink_batch_with_a_refused_address_leaves_nothing_behind(host: Host) -> None:
    """The kernel refuses one address (IPv6 off): the batch's other adds are undone."""
    host.run(["sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1"])
    batch = [*vips(ADDRESSES[:10]), parse_vip("2001:db8::300@eth0"), *vips(ADDRESSES[10:])]

    def attempt(plumber: NetlinkPlumber) -> str:
        with pytest.raises(PlumbingError) as info:
            plumber.ensure_present_many(batch, 5)
        return str(info.value)

    message = in_host(host, attempt)
    assert "add 2001:db8::300 on eth0" in str(message)
    assert not any(a in listing(host) for a in ADDRESSES)


@pytest.mark.root
def test_netlink_batch_on_a_missing_interface_sends_nothing(host: Host) -> None:
    """An unknown interface is named in the error before any request is sent."""
    batch = [*vips(ADDRESSES[:3]), parse_vip("198.18.0.250@nosuch0")]

    def attempt(plumber: NetlinkPlumber) -> str:
        with pytest.raises(PlumbingError) as info:
            plumber.ensure_present_many(batch)
        # Removal treats a missing interface as done.
        assert plumber.ensure_absent_many(batch) == frozenset()
        return str(info.value)

    assert "'nosuch0' does not exist" in str(in_host(host, attempt))
    assert not any(a in listing(host) for a in ADDRESSES)


@pytest.mark.root
def test_netlink_addresses_lists_the_interface(host: Host) -> None:
    """addresses() reads the kernel's list for one interface (own and plumbed addresses)."""
    vip = parse_vip(f"{ADDRESSES[0]}@eth0")

    def check(plumber: NetlinkPlumber) -> tuple[frozenset[str], frozenset[str]]:
        plumber.ensure_present(vip)
        return plumber.addresses("eth0"), plumber.addresses("lo")

    eth0, lo = in_host(host, check)  # type: ignore[misc]
    assert {host.ipv4, host.ipv6, ADDRESSES[0]} <= eth0
    assert "127.0.0.1" in lo and ADDRESSES[0] not in lo


@pytest.mark.root
def test_netlink_announces_a_burst_on_reused_sockets(host: Host) -> None:
    """One burst sends a GARP pair per IPv4 VIP and an NA per IPv6 VIP, stopping when told."""
    burst = [*vips(ADDRESSES[:3]), parse_vip("2001:db8::301@eth0")]

    def announce(plumber: NetlinkPlumber) -> list[bytes]:
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sniffer.bind(("eth0", 0))
        sniffer.settimeout(0.2)
        try:
            plumber.ensure_present_many(burst)
            plumber.announce_many(burst)
            plumber.announce_many(vips(ADDRESSES[3:6]), lambda: False)  # the lease is gone
            frames = []
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(sniffer.recv(2048))
            return frames
        finally:
            sniffer.close()

    frames = in_host(host, announce)
    assert isinstance(frames, list)
    arp = [f for f in frames if f[12:14] == b"\x08\x06"]
    senders = {socket.inet_ntoa(f[28:32]) for f in arp}
    assert senders == set(ADDRESSES[:3]) and len(arp) == 6
    na = [f for f in frames if f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136]
    assert [socket.inet_ntop(socket.AF_INET6, f[62:78]) for f in na] == ["2001:db8::301"]
    assert socket.inet_ntop(socket.AF_INET6, na[0][22:38]) == "2001:db8::301"  # its source


def test_the_fence_enforces_a_past_deadline_in_one_batch() -> None:
    """Past its deadline the fence removes all it manages with one batch call, not one each."""
    batches: list[list[str]] = []
    singles: list[str] = []

    def remove_many(batch: list[Vip]) -> frozenset[str]:
        batches.append([v.key for v in batch])
        return frozenset(v.key for v in batch)

    def remove(vip: Vip) -> bool:
        singles.append(vip.key)
        return True

    now = [100.0]
    fence = Fence(remove, lambda: now[0], remove_many=remove_many)
    for address in ADDRESSES[:5]:
        fence.handle(f"manage eth0 {address} 101.0")
    assert batches == [] and not fence.due()
    now[0] = 101.5
    assert fence.due()
    fence.enforce()
    assert batches == [ADDRESSES[:5]] and singles == []
