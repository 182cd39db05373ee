"""Cluster-wide series in one process: ClusterAudit over real ZooKeeper and loopback TCP."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import mhafail.audit._cluster
from mhafail.audit import (
    AuditSeries,
    ClusterAudit,
    IncrementBatch,
    KeyFamily,
    ManualClock,
    Origin,
    SystemClock,
)
from mhafail.channel import Channel, ChannelSecurity, connect
from mhafail.cli import main
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.errors import AuditError, AuditInvalidArgument, ChannelClosed
from mhafail.testing import TcpProxy, ZooKeeperServer

pytestmark = pytest.mark.zookeeper

SECRET = b"audit-cluster-test-secret"
T0 = 1_717_200_000.0
V4 = 3323068416  # 198.18.0.0


@attrs.define
class Node:
    """One in-process cluster node: its series, ClusterAudit and membership."""

    name: str
    series: dict[str, AuditSeries]
    audit: ClusterAudit
    membership: Membership | None
    coordinator: Coordinator
    stopped: bool = False

    def count(self, target: str, series: str = "conn") -> int:
        return self.series[series].count(target)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            if self.membership is not None:
                self.membership.stop()
            self.audit.stop(flush_timeout=0)


MakeNode = Callable[..., Node]


@pytest.fixture
def make_node(coordinator_factory: Callable[..., Coordinator]) -> Iterator[MakeNode]:
    made: list[Node] = []

    def make(
        name: str,
        *,
        listen: bool = True,
        clock: Any = None,
        series: tuple[tuple[str, int], ...] = (("conn", 60),),
        advertise: Callable[[ClusterAudit], str] | None = None,
        track_intervals: bool = False,
        **kwargs: Any,
    ) -> Node:
        made_series = {
            sname: AuditSeries(
                sname,
                window_seconds=window,
                windows=3,
                clock=clock or SystemClock(),
                export_increments=True,
                track_intervals=track_intervals,
            )
            for sname, window in series
        }
        kwargs.setdefault("interval", 0.05)
        kwargs.setdefault("timeout", 1.0)
        kwargs.setdefault("secret", SECRET)
        audit = ClusterAudit(
            node=name,
            series=list(made_series.values()),
            listen="127.0.0.1:0" if listen else None,
            **kwargs,
        ).start()
        endpoints = audit.endpoints()
        if advertise is not None:
            endpoints = {"audit": advertise(audit)}
        coordinator = coordinator_factory(session_timeout=1.0)
        info = NodeInfo(name=name, roles=("manager",) if listen else ("mta",), endpoints=endpoints)
        membership = Membership(coordinator=coordinator, info=info).start()
        audit.follow(membership)
        node = Node(name, made_series, audit, membership, coordinator)
        made.append(node)
        return node

    yield make
    for node in reversed(made):
        node.stop()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``predicate`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_view(node: Node, size: int) -> None:
    assert node.membership is not None
    node.membership.wait_for(lambda view: len(view) == size, 10)


def test_managers_count_the_sum_of_every_node(make_node: MakeNode) -> None:
    """Each manager's count is its own plus every node's; a send-only node counts only its own."""
    m1, m2 = make_node("m1"), make_node("m2")
    a, b = make_node("a", listen=False), make_node("b", listen=False)
    for node in (m1, m2, a, b):
        wait_view(node, 4)
    a.series["conn"].add_many(f"198.18.{i % 4}.{i}" for i in range(40))  # one batch
    b.series["conn"].add("203.0.113.9", 25)
    m1.series["conn"].add("198.19.0.1", 3)
    for node in (a, b, m1, m2):
        assert node.audit.flush(10)
    for manager in (m1, m2):
        assert manager.count("198.18.0.0/16") == 40
        assert manager.count("198.18.1.0/24") == 10
        assert manager.count("203.0.113.0/24") == 25
        assert manager.count("198.19.0.1") == 3
        assert manager.count("0.0.0.0/0") == 68
    assert a.count("0.0.0.0/0") == 40  # a does not listen, so it only counts its own
    assert b.count("0.0.0.0/0") == 25
    stats = a.audit.stats()
    assert {p.node for p in stats.peers} == {"m1", "m2"}
    assert all(p.acked == {"conn": 1} and p.connected for p in stats.peers)
    # First contact with nodes whose whole history is in their backlog: plain batches.
    assert m2.audit.stats().received.snapshots == 0


def test_peer_sharing_gives_every_listening_node_the_cluster_sum(make_node: MakeNode) -> None:
    """When every node listens, every node's count is the cluster-wide sum, kept up to date."""
    nodes = [make_node(f"n{i}") for i in range(3)]
    for node in nodes:
        wait_view(node, 3)
    for round_ in range(3):
        for i, node in enumerate(nodes):
            node.series["conn"].add(f"203.0.113.{i}", i + 1 + round_)
        for node in nodes:
            assert node.audit.flush(10)
    for node in nodes:
        assert [node.count(f"203.0.113.{i}") for i in range(3)] == [6, 9, 12]


