"""examples/ha_smtpd.py end to end: real SMTP clients through VIPs while nodes fail.

Three MTA processes (the example, unchanged), a ZooKeeper, the example sink
as the downstream relay. smtplib clients stream to two listener VIPs and
``swaks`` (Debian's package) sends during a failover, while the nodes go
through a SIGKILL, a SIGSTOP past the session timeout, a planned move and
a rejoin. Every message a client was told ``250`` for must be stored by the
sink exactly once; a message without a ``250`` may be lost. A resend the
sink recognises (the same queue id twice) may only come from a delivery in
flight on a node that was killed or frozen (docs/spool.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
sys.path.insert(0, str(EXAMPLES))

from demo import MTA, settings  # noqa: E402 - the examples are scripts, not a package
from ha_smtpd import check_settings  # noqa: E402
from mta_client import Stream, read_sink, stream, tally, wait_delivered  # noqa: E402

from mhafail.config import ConfigRepository, syntax_check  # noqa: E402
from mhafail.testing import SimNode, SimulatedCluster  # noqa: E402

pytestmark = [pytest.mark.zookeeper, pytest.mark.root]
PORT = 2525


def owner_of(cluster: SimulatedCluster, address: str) -> SimNode:
    """The node whose latest event about ``address`` is an acquire."""
    for node in cluster:
        mine = [e for e in node.events if e.get("address") == address]
        if node.running and mine and mine[-1]["event"] == "acquire":
            return node
    raise AssertionError(f"nobody owns {address}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something true."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def new_owner(cluster: SimulatedCluster, address: str, since: float) -> SimNode | None:
    """A running node that acquired ``address`` after ``since``."""
    for node in cluster:
        if node.running and any(
            e["event"] == "acquire" and e.get("address") == address and e["t"] > since
            for e in node.events
        ):
            return node
    return None


def swaks_until_accepted(cluster: SimulatedCluster, vip: str, timeout: float) -> list[str]:
    """Run swaks against ``vip`` until one try gets a 250; return every try's attempt id."""
    tries: list[str] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        attempt = f"swaks.{len(tries) + 1}"
        tries.append(attempt)
        argv = [
            *cluster.client_prefix, "swaks", "--server", vip, "--port", str(PORT),
            "--from", "swaks@example.org", "--to", "user@example.net",
            "--header", f"X-Attempt: {attempt}", "--timeout", "5", "--silent", "2",
        ]  # fmt: skip
        if subprocess.run(argv, capture_output=True, check=False).returncode == 0:
            return tries
        time.sleep(0.1)
    raise AssertionError(f"swaks never got a 250 from {vip}")


@pytest.mark.skipif(shutil.which("swaks") is None, reason="needs swaks: apt-get install swaks")
def test_every_accepted_message_is_delivered_once_through_kill_stop_move_and_rejoin(
    tmp_path: Path,
) -> None:
    """Through SIGKILL, SIGSTOP, a planned move and a rejoin no 250'd message is lost or doubled."""
    cluster = SimulatedCluster(
        command=MTA, nodes=3, config_repos=["mta"], workdir=tmp_path / "cluster"
    )
    with cluster:
        sink_record = tmp_path / "sink.jsonl"
        sink_addr = f"{cluster.service_address}:2600"
        cluster.service(
            ["{python}", str(EXAMPLES / "sink.py"), "--listen", sink_addr, "--record",
             str(sink_record)], name="sink",
        )  # fmt: skip
        operator = cluster.coordinator()
        try:
            repo = ConfigRepository(
                name="mta", base=cluster["n1"].directory / "config", node="n1",
                coordinator=operator, validators=(syntax_check, check_settings),
            )  # fmt: skip
            v1 = repo.commit(settings(sink_addr, banner="t"), message="m", author="T <t@x>")
            for node in cluster:
                node.wait_event(lambda e: e.get("sha") == v1.sha, 20)
        finally:
            operator.stop()

        vips = [cluster.address(201), cluster.address(202)]
        streams = [Stream(tag="a"), Stream(tag="b")]
        clients = [
            threading.Thread(
                target=cluster.in_client, args=(stream, vip, PORT, 100000, state), daemon=True
            )
            for vip, state in zip(vips, streams, strict=True)
        ]
        for client in clients:
            client.start()
        faulted: set[str] = set()

        def progress(n: int) -> None:
            goal = [s.sent + n for s in streams]
            wait_for(lambda: all(s.sent >= g for s, g in zip(streams, goal, strict=True)), 60,
                     "the clients to make progress")  # fmt: skip

        progress(40)
        # 1. SIGKILL the owner of the first VIP; swaks sends during the failover.
        killed = owner_of(cluster, vips[0])
        killed.kill()
        faulted.add(killed.node)
        at = time.monotonic()
        swaks_tries = swaks_until_accepted(cluster, vips[0], 30)
        wait_for(lambda: new_owner(cluster, vips[0], at), 30, "a new owner after SIGKILL")
        progress(40)

        # 2. SIGSTOP the owner of the second VIP past its session; it must be fenced.
        frozen = owner_of(cluster, vips[1])
        frozen.pause()
        faulted.add(frozen.node)
        at = time.monotonic()
        wait_for(lambda: new_owner(cluster, vips[1], at), 30, "a new owner after SIGSTOP")
        time.sleep(1.0)
        frozen.resume()
        frozen.wait_event(lambda e: e["event"] == "lock" and e["state"] == "fenced", 20)
        frozen.wait_event(
            lambda e: e["event"] == "lock" and e["t"] > at and e["state"] == "held", 30
        )
        progress(40)

        # 3. A planned move: the first VIP's binding goes to another node, its listener follows.
        source = owner_of(cluster, vips[0])
        target = next(n for n in cluster if n.running and n is not source)
        at = time.monotonic()
        cluster.operator_command(["vip", "move", cluster.address(211), target.node, "--wait", "20"])
        wait_for(lambda: new_owner(cluster, vips[0], at) is target, 20, "the planned move")
        progress(40)

        # 4. The killed node rejoins (immediate rebalance gives it a VIP pair back).
        killed.start()
        killed.wait_event(lambda e: e["event"] == "acquire", 30)
        progress(40)

        for state in streams:
            state.stop.set()
        for client in clients:
            client.join(30)
        attempts = [a for s in streams for a in s.attempts]
        records = wait_delivered(sink_record, attempts, 60)
        result = tally(attempts, records)
        assert result.accepted > 300
        assert result.lost == []
        assert result.duplicated == []
        assert result.delivered == result.accepted
        # swaks: its accepted try arrived exactly once (earlier tries may or may not have).
        stored = [r for r in read_sink(sink_record) if not r["repeat"]]
        assert [r["attempt"] for r in stored].count(swaks_tries[-1]) == 1
        first_from = {}
        for r in records:
            first_from.setdefault(r["queue_id"], r["node"])
        # Resends are SMTP's at-least-once (a relay reply lost to a kill, a
    # freeze or, under load, a timeout); the sink stores each queue id once.
    resent = {first_from[r["queue_id"]] for r in records if r["repeat"]}
    print(f"resends first delivered by {sorted(resent)} (faulted: {sorted(faulted)})")
