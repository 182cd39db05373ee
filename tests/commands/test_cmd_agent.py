"""CommandAgent and CommandClient against a real ZooKeeper, in one process."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mhafail.commands import (
    Arg,
    ArgKind,
    CommandAgent,
    CommandClient,
    CommandContext,
    ReplyStatus,
    register_builtins,
)
from mhafail.commands._model import RESULTS, request_path
from mhafail.errors import CommandInvalidArgument, UnknownRequest
from mhafail.jlog import Jlog, Whence
from mhafail.spool import Envelope, NodePaths, Spool, SpoolLock

pytestmark = pytest.mark.zookeeper

AgentFactory = Callable[..., CommandAgent]


def started(agent_factory: AgentFactory, node: str, **kwargs: Any) -> CommandAgent:
    agent = agent_factory(node, **kwargs)
    register_builtins(agent)
    return agent


def test_broadcast_ping_gets_one_ok_reply_per_node(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """A broadcast ping is answered OK by each of three nodes, each with its own name."""
    for name in ("n1", "n2", "n3"):
        started(agent_factory, name).start()
    result = client.wait(client.broadcast("ping"), 10)
    assert result.complete
    assert sorted(result.replies) == ["n1", "n2", "n3"]
    assert all(r.status is ReplyStatus.OK for r in result.replies.values())
    assert result.replies["n2"].output["pong"] == "n2"


def test_unicast_and_subcluster_reach_only_their_nodes(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """Unicast asks one node; a label selector asks exactly the nodes carrying the label."""
    started(agent_factory, "e1", roles=("mta", "dc=east")).start()
    started(agent_factory, "e2", roles=("mta", "dc=east")).start()
    started(agent_factory, "w1", roles=("mta", "dc=west")).start()
    one = client.wait(client.unicast("w1", "ping"), 10)
    assert list(one.replies) == ["w1"]
    east = client.wait(client.subcluster("dc=east,role=mta", "ping"), 10)
    assert sorted(east.replies) == ["e1", "e2"] and east.complete
    by_glob = client.wait(client.subcluster("e*", "ping"), 10)
    assert sorted(by_glob.replies) == ["e1", "e2"]
    with pytest.raises(CommandInvalidArgument, match="no live member matches"):
        client.subcluster("dc=north", "ping")
    with pytest.raises(CommandInvalidArgument, match="not a live member"):
        client.unicast("nobody", "ping")


def test_unknown_command_and_bad_arguments_are_refused_before_running(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """Unknown commands, unknown/missing/mistyped/oversized arguments get REFUSED; nothing runs."""
    agent = started(agent_factory, "n1")
    calls: list[dict[str, Any]] = []

    @agent.command("app.greet", [Arg("name", max_length=8), Arg("times", ArgKind.INT, maximum=3)])
    def greet(ctx: CommandContext, args: dict[str, Any]) -> Any:
        calls.append(args)
        return "hi " + args["name"] * args["times"]

    agent.start()
    cases = {
        "unknown": ("app.nothing", {}),
        "extra": ("app.greet", {"name": "a", "times": 1, "evil": "x"}),
        "missing": ("app.greet", {"name": "a"}),
        "type": ("app.greet", {"name": "a", "times": "many"}),
        "range": ("app.greet", {"name": "a", "times": 4}),
        "long": ("app.greet", {"name": "a" * 9, "times": 1}),
    }
    for label, (command, args) in cases.items():
        reply = client.wait(client.unicast("n1", command, args), 10).replies["n1"]
        assert reply.status is ReplyStatus.REFUSED, label
        assert reply.error, label
    assert calls == []
    ok = client.wait(client.unicast("n1", "app.greet", {"name": "bo", "times": "2"}), 10)
    assert ok.replies["n1"].output == "hi bobo"
    assert calls == [{"name": "bo", "times": 2}]
    # Oversized arguments never leave the manager.
    with pytest.raises(CommandInvalidArgument, match="byte cap"):
        client.unicast("n1", "app.greet", {"name": "x" * 17000, "times": 1})


def test_deadline_cancellation_and_output_cap(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """A handler past its deadline answers TIMEOUT, a cancelled one CANCELLED, big output is cut."""
    agent = started(agent_factory, "n1")
    stopped: list[str] = []
    gate = threading.Event()

    @agent.command("app.wait", [Arg("seconds", ArgKind.FLOAT)])
    def wait(ctx: CommandContext, args: dict[str, Any]) -> Any:
        gate.set()
        ctx.cancelled.wait(args["seconds"])
        stopped.append(ctx.request.id)
        return "woke"

    @agent.command("app.big")
    def big(ctx: CommandContext, args: dict[str, Any]) -> Any:
        return "x" * 5000

    agent.start()
    slow = client.unicast("n1", "app.wait", {"seconds": 30}, timeout=0.3)
    reply = client.wait(slow, 10).replies["n1"]
    assert reply.status is ReplyStatus.TIMEOUT
    gate.clear()
    rid = client.unicast("n1", "app.wait", {"seconds": 30})
    assert gate.wait(5)
    assert client.cancel(rid)
    reply = client.wait(rid, 10).replies["n1"]
    assert reply.status is ReplyStatus.CANCELLED and "requester" in reply.error
    assert len(stopped) == 2  # both handlers were told to stop
    cut = client.wait(client.unicast("n1", "app.big", max_output=100), 10).replies["n1"]
    assert cut.status is ReplyStatus.OK and cut.truncated
    assert len(json.dumps(cut.output)) <= 100


def test_expired_request_is_answered_expired_not_run(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """A node that first sees a request after its expiry answers EXPIRED and does not run it."""
    agent = started(agent_factory, "n1")
    rid = client.unicast("n1", "ping", ttl=0.05)
    time.sleep(0.2)
    agent.start()
    reply = client.wait(rid, 10).replies["n1"]
    assert reply.status is ReplyStatus.EXPIRED
    assert agent.stats.ran == 0


def test_replies_are_cached_until_collected_or_expired(
    agent_factory: AgentFactory, client: CommandClient, coordinator_factory: Callable[..., Any]
) -> None:
    """Any other manager reads replies by id; collect removes them; gc removes expired ones."""
    started(agent_factory, "n1").start()
    rid = client.unicast("n1", "ping")
    client.wait(rid, 10)
    other = CommandClient(coordinator=coordinator_factory(), name="m2")
    assert other.get(rid).replies["n1"].status is ReplyStatus.OK
    assert [s.id for s in other.list_requests()] == [rid]
    assert other.collect(rid).complete
    with pytest.raises(UnknownRequest):
        client.get(rid)
    short = client.unicast("n1", "ping", ttl=0.1, keep=0.1)
    client.wait(short, 10)
    time.sleep(0.3)
    assert other.gc() == 1
    with pytest.raises(UnknownRequest):
        client.get(short)
    assert client.coordinator.znodes.children(RESULTS) == []


def test_fifty_concurrent_requests_each_run_once(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """50 requests sent at once to two nodes each run exactly once per node."""
    counts: dict[str, int] = {}
    lock = threading.Lock()
    for name in ("n1", "n2"):
        agent = started(agent_factory, name)

        @agent.command("app.count")
        def count(ctx: CommandContext, args: dict[str, Any]) -> Any:
            with lock:
                key = f"{ctx.node}/{ctx.request.id}"
                counts[key] = counts.get(key, 0) + 1
            return None

        agent.start()
    ids: list[str] = []
    senders = [
        threading.Thread(target=lambda: ids.append(client.broadcast("app.count")))
        for _ in range(50)
    ]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    assert len(set(ids)) == 50
    for rid in ids:
        assert client.wait(rid, 20).complete
    assert len(counts) == 100 and set(counts.values()) == {1}


def test_restarted_agent_never_runs_a_request_twice(
    agent_factory: AgentFactory, client: CommandClient, tmp_path: Path
) -> None:
    """An agent stopped mid-command and replaced (same state dir) answers ABANDONED, no rerun."""
    runs: list[str] = []
    first = started(agent_factory, "n1")
    gate = threading.Event()

    @first.command("app.slow")
    def slow(ctx: CommandContext, args: dict[str, Any]) -> Any:
        runs.append(ctx.request.id)
        gate.set()
        ctx.cancelled.wait(30)
        return None

    first.start()
    rid = client.unicast("n1", "app.slow")
    assert gate.wait(5)
    # The reply of the first run is never sent: as if the process died here.
    first._stopping = True
    first._cancel_all("simulated crash")
    time.sleep(0.2)
    client.coordinator.znodes.delete(f"{RESULTS}/{rid}/replies/n1")
    second = CommandAgent(coordinator=first.coordinator, node="n1", state_dir=tmp_path / "n1")
    second.register("app.slow", slow)
    second.start()
    try:
        reply = client.wait(rid, 10).replies["n1"]
    finally:
        second.stop()
    assert reply.status is ReplyStatus.ABANDONED
    assert runs == [rid]


def test_malformed_request_is_skipped_and_reported(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """A garbage request znode is skipped (counted), and later requests still run."""
    agent = started(agent_factory, "n1")
    agent.start()
    client.broadcast("ping")  # creates the layout
    z = client.coordinator.znodes
    z.create(request_path("0000000000001-aaaaaaaaaaaa"), b"[" * 5000)
    z.create(request_path("0000000000002-aaaaaaaaaaaa"), b'{"id": 1}')
    reply = client.wait(client.unicast("n1", "ping"), 10).replies["n1"]
    assert reply.status is ReplyStatus.OK
    assert agent.stats.malformed == 2
    assert len(client.list_requests()) == 2  # the garbage is not listed


def test_every_execution_is_in_the_audit_jlog(
    agent_factory: AgentFactory, client: CommandClient, tmp_path: Path
) -> None:
    """The audit jlog records who ran what with which arguments, and the outcome."""
    agent = started(agent_factory, "n1")
    agent.start()
    rid = client.unicast("n1", "ping")
    client.wait(rid, 10)
    refused = client.unicast("n1", "ping", {"x": 1})
    client.wait(refused, 10)
    tail = Jlog.open(tmp_path / "n1" / "commands.jlog").tail(start=Whence.BEGIN)
    records = [json.loads(m.payload) for m in tail]
    events = [(r["id"], r["event"]) for r in records]
    assert events == [(rid, "started"), (rid, "ok"), (refused, "refused")]
    assert records[0]["user"] == "(open)" and records[0]["command"] == "ping"
    assert records[2]["args"] == {"x": 1}


def test_agent_without_zookeeper_accepts_nothing(
    agent_factory: AgentFactory, client: CommandClient, coordinator_factory: Callable[..., Any]
) -> None:
    """With its coordinator stopped (no lease) an agent neither claims nor runs a request."""
    coordinator = coordinator_factory()
    agent = started(agent_factory, "n1", coordinator=coordinator)
    agent.start()
    client.wait(client.unicast("n1", "ping"), 10)
    coordinator.stop()
    rid = client.send("ping", nodes=["n1"])
    time.sleep(0.5)
    assert client.get(rid).pending == ("n1",)
    assert agent.stats.ran == 1


def test_trace_reports_every_step_of_a_request_in_order(
    agent_factory: AgentFactory, client: CommandClient
) -> None:
    """The trace hook sees pass, seen, marked, claimed, started, done, replied, in time order."""
    steps: list[tuple[str, str, float]] = []
    started(agent_factory, "n1", trace=lambda *step: steps.append(step)).start()
    rid = client.unicast("n1", "ping")
    client.wait(rid, 10)
    mine = [(step, at) for step, r, at in steps if r == rid]
    names = ["pass", "seen", "marked", "claimed", "started", "done", "replied"]
    assert [s for s, _ in mine] == names
    assert [at for _, at in mine] == sorted(at for _, at in mine)


def test_spool_status_reports_the_nodes_spool(
    agent_factory: AgentFactory,
    client: CommandClient,
    coordinator_factory: Callable[..., Any],
    zk_cluster: str,
    tmp_path: Path,
) -> None:
    """With a spool wired in, spool.status answers its message count, due count, lock and token;
    without one the command does not exist."""
    coordinator = coordinator_factory()
    lock = SpoolLock(coordinator=coordinator, paths=NodePaths(tmp_path, zk_cluster, "n1").create())
    token = lock.acquire(5)
    spool = Spool(directory=lock.paths.spool, node="n1", fence=lock, group_commit=False).open()
    try:
        for _ in range(3):
            spool.put(Envelope(sender="a@example.org", recipients=("b@example.net",)), b"hi")
        agent = agent_factory("n1", coordinator=coordinator)
        assert "spool.status" in register_builtins(agent, spool=spool)
        agent.start()
        plain = started(agent_factory, "n2")
        plain.start()
        result = client.wait(client.broadcast("spool.status", {"limit": "2"}), 10)
        status = result.replies["n1"].output
        assert status["messages"] == 3 and status["due"] == 2 and status["lock"] == "held"
        assert status["token"] == token and status["fence_valid"] is True
        assert result.replies["n2"].status is ReplyStatus.REFUSED
    finally:
        spool.close()
        lock.release()