def test_a_dead_nodes_counts_age_out_with_their_windows(make_node: MakeNode) -> None:
    """A stopped node keeps contributing until its windows age out, then nothing."""
    clock = ManualClock(T0)
    m = make_node("m", clock=clock)
    a = make_node("a", listen=False, clock=clock)
    b = make_node("b", listen=False, clock=clock)
    wait_view(m, 3)
    a.series["conn"].add("198.18.0.1", 5)
    assert a.audit.flush(10)
    a.stop()
    wait_view(m, 2)
    assert m.count("198.18.0.1") == 5  # gone from the view, not from the counts
    clock.advance(60)
    b.series["conn"].add("198.18.0.2", 2)
    assert b.audit.flush(10)
    assert (m.count("198.18.0.0/24"), m.series["conn"].count("198.18.0.0/24", windows=1)) == (7, 2)
    clock.advance(120)  # a's window is now older than the three kept
    assert m.count("198.18.0.1") == 0
    assert m.count("198.18.0.2") == 2


def test_a_restarted_manager_is_refilled_once(make_node: MakeNode) -> None:
    """A manager that restarts empty gets each live node's counts once, by snapshot."""
    m = make_node("m")
    a = make_node("a", listen=False)
    wait_view(a, 2)
    a.series["conn"].add("198.18.0.1", 7)
    assert a.audit.flush(10)
    for _ in range(3):  # several batches, so that a snapshot is not just batch 1
        a.series["conn"].add("198.18.0.2")
        assert a.audit.flush(10)
    assert m.count("198.18.0.0/24") == 10
    m.stop()
    wait_view(a, 1)
    a.series["conn"].add("198.18.0.4", 5)  # counted while no manager runs
    assert a.audit.flush(10)
    m2 = make_node("m", track_intervals=True)
    wait_view(a, 2)
    wait_until(lambda: m2.count("198.18.0.0/24") == 15, "the new manager to be refilled")
    a.series["conn"].add("198.18.0.3", 4)
    assert a.audit.flush(10)
    assert m2.count("198.18.0.0/24") == 19
    assert m2.count("198.18.0.2") == 3
    # What the old manager confirmed came as a snapshot, kept out of the new one's
    # as_logger interval (it was logged before); what it never got came as batches.
    assert m2.series["conn"].take_interval().counts == {V4 + 4: 5, V4 + 3: 4}
    received = m2.audit.stats().received
    assert (received.snapshots, received.applied, received.gaps) == (1, 3, 0)


def test_a_manager_joining_a_running_cluster_gets_a_snapshot(make_node: MakeNode) -> None:
    """A new receiver gets a long-running node's live counts at once, kept out of its as_logger."""
    a = make_node("a", listen=False, max_backlog=2)
    for i in range(4):  # no receiver yet: the backlog keeps only batches 3 and 4
        a.series["conn"].add(f"198.18.0.{i}", i + 1)
        assert a.audit.flush(10)
    m = make_node("m", track_intervals=True)
    wait_view(a, 2)
    assert a.audit.flush(10)
    assert m.count("198.18.0.0/24") == 10
    assert m.audit.stats().received.snapshots == 1
    a.series["conn"].add("198.18.0.9")
    assert a.audit.flush(10)
    assert m.count("198.18.0.0/24") == 11
    # Only what was counted after m joined belongs to m's current interval.
    assert m.series["conn"].take_interval().counts == {V4 + 9: 1}


