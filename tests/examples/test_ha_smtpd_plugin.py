"""The same failover test written as an application's author would: the plugin's fixtures only.

Nothing here comes from mhafail's own test helpers: the ``simulated_cluster``
fixture starts the MTA (``examples/ha_smtpd.py``) on three nodes, in network
namespaces as root and on loopback otherwise, and the test talks SMTP with
smtplib.
"""

from __future__ import annotations

import json
import smtplib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mhafail.config import ConfigRepository
from mhafail.testing import SimulatedCluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MTA = [
    "{python}", str(EXAMPLES / "ha_smtpd.py"), "--zk", "{zk}", "--cluster", "{cluster}",
    "--zk-auth", "{node_auth}", "--secret-file", "{secret_file}", "--node", "{node}",
    "--address", "{address}", "--port", "2525", "--root", "{shared}",
    "--config-dir", "{dir}/config", "--plumber", "{plumber}", "--session-timeout", "1.5",
    "--grace", "0.5",
    "--vip", "{net}.210/{prefix}@{interface},binding=out",
    "--vip", "{net}.200/{prefix}@{interface},follow=out",
]  # fmt: skip

pytestmark = pytest.mark.zookeeper


def test_a_killed_owner_loses_no_accepted_message(
    simulated_cluster: Callable[..., SimulatedCluster], tmp_path: Path
) -> None:
    """Messages 250'd by a node that is then SIGKILLed reach the relay exactly once."""
    cluster = simulated_cluster(MTA, nodes=3, config_repos=["mta"])
    record = tmp_path / "sink.jsonl"
    relay = f"{cluster.service_address}:2600"
    sink = [sys.executable, str(EXAMPLES / "sink.py"), "--listen", relay, "--record", str(record)]
    cluster.service(sink, name="sink")
    operator = cluster.coordinator()
    repo = ConfigRepository(
        name="mta", base=cluster["n1"].directory / "config", node="n1", coordinator=operator
    )
    head = repo.commit({"global/mta.toml": f'relay = "{relay}"\n'.encode()}, message="relay",
                       author="Test <t@example.org>")  # fmt: skip
    operator.stop()
    for node in cluster:
        node.wait_event(lambda e: e.get("sha") == head.sha, 20)

    vip = cluster.address(200)
    owner = next(n for n in cluster if any(e.get("address") == vip for e in n.events))
    accepted = []

    def send(first: int, last: int) -> None:
        for n in range(first, last):
            for attempt in range(200):
                key = f"{n}.{attempt}"  # a try without a 250 may still arrive: ids per try
                try:
                    with smtplib.SMTP(vip, 2525, timeout=5) as smtp:
                        data = f"X-Attempt: {key}\r\n\r\nhi\r\n"
                        smtp.sendmail("a@example.org", ["b@example.net"], data)
                    accepted.append(key)
                    break
                except (smtplib.SMTPException, OSError):
                    time.sleep(0.05)

    cluster.in_client(send, 0, 50)
    owner.kill()
    cluster.in_client(send, 50, 100)  # retries until a survivor serves the VIP

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        stored = [json.loads(line) for line in record.read_text().splitlines()]
        if {r["attempt"] for r in stored} >= set(accepted):
            break
        time.sleep(0.1)
    fresh = [r["attempt"] for r in stored if not r["repeat"]]
    assert len(accepted) == 100
    assert all(fresh.count(key) == 1 for key in accepted)  # each exactly once

    survivor = next(n for n in cluster if n.running)
    began = time.monotonic()
    assert survivor.terminate() == 0
    assert time.monotonic() - began < 5.0  # SIGTERM: VIPs handed over, stopped within 5 s
