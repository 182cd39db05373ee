"""`mhafail console` processes: one beside each manager; a dead one loses nothing; bounded stop."""

from __future__ import annotations

import time

import pytest
from console_lab import Client, Lab, console_process, operator_client, wait_request, wait_until

pytestmark = pytest.mark.zookeeper


def _port(proc: object) -> int:
    event = proc.wait_event(lambda e: e.get("event") == "ready", 20)  # type: ignore[attr-defined]
    return int(event["url"].rstrip("/").rsplit(":", 1)[1])


def test_console_beside_another_manager_survives_a_dead_one(fresh_lab: Lab) -> None:
    """A request sent through console A, then SIGKILLed, is answered once and shown by B."""
    lab = fresh_lab
    a = console_process(lab.zk, lab.cluster, "console-pa", lab.tmp).start(ready=None)
    b = console_process(lab.zk, lab.cluster, "console-pb", lab.tmp).start(ready=None)
    try:
        client_a, client_b = Client(_port(a)), Client(_port(b))
        assert client_a.login("ops", "ops-secret-password")[0] == 200
        assert client_b.login("ops", "ops-secret-password")[0] == 200
        ping = {"command": "ping", "target": {"all": True}}
        status, doc = client_a.post("/api/v1/commands", ping)
        assert status == 200
        a.kill()
        result = wait_request(client_b, doc["request"])
        assert sorted(result["replies"]) == ["mta1", "mta2", "mta3"]
        assert all(r["status"] == "ok" for r in result["replies"].values())
        assert result["request"]["requester"]["manager"] == "console-pa.ops"
        history = client_b.get("/api/v1/commands")[1]["requests"]
        assert [r["replies"] for r in history if r["id"] == doc["request"]] == [3]
        members = client_b.get("/api/v1/cluster")[1]["members"]
        assert [m["name"] for m in members] == ["mta1", "mta2", "mta3"]
        # The dead console's manager registration goes with its session.
        wait_until(
            lambda: client_b.get("/api/v1/cluster")[1]["console"]["managers"]
            == ["console-a", "console-pb"], 10, "console-pa's registration gone",
        )  # fmt: skip
    finally:
        a.kill()
        b.terminate()


def test_sigterm_stops_the_console_within_five_seconds(fresh_lab: Lab) -> None:
    """SIGTERM ends `mhafail console` with status 0 in under 5 s, with a logged-in browser."""
    lab = fresh_lab
    proc = console_process(lab.zk, lab.cluster, "console-term", lab.tmp).start(ready=None)
    client = Client(_port(proc))
    assert client.login("ops", "ops-secret-password")[0] == 200
    began = time.monotonic()
    status = proc.terminate()
    took = time.monotonic() - began
    assert status == 0 and took < 5.0, (status, took)


def test_node_killed_disappears_from_the_api(fresh_lab: Lab) -> None:
    """A SIGKILLed node leaves /api/v1/cluster once its session expires."""
    client = operator_client(fresh_lab)
    fresh_lab.nodes["mta2"].kill()

    def gone() -> bool:
        return [m["name"] for m in client.get("/api/v1/cluster")[1]["members"]] == ["mta1", "mta3"]

    wait_until(gone, 15, "mta2 gone")