def test_a_partition_delays_counts_and_never_doubles_them(
    make_node: MakeNode, tcp_proxy_factory: Callable[[str], TcpProxy]
) -> None:
    """Batches sent while a proxy blackholes the receiver arrive after it heals, once."""
    proxies: list[TcpProxy] = []

    def via_proxy(audit: ClusterAudit) -> str:
        proxies.append(tcp_proxy_factory(audit.endpoints()["audit"]))
        return proxies[-1].address

    m = make_node("m", advertise=via_proxy)
    a = make_node("a", listen=False, timeout=0.3)
    wait_view(a, 2)
    a.series["conn"].add("198.18.0.1", 2)
    assert a.audit.flush(10)
    proxies[0].cut()
    for i in range(5):
        a.series["conn"].add("198.18.0.1", i + 1)
        assert not a.audit.flush(0.4)  # the receiver is unreachable: nothing is confirmed
    # The cut takes effect on the proxy's thread: the first batch may still slip through.
    assert m.count("198.18.0.1") in (2, 3)
    proxies[0].restore()
    wait_until(lambda: m.count("198.18.0.1") == 17, "the backlog to arrive")
    assert a.audit.flush(10)
    assert m.count("198.18.0.1") == 17
    peer = a.audit.stats().peers[0]
    assert peer.failures >= 1
    assert peer.lost == 0
    assert m.audit.stats().received.gaps == 0


def test_a_receiver_away_longer_than_the_backlog_undercounts_and_says_so(
    make_node: MakeNode,
) -> None:
    """Batches that left a full backlog are lost to a returning receiver: low and reported."""
    m = make_node("m")
    a = make_node("a", listen=False, max_backlog=2)
    wait_view(a, 2)
    a.series["conn"].add("198.18.0.1")
    assert a.audit.flush(10)
    assert m.membership is not None
    info = m.membership.info
    m.membership.stop()  # m leaves the view but keeps running, and remembers a's batch 1
    wait_view(a, 1)
    for _ in range(5):
        a.series["conn"].add("198.18.0.2")
        assert a.audit.flush(10)  # one batch each; no receiver to wait for
    assert a.audit.stats().backlog == {"conn": 2}
    m.membership = Membership(coordinator=m.coordinator, info=info).start()
    wait_view(a, 2)
    assert a.audit.flush(10)
    assert m.count("198.18.0.0/24") == 3  # batch 1, then 5 and 6; 2, 3 and 4 are lost
    assert a.audit.stats().peers[0].lost == 3
    assert m.audit.stats().received.gaps == 1


@pytest.mark.parametrize("forgotten", [False, True])
def test_a_receiver_back_from_a_blip_gets_what_others_already_confirmed(
    make_node: MakeNode, monkeypatch: pytest.MonkeyPatch, forgotten: bool
) -> None:
    """A manager back after a blip gets the batches others confirmed; long gone, it gets a gap."""
    if forgotten:  # as if it had been away longer than a departed receiver is remembered
        monkeypatch.setattr(mhafail.audit._cluster, "_REMEMBER_DEPARTED", -1.0)
    m1, m2 = make_node("m1"), make_node("m2")
    a = make_node("a", listen=False)
    wait_view(a, 3)
    a.series["conn"].add("198.18.0.1")
    assert a.audit.flush(10)
    assert m1.membership is not None
    info = m1.membership.info
    m1.membership.stop()  # a ZooKeeper blip: m1 runs on, but leaves the view
    wait_view(a, 2)
    for _ in range(3):
        a.series["conn"].add("198.18.0.2")
        assert a.audit.flush(10)  # m2 confirms every one
    if forgotten:
        wait_until(lambda: a.audit.stats().backlog == {"conn": 0}, "the backlog to be trimmed")
    else:
        time.sleep(0.3)  # several sender passes, each of which could trim the backlog
        assert a.audit.stats().backlog == {"conn": 3}  # kept for m1
    m1.membership = Membership(coordinator=m1.coordinator, info=info).start()
    wait_view(a, 3)
    assert a.audit.flush(10)  # when forgotten, an empty batch moves m1 on to the latest seq
    a.series["conn"].add("198.18.0.3")
    assert a.audit.flush(10)
    assert m2.count("198.18.0.0/24") == 5
    assert m1.count("198.18.0.0/24") == (2 if forgotten else 5)  # low, never high
    assert [p.lost for p in a.audit.stats().peers] == [3 if forgotten else 0, 0]
    assert m1.audit.stats().received.gaps == (1 if forgotten else 0)


