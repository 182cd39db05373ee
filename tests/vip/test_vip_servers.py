"""VipServers: an asyncio server on each owned VIP, real ZooKeeper, real sockets on loopback."""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.errors import InvalidArgument
from mhafail.testing import FakeNetwork, FakePlumber, TcpProxy, ZooKeeperServer, free_port
from mhafail.vip import RebalancePolicy, VipManager, VipServers, parse_vip

pytestmark = pytest.mark.zookeeper

VIP = "127.0.0.201"
T = TypeVar("T")


class Greeter(asyncio.Protocol):
    """Says ``hello <node>`` to each connection and closes it."""

    def __init__(self, node: str) -> None:
        self.node = node

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(f"hello {self.node}\r\n".encode())
        transport.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a background thread (the application's loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[[], T]) -> T:
    """Run ``fn()`` on ``loop``'s thread and return its result."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the caller
            future.set_exception(exc)

    loop.call_soon_threadsafe(call)
    return future.result(10)


def greeting(port: int) -> str | None:
    """What a client connecting to the VIP reads; None when the connection is refused."""
    try:
        with socket.create_connection((VIP, port), timeout=2) as sock:
            return sock.recv(100).decode().strip()
    except ConnectionRefusedError:
        return None


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll ``predicate`` until it returns something true."""
    end = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
    return value


def serve(loop: asyncio.AbstractEventLoop, manager: VipManager, port: int, node: str) -> VipServers:
    """Started VipServers greeting as ``node`` (started on the loop's thread)."""

    def start() -> VipServers:
        return VipServers(
            manager=manager, port=port, protocol=lambda: Greeter(node), loop=loop
        ).start()

    return on_loop(loop, start)


@pytest.fixture
def managers(
    zookeeper: ZooKeeperServer, zk_cluster: str, tcp_proxy_factory: Callable[[str], TcpProxy]
) -> Iterator[Callable[[str], tuple[VipManager, TcpProxy]]]:
    """``make(node)``: a started VIP manager on a fake plumber, its ZooKeeper through a proxy."""
    network = FakeNetwork()
    made: list[tuple[VipManager, Membership, Coordinator, TcpProxy]] = []

    def make(node: str) -> tuple[VipManager, TcpProxy]:
        proxy = tcp_proxy_factory(zookeeper.address)
        c = Coordinator(
            hosts=proxy.address, cluster=zk_cluster, session_timeout=1.0, open_acl=True
        ).start()
        m = Membership(coordinator=c, info=NodeInfo(name=node)).start()
        manager = VipManager(
            coordinator=c, membership=m,
            plumber=FakePlumber(network, node, {"lo": ["127.0.0.0/24"]}),
            vips=[parse_vip(f"{VIP}/24@lo")], validate_host=False, claim_step=0.1,
            rebalance=RebalancePolicy.never(), announce_schedule=(0.0,),
        )  # fmt: skip
        made.append((manager, m, c, proxy))
        return manager.start(), proxy

    yield make
    for manager, m, c, proxy in made:
        proxy.restore()
        manager.stop()
        m.stop()
        c.stop()


def test_bad_arguments_are_refused_with_the_name_of_the_problem(
    loop: asyncio.AbstractEventLoop, managers: Callable[[str], tuple[VipManager, TcpProxy]]
) -> None:
    """A port outside 1..65535, a non-integer port or a non-positive bound is refused."""
    manager, _ = managers("n1")
    for port, match in ((0, "port 0"), (70000, "port 70000"), ("25", "port '25'")):
        with pytest.raises(InvalidArgument, match=match):
            VipServers(manager=manager, port=port, protocol=asyncio.Protocol, loop=loop)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="bind_timeout -1"):
        VipServers(manager=manager, port=25, protocol=asyncio.Protocol, loop=loop, bind_timeout=-1)
    with pytest.raises(InvalidArgument, match="backlog 0"):
        VipServers(manager=manager, port=25, protocol=asyncio.Protocol, loop=loop, backlog=0)


def test_the_owner_serves_the_vip_and_a_graceful_handover_moves_the_server(
    loop: asyncio.AbstractEventLoop, managers: Callable[[str], tuple[VipManager, TcpProxy]]
) -> None:
    """Only the VIP's owner answers on it; when it stops, the survivor's server takes over."""
    port = free_port()
    servers = {node: serve(loop, managers(node)[0], port, node) for node in ("n1", "n2")}
    owner = wait_for(lambda: next((n for n, s in servers.items() if s.serving()), None))
    other = "n2" if owner == "n1" else "n1"
    assert greeting(port) == f"hello {owner}"
    assert servers[other].serving() == frozenset()
    servers[owner].manager.stop()  # hands the VIP over: its listener closes, n2's opens
    wait_for(lambda: servers[other].serving() == {VIP})
    assert servers[owner].serving() == frozenset()
    wait_for(lambda: greeting(port) == f"hello {other}")
    on_loop(loop, servers[other].close)
    assert servers[other].serving() == frozenset()
    assert greeting(port) is None  # closed at once: nobody listens any more


def test_a_session_loss_closes_the_listener_and_a_new_session_reopens_it(
    loop: asyncio.AbstractEventLoop, managers: Callable[[str], tuple[VipManager, TcpProxy]]
) -> None:
    """Cut off from ZooKeeper, the node stops serving the VIP; once back, it serves again."""
    port = free_port()
    manager, proxy = managers("n1")
    wait_for(manager.owned)  # already owned when the servers start: served too
    servers = serve(loop, manager, port, "n1")
    wait_for(lambda: greeting(port) == "hello n1")
    proxy.cut()
    wait_for(lambda: servers.serving() == frozenset())  # released at the lease deadline
    assert greeting(port) is None
    proxy.restore()
    wait_for(lambda: greeting(port) == "hello n1", 30)
    on_loop(loop, servers.close)


def test_a_taken_port_is_retried_then_served_once_free(
    loop: asyncio.AbstractEventLoop, managers: Callable[[str], tuple[VipManager, TcpProxy]]
) -> None:
    """While another socket holds the VIP's port, binding is retried; freed, the VIP is served."""
    port = free_port()
    blocker = socket.socket()
    blocker.bind((VIP, port))
    blocker.listen()
    manager, _ = managers("n1")
    servers = serve(loop, manager, port, "n1")
    wait_for(manager.owned)
    time.sleep(0.3)
    assert servers.serving() == frozenset()
    blocker.close()
    wait_for(lambda: greeting(port) == "hello n1")
    on_loop(loop, servers.close)
