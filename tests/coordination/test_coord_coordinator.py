"""The Coordinator against a real ZooKeeper: znodes, errors, ACLs, session loss."""

import threading
import time
from collections.abc import Callable

import pytest

from mhafail.coordination import ConnectionState, Coordinator, LeaseState
from mhafail.coordination._lease import default_margin
from mhafail.errors import AccessDenied, CoordinationUnavailable, InvalidArgument
from mhafail.testing import ZooKeeperServer, expire_session, free_port

pytestmark = pytest.mark.zookeeper

Factory = Callable[..., Coordinator]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_start_gives_a_connected_session_with_a_valid_lease(coordinator_factory: Factory) -> None:
    """After start() the state is CONNECTED and the lease deadline lies ahead."""
    c = coordinator_factory(session_timeout=2.0)
    assert c.state is ConnectionState.CONNECTED
    assert c.session_id
    assert c.lease_valid()
    assert 0 < c.lease_remaining() <= 2.0
    assert c.effective_timeout == 2.0


def test_heartbeat_rounds_keep_the_lease_close_to_the_session(
    coordinator_factory: Factory,
) -> None:
    """A fresh proof is at most one round plus tickTime/2 old, never two periods.

    Evenly spaced heartbeats proved only a send time two periods back, so a
    cut-off owner let its VIPs go about T/3 before its session expired
    (about a second at T = 3 s); rounds of three syncs keep the lease
    within T/6 + tickTime/2 (plus round trips) of the session.
    """
    c = coordinator_factory(session_timeout=2.0, server_tick=0.1)
    timeout = c.effective_timeout  # the test server grants at most 2 s
    lowest = timeout
    end = time.monotonic() + 2.0
    while time.monotonic() < end:
        lowest = min(lowest, c.lease_remaining())
        time.sleep(0.005)
    # T - margin - T/6 - tickTime/2 - slack for round trips and scheduling;
    # evenly spaced heartbeats went down to T - margin - 3 T/8.
    bound = timeout - default_margin(timeout) - timeout / 6 - 0.06 - 0.1
    assert lowest >= bound, (lowest, bound)


def test_znode_operations_answer_no_with_values(coordinator_factory: Factory) -> None:
    """create/get/set/delete report absence and lost compare-and-set as values."""
    z = coordinator_factory().znodes
    assert z.get("a") is None
    assert z.create("a", b"1") == "a"
    assert z.create("a", b"2") is None
    node = z.get("a")
    assert node is not None and node.data == b"1" and node.version == 0
    assert z.set("a", b"3", version=node.version) is not None
    assert z.set("a", b"4", version=node.version) is None  # stale version loses
    assert z.delete("a", version=0) is False
    assert z.delete("a") is True
    assert z.delete("a") is False
    assert z.children("nowhere") is None
    seq = z.create("q/item-", b"", sequence=True, makepath=True)
    assert seq is not None and seq.startswith("q/item-")


def test_paths_that_escape_the_cluster_root_are_refused(coordinator_factory: Factory) -> None:
    """Absolute paths and '..' never reach ZooKeeper."""
    z = coordinator_factory().znodes
    for bad in ("/abs", "a/../b", "a//b"):
        with pytest.raises(InvalidArgument):
            z.get(bad)


def test_ephemeral_znode_of_another_cluster_is_invisible(
    zookeeper: ZooKeeperServer, coordinator_factory: Factory
) -> None:
    """Each cluster has its own root: the same relative path does not collide."""
    a = coordinator_factory(cluster="iso-a")
    b = coordinator_factory(cluster="iso-b")
    a.znodes.create("x", b"a", ephemeral=True)
    assert b.znodes.get("x") is None


def test_unreachable_zookeeper_is_a_clear_error() -> None:
    """A coordinator with nothing listening raises CoordinationUnavailable naming the hosts."""
    port = free_port()
    c = Coordinator(hosts=f"127.0.0.1:{port}", cluster="c", connect_timeout=1.0, open_acl=True)
    with pytest.raises(CoordinationUnavailable, match=f"127.0.0.1:{port}"):
        c.start()


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"hosts": "", "cluster": "c"}, "hosts"),
        ({"hosts": "h:1", "cluster": "bad/name"}, "cluster name"),
        ({"hosts": "h:1", "cluster": "c", "session_timeout": 0.01}, "session_timeout"),
        ({"hosts": "h:1", "cluster": "c", "lease_margin": 5.0}, "lease_margin"),
        ({"hosts": "h:1", "cluster": "c", "credentials": ("a:b", "p")}, "credentials"),
    ],
)
def test_bad_arguments_are_refused_before_connecting(kwargs: dict, fragment: str) -> None:
    """Malformed hosts, names and timeouts raise InvalidArgument at construction."""
    with pytest.raises(InvalidArgument, match=fragment):
        Coordinator(**kwargs)


def test_credentials_keep_non_members_out(coordinator_factory: Factory) -> None:
    """With credentials, znodes are readable only with the same credentials."""
    member = coordinator_factory(credentials=("mta", "s3cret"))
    member.znodes.create("members/secret", b"x", makepath=True)
    with pytest.raises(AccessDenied):
        coordinator_factory()  # no credentials: the root itself is closed
    with pytest.raises(AccessDenied):
        coordinator_factory(credentials=("mta", "wrong"))
    peer = coordinator_factory(credentials=("mta", "s3cret"))
    node = peer.znodes.get("members/secret")
    assert node is not None and node.data == b"x"


def test_session_expiry_reports_lost_then_a_new_session(coordinator_factory: Factory) -> None:
    """An expired session gives LOST, lease EXPIRED, then a new session and a valid lease."""
    c = coordinator_factory(session_timeout=1.0)
    events: list[object] = []
    new_sessions: list[int] = []
    lock = threading.Lock()

    def record(e: object) -> None:
        with lock:
            events.append(e)

    c.add_state_listener(record)
    c.add_lease_listener(record)
    c.add_session_listener(new_sessions.append)
    c.znodes.create("eph", b"", ephemeral=True)
    old = expire_session(c)
    wait_until(lambda: bool(new_sessions))
    assert new_sessions[0] != old
    assert c.wait_for_lease(5)
    with lock:
        seen = list(events)
    assert ConnectionState.LOST in seen
    assert LeaseState.EXPIRED in seen
    assert seen.index(LeaseState.EXPIRED) < len(seen) - 1
    assert c.znodes.get("eph") is None  # ephemeral state went with the old session


def test_listeners_never_run_on_kazoo_threads(coordinator_factory: Factory) -> None:
    """State and lease listeners run on mhafail's own dispatcher threads."""
    c = coordinator_factory(session_timeout=1.0)
    names: list[str] = []
    c.add_state_listener(lambda _: names.append(threading.current_thread().name))
    c.add_lease_listener(lambda _: names.append(threading.current_thread().name))
    expire_session(c)
    wait_until(lambda: len(names) >= 3)
    assert all(n.startswith("mhafail-") for n in names), names


def test_stop_announces_lease_expired_and_removes_ephemerals(
    coordinator_factory: Factory,
) -> None:
    """stop() tells lease listeners EXPIRED and the session's ephemerals vanish."""
    c = coordinator_factory()
    other = coordinator_factory()
    heard: list[LeaseState] = []
    c.add_lease_listener(heard.append)
    c.znodes.create("e", b"", ephemeral=True)
    c.stop()
    assert heard == [LeaseState.EXPIRED]
    assert other.znodes.get("e") is None