def test_receiver_refuses_series_it_does_not_have_or_that_do_not_line_up(
    make_node: MakeNode,
) -> None:
    """A series the receiver lacks, or with other windows, is refused by name; others still flow."""
    m = make_node("m", series=(("conn", 60), ("rcpt", 60)))
    a = make_node("a", listen=False, series=(("conn", 60), ("rcpt", 300), ("helo", 60)))
    wait_view(a, 2)
    for name in ("conn", "rcpt", "helo"):
        a.series[name].add("198.18.0.1")
    assert a.audit.flush(10)  # refused series do not hold a flush up
    assert m.count("198.18.0.1") == 1
    assert m.count("198.18.0.1", series="rcpt") == 0
    peer = a.audit.stats().peers[0]
    assert peer.refused.keys() == {"rcpt", "helo"}
    assert "no series 'helo'" in peer.refused["helo"]
    assert "300 s do not line up with 60 s" in peer.refused["rcpt"]
    assert m.audit.stats().received.refused == 1  # the rcpt batch; helo is refused at hello


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node": "bad/name"}, "invalid node name 'bad/name'"),
        ({"series": []}, "at least one series"),
        ({"series": "conn"}, "must be a list of AuditSeries"),
        ({"series": ["conn"]}, "'conn' is not an AuditSeries"),
        ({"series": [AuditSeries("conn")]}, "without export_increments=True"),
        ({"listen": "127.0.0.1"}, "listen '127.0.0.1' must be host:port"),
        ({"listen": "127.0.0.1:70000"}, "port in 0..65535"),
        ({"listen": "0.0.0.0:0"}, "needs advertise="),
        ({"advertise": "127.0.0.1:9"}, "advertise= needs listen="),
        ({"interval": 0}, "interval=0 is outside 0.01..60"),
        ({"interval": "1"}, "interval must be a number"),
        ({"max_backlog": 1.5}, "max_backlog must be an integer"),
        ({"timeout": -1}, "timeout=-1 is outside"),
    ],
)
def test_bad_arguments_are_refused_by_name(kwargs: dict[str, Any], message: str) -> None:
    """Every malformed ClusterAudit argument raises AuditInvalidArgument naming it."""
    args: dict[str, Any] = {
        "node": "n1",
        "series": [AuditSeries("conn", export_increments=True)],
        **kwargs,
    }
    with pytest.raises(AuditInvalidArgument, match=None) as info:
        ClusterAudit(**args)
    assert message in str(info.value)


def test_duplicate_series_names_and_misuse_are_refused() -> None:
    """Two series with one name, flush before start and a second start raise clear errors."""
    with pytest.raises(AuditInvalidArgument, match="two series are named 'conn'"):
        ClusterAudit(
            node="n1",
            series=[AuditSeries("conn", export_increments=True) for _ in range(2)],
        )
    audit = ClusterAudit(
        node="n1",
        series=[AuditSeries("conn", export_increments=True)],
        listen="127.0.0.1:0",
        allow_unauthenticated=True,
    )
    with pytest.raises(AuditError, match="start"):
        audit.endpoints()
    with pytest.raises(AuditError, match="started"):
        audit.flush(0)
    with audit:
        assert audit.endpoints()["audit"].startswith("127.0.0.1:")
        assert audit.flush(1)  # no membership: nobody to confirm, nothing to wait for
        with pytest.raises(AuditError, match="already started"):
            audit.start()


# --- the wire protocol, spoken by hand -------------------------------------------


def _send(chan: Channel, message: object) -> None:
    chan.send(json.dumps(message).encode(), 5.0)


def _read(chan: Channel) -> dict[str, Any] | None:
    try:
        reply: dict[str, Any] = json.loads(chan.recv_one(5.0))
    except ChannelClosed:
        return None
    return reply


