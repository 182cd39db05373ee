"""Real processes on a real ZooKeeper: nodes serve jlogs, managers pull them, faults strike."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mhafail.jlog import Jlog, MessageId
from mhafail.logs import StreamState
from mhafail.testing import TcpProxy, free_port

from .conftest import Lab, Writer, expect_exact, output_lines, record, wait_until

pytestmark = pytest.mark.zookeeper

NODES = ["n1", "n2", "n3"]


def test_two_managers_each_get_every_record_through_crashes(lab: Lab) -> None:
    """With 3 nodes and 2 managers, each manager's output equals every node's log exactly,
    although one manager and one node service are SIGKILLed mid-stream and restarted."""
    nodes = {n: lab.node(n) for n in NODES}
    m1 = lab.manager("m1")
    config = lab.root / "m2.toml"
    config.write_text(f'name = "m2"\nbase = "{lab.base("m2")}"\ncommit_records = 500\n')
    lab.manager("m2", "--config", str(config))
    total = 6000
    writer = Writer({n: lab.jlog(n) for n in NODES}, total, per_tick=15).start()

    wait_until(lambda: len(output_lines(lab.base("m1"), lab.cluster, "n1")) > 500, 30, "m1 data")
    m1.kill()
    wait_until(lambda: writer.written["n1"] > 3000, 30, "more writes while m1 is down")
    m1.start()
    wait_until(lambda: len(output_lines(lab.base("m2"), lab.cluster, "n2")) > 2000, 30, "m2 data")
    nodes["n2"].kill()
    wait_until(lambda: writer.written["n2"] > 4500, 30, "more writes while n2 is down")
    nodes["n2"].start()
    writer.join()
    expect_exact(lab.base("m1"), lab.cluster, NODES, total, 60)
    expect_exact(lab.base("m2"), lab.cluster, NODES, total, 60)
    # Both managers acknowledged everything: the nodes hold nothing back for them.
    for node in NODES:
        jlog = Jlog.open(lab.jlog(node))
        assert {s.name: s.pending for s in jlog.subscribers()} == {"m1": 0, "m2": 0}


def test_network_cut_and_restore_loses_and_duplicates_nothing(
    lab: Lab, tcp_proxy_factory: Callable[[str], TcpProxy]
) -> None:
    """A silent network cut between a node and the managers, then its repair, leaves every
    manager's output exact."""
    port = free_port()
    proxy = tcp_proxy_factory(f"127.0.0.1:{port}")
    lab.node("n1", "--listen", f"127.0.0.1:{port}", "--advertise", proxy.address)
    lab.manager("m1")
    lab.manager("m2")
    total = 4000
    writer = Writer({"n1": lab.jlog("n1")}, total, per_tick=20).start()
    wait_until(lambda: len(output_lines(lab.base("m1"), lab.cluster, "n1")) > 300, 30, "data")
    proxy.cut()
    cut_at = len(output_lines(lab.base("m1"), lab.cluster, "n1"))
    wait_until(lambda: writer.written["n1"] >= cut_at + 1500, 30, "writes during the cut")
    proxy.restore()
    writer.join()
    expect_exact(lab.base("m1"), lab.cluster, ["n1"], total, 60)
    expect_exact(lab.base("m2"), lab.cluster, ["n1"], total, 60)


def test_restart_cuts_an_unsaved_tail_and_ignores_a_lagging_checkpoint(lab: Lab) -> None:
    """A manager restarted after a crash cuts bytes its state does not cover and resumes from
    its own position even when the node's checkpoint lags behind it."""
    lab.node("n1", managers=("m1",))
    m1 = lab.manager("m1")
    with Jlog.open(lab.jlog("n1")).writer() as writer:
        writer.write_many([record("n1", i) for i in range(1000)])
    base = lab.base("m1")
    expect_exact(base, lab.cluster, ["n1"], 1000, 30)
    m1.kill()
    state = StreamState.from_json((base / ".mhafail-state" / "n1" / "mainlog.json").read_bytes())
    assert state.last_id == MessageId(0, 1000)
    assert state.file is not None
    # What a crash between write and state save leaves: bytes no state covers...
    with open(base / state.file, "ab") as out:
        out.write(record("n1", 1000) + b"\n" + b"torn half-rec")
    # ...and a node whose checkpoint never saw the last acknowledgements.
    jlog = Jlog.open(lab.jlog("n1"))
    jlog.set_checkpoint("m1", MessageId(0, 400))
    with jlog.writer() as writer:
        writer.write_many([record("n1", i) for i in range(1000, 1500)])
    m1.start()
    expect_exact(base, lab.cluster, ["n1"], 1500, 30)
    assert "cut" in m1.output()
