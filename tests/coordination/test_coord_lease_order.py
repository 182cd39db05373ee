"""The safety ordering of the fencing lease (safety rule 1)."""

import threading
import time
from collections.abc import Callable

import pytest

from mhafail.coordination import Coordinator, LeaseState
from mhafail.testing import TcpProxy, ZooKeeperServer

pytestmark = pytest.mark.zookeeper


@pytest.mark.parametrize("trial", range(4))
def test_lease_expires_before_anyone_sees_the_ephemeral_vanish(
    trial: int,
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tcp_proxy_factory: Callable[[str], TcpProxy],
) -> None:
    """A client cut off from ZooKeeper has no lease left before another client
    can observe its ephemeral znode disappear, and hears that its lease
    expired (an ordering check, repeated)."""
    proxy = tcp_proxy_factory(zookeeper.address)
    victim = Coordinator(
        hosts=proxy.address, cluster=zk_cluster, session_timeout=0.6 + trial * 0.3, open_acl=True
    )
    observer = Coordinator(hosts=zookeeper.address, cluster=zk_cluster, open_acl=True)
    heard: list[tuple[LeaseState, float]] = []
    victim.add_lease_listener(lambda s: heard.append((s, time.monotonic())))
    victim.start()
    observer.start()
    try:
        # Only a lease that was announced valid can be announced expired:
        # on a loaded machine a 0.6 s session's first proof may come late.
        end = time.monotonic() + 5
        while not any(s is LeaseState.VALID for s, _ in heard) and time.monotonic() < end:
            time.sleep(0.01)
        assert any(s is LeaseState.VALID for s, _ in heard), "the victim's lease never became valid"
        victim.znodes.create("probe", b"", ephemeral=True)
        gone_at: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            # Tight polling from a client with a healthy connection: the
            # earliest moment anyone could act on the victim's departure.
            while not stop.is_set():
                if observer.znodes.get("probe") is None:
                    gone_at.append(time.monotonic())
                    return

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(0.05 * trial)  # vary the phase against the heartbeat schedule
        proxy.cut()
        # Nothing sent after the cut can prove anything: this is the latest
        # the lease can last (it may have run out already, under load).
        deadline = victim.lease_deadline()
        poller.join(15)
        stop.set()
        assert gone_at, "the server never expired the cut-off session"
        assert deadline is None or deadline < gone_at[0]
        # The listeners hear it too (on their own thread, which the tight
        # poller can hold off on a loaded machine: wait for them a little).
        # The last thing they hear is EXPIRED, not before the deadline: after
        # the cut if the lease was valid then, or when it lapsed before it.
        end = time.monotonic() + 2
        while (not heard or heard[-1][0] is not LeaseState.EXPIRED) and time.monotonic() < end:
            time.sleep(0.01)
        assert heard[-1][0] is LeaseState.EXPIRED, "the victim never heard its lease expire"
        if deadline is not None:
            assert heard[-1][1] >= deadline
    finally:
        proxy.restore()
        victim.stop()
        observer.stop()