@pytest.fixture
def receiver() -> Iterator[tuple[ClusterAudit, AuditSeries]]:
    series = AuditSeries("conn", window_seconds=60, export_increments=True)
    with ClusterAudit(
        node="m", series=[series], listen="127.0.0.1:0", max_frame=4096, secret=SECRET
    ) as audit:
        yield audit, series


def _connect(audit: ClusterAudit) -> Channel:
    return connect(audit.endpoints()["audit"], "audit", ChannelSecurity(secret=SECRET))


def _batch(seq: int, counts: dict[int, int], *, node: str = "a") -> dict[str, Any]:
    start = int(time.time() // 60) * 60
    return IncrementBatch(
        series="conn",
        family=KeyFamily.IPV4,
        window_seconds=60,
        origin=Origin(node, 1),
        seq=seq,
        windows={start: counts},
    ).to_json()


def _push(items: list[dict[str, Any]], *, node: str = "a") -> dict[str, Any]:
    return {"v": 2, "type": "push", "origin": {"node": node, "incarnation": 1}, "items": items}


def test_resent_batches_and_late_snapshots_count_once(
    receiver: tuple[ClusterAudit, AuditSeries],
) -> None:
    """Over the wire, a batch sent twice and a snapshot for a known origin change nothing."""
    audit, series = receiver
    origin = {"node": "a", "incarnation": 1}
    with contextlib.closing(_connect(audit)) as sock:
        _send(sock, {"v": 2, "type": "hello", "origin": origin, "series": ["conn", "x"]})
        hello = _read(sock)
        assert hello is not None
        assert hello["series"]["conn"] == {"last_seq": 0}
        assert "no series 'x'" in hello["series"]["x"]["error"]
        snapshot = {"snapshot": True, "batch": _batch(2, {V4 + 1: 5})}
        _send(sock, _push([snapshot]))
        assert _read(sock) == {
            "ok": True,
            "receiver": {"node": "m", "incarnation": audit.incarnation},
            "series": {"conn": {"last_seq": 2}},
        }
        resent = {"snapshot": False, "batch": _batch(2, {V4 + 1: 5})}
        again = {"snapshot": True, "batch": _batch(3, {V4 + 1: 9})}
        _send(sock, _push([resent, again]))
        assert _read(sock)["series"] == {"conn": {"last_seq": 2}}  # type: ignore[index]
        _send(sock, _push([{"snapshot": False, "batch": _batch(3, {V4 + 2: 1})}]))
        assert _read(sock)["series"] == {"conn": {"last_seq": 3}}  # type: ignore[index]
    assert series.count("198.18.0.0/24") == 6
    assert series.last_seq(Origin("a", 1)) == 3
    received = audit.stats().received
    assert (received.applied, received.duplicates, received.snapshots_skipped) == (2, 1, 1)


def _json(message: object) -> bytes:
    return json.dumps(message).encode()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"hello", "not JSON"),
        (_json([1, 2]), "JSON list, not an object"),
        (_json({"v": 1, "type": "hello"}), "protocol version 1 is not supported"),
        (_json({"v": 2, "type": "hello", "origin": {"node": 5}}), "malformed origin"),
        (_json({"v": 2, "type": "gossip", "origin": {"node": "a", "incarnation": 1}}), "gossip"),
        (_json(_push([{"batch": "x"}])), "push item must hold a batch object"),
        (_json(_push([{"snapshot": 1, "batch": {}}])), "'snapshot' must be true or false"),
        (b"[" * 3000, "nests too deeply"),
    ],
)
def test_malformed_messages_are_answered_and_the_connection_closed(
    receiver: tuple[ClusterAudit, AuditSeries], payload: bytes, message: str
) -> None:
    """A bad message gets an error reply naming the problem, then the connection closes."""
    audit, series = receiver
    with contextlib.closing(_connect(audit)) as sock:
        sock.send(payload, 5.0)
        reply = _read(sock)
        assert reply is not None
        assert reply["ok"] is False
        assert message in reply["error"]
        assert _read(sock) is None  # closed
    assert series.count("0.0.0.0/0") == 0
    assert audit.stats().received.bad_messages == 1
    with contextlib.closing(_connect(audit)) as sock:  # the receiver still serves everyone else
        _send(sock, _push([{"snapshot": False, "batch": _batch(1, {V4: 1})}]))
        assert _read(sock)["series"] == {"conn": {"last_seq": 1}}  # type: ignore[index]


def test_bad_batches_are_refused_per_series_and_count_nothing(
    receiver: tuple[ClusterAudit, AuditSeries],
) -> None:
    """A malformed batch, or one from another origin, is refused by name; the connection lives."""
    audit, series = receiver
    bad_key = _batch(1, {V4: 1})
    bad_key["windows"][0][1][0][0] = "198.18.0.1"  # text key: batches carry parsed ints
    stolen = _batch(1, {V4: 1}, node="b")
    with contextlib.closing(_connect(audit)) as sock:
        _send(sock, _push([{"snapshot": False, "batch": bad_key}]))
        reply = _read(sock)
        assert reply is not None
        assert "bad increment '198.18.0.1'" in reply["series"]["conn"]["error"]
        _send(sock, _push([{"snapshot": False, "batch": stolen}]))
        reply = _read(sock)
        assert reply is not None
        assert "arrived on Origin(node='a'" in reply["series"]["conn"]["error"]
        assert reply["series"]["conn"]["last_seq"] == 0
    assert series.count("0.0.0.0/0") == 0
    assert audit.stats().received.refused == 2


def test_last_seq_reports_the_latest_merged_batch_per_origin() -> None:
    """AuditSeries.last_seq is 0 for an unknown origin, follows merges, and resets on age-out."""
    clock = ManualClock(T0)
    sender = AuditSeries("conn", clock=clock, export_increments=True)
    receiver = AuditSeries("conn", clock=clock)
    origin = Origin("a", 7)
    assert receiver.last_seq(origin) == 0
    for _ in range(2):
        sender.add(V4)
        batch = sender.take_batch(origin)
        assert batch is not None
        receiver.merge(batch)
    assert receiver.last_seq(origin) == 2
    assert receiver.last_seq(Origin("a", 8)) == 0
    clock.advance(6 * 300)
    assert receiver.last_seq(origin) == 0


def test_docs_snippet_runs(zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path) -> None:
    """The Python example under "Cluster-wide series" in docs/audit.md runs as written."""
    doc = (Path(__file__).parents[2] / "docs" / "audit.md").read_text()
    section = doc[doc.index("## Cluster-wide series") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    env = {**os.environ, "MHAFAIL_ZK": zookeeper.address, "MHAFAIL_CLUSTER": zk_cluster}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", code.group(1)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["mgr1 sees 4", "mta1 sees 3"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("conn:ipv5", "family must be ipv4, ipv6 or string, not 'ipv5'"),
        ("conn:ipv4:5m", "WINDOW_SECONDS '5m' is not a number"),
        ("conn:ipv4:300:6:1", "must be NAME[:FAMILY[:WINDOW_SECONDS[:WINDOWS]]]"),
        ("conn.x", "series name 'conn.x' must be"),
        ("conn:ipv4:0", "window_seconds must be a positive integer"),
    ],
)
def test_cli_refuses_bad_series_specs(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mhafail audit node` with a malformed --series exits 2 with a one-line error."""
    argv = ["audit", "node", "--zk", "127.0.0.1:9", "--cluster", "c", "--node", "n"]
    assert main([*argv, "--series", spec]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1


def test_merge_can_keep_a_batch_out_of_the_interval() -> None:
    """merge(track_interval=False) counts the batch but leaves the as_logger interval alone."""
    clock = ManualClock(T0)
    sender = AuditSeries("conn", clock=clock, export_increments=True)
    receiver = AuditSeries("conn", clock=clock, track_intervals=True)
    origin = Origin("a", 1)
    for track in (False, True):
        sender.add(V4 + track, 2)
        batch = sender.take_batch(origin)
        assert batch is not None
        receiver.merge(batch, track_interval=track)
    assert receiver.count("198.18.0.0/31") == 4
    assert receiver.take_interval().counts == {V4 + 1: 2}
