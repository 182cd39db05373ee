"""Who may enqueue and answer commands: each attack runs with a raw kazoo client
against a real ZooKeeper and fails (ZooKeeper refuses it, not just our code)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from zk_attack import NODE, NODE_ID, OP_ID, OPERATOR, refused

from mhafail.commands import CommandAgent, CommandClient, ReplyStatus, register_builtins
from mhafail.commands._model import claim_path, reply_path, request_path
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.coordination._acl import AclPolicy
from mhafail.errors import AccessDenied

pytestmark = pytest.mark.zookeeper


class Cluster(NamedTuple):
    """The ``cluster`` fixture: operator client, node agent, answered request, root, runs."""

    client: CommandClient
    agent: CommandAgent
    rid: str
    base: str
    runs: list[str]


@pytest.fixture
def cluster(
    coordinator_factory: Callable[..., Coordinator], zk_cluster: str, tmp_path: Path
) -> Iterator[Cluster]:
    """A credentialed cluster: an operator's client, a node's agent, an answered request."""
    operator = coordinator_factory(credentials=OPERATOR)
    node = coordinator_factory(credentials=NODE)
    membership = Membership(coordinator=node, info=NodeInfo(name="n1")).start()
    agent = CommandAgent(coordinator=node, node="n1", state_dir=tmp_path / "n1")
    runs: list[str] = []
    agent.register("app.once", lambda ctx, args: runs.append(ctx.request.id))
    register_builtins(agent)
    agent.start()
    client = CommandClient(coordinator=operator, name="m1").start()
    rid = client.unicast("n1", "app.once")
    assert client.wait(rid, 10).replies["n1"].status is ReplyStatus.OK
    yield Cluster(client, agent, rid, f"/mhafail/{zk_cluster}", runs)
    client.stop()
    agent.stop()
    membership.stop()


FORGED = b'{"id":"%s","node":"n1","status":"ok","output":"forged","started":1,"finished":1}'


def test_credential_less_client_can_neither_enqueue_read_nor_forge(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    """Without credentials: no request, no read, no claim, no reply, no delete."""
    client, _, rid, base, _ = cluster
    pending = client.send("app.once", nodes=["n9"])  # nobody answers: it stays for nodes
    attacker = raw()
    new = "1700000000000-0123456789ab"
    assert refused(lambda: attacker.create(f"{base}/{request_path(new)}", b"{}"))
    assert refused(lambda: attacker.get(f"{base}/{request_path(pending)}"))
    assert refused(lambda: attacker.get(f"{base}/commands/results/{rid}"))  # the kept copy
    assert refused(lambda: attacker.set(f"{base}/{request_path(pending)}", b"{}"))
    assert refused(lambda: attacker.set(f"{base}/commands/results/{rid}", b"{}"))
    assert refused(lambda: attacker.set(f"{base}/{reply_path(rid, 'n1')}", FORGED % rid.encode()))
    assert refused(lambda: attacker.create(f"{base}/{reply_path(rid, 'n2')}", b"{}"))
    assert refused(lambda: attacker.create(f"{base}/{claim_path(rid, 'n2')}", b"{}"))
    assert refused(lambda: attacker.delete(f"{base}/{claim_path(rid, 'n1')}"))


def test_node_role_cannot_enqueue_forge_or_replay(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    """A node's identity may not create or rewrite requests, rewrite or delete a reply or claim."""
    client, agent, rid, base, runs = cluster
    pending = client.send("app.once", nodes=["n9"])  # nobody answers: it stays for nodes
    insider = raw(NODE)
    data, _ = insider.get(f"{base}/{request_path(pending)}")  # nodes read requests
    new = "1700000000000-0123456789ab"
    # Enqueue: a new request, or a copy of an old one under a new id.
    assert refused(lambda: insider.create(f"{base}/{request_path(new)}", data))
    assert refused(lambda: insider.create(f"{base}/commands/results/{new}", b""))
    # Widen an existing request to more nodes or another command.
    assert refused(
        lambda: insider.set(f"{base}/{request_path(pending)}", data.replace(b"n9", b"n1"))
    )
    assert refused(lambda: insider.set(f"{base}/commands/results/{rid}", data))
    # Forge a result: rewrite or withdraw the node's answer.
    assert refused(lambda: insider.set(f"{base}/{reply_path(rid, 'n1')}", FORGED % rid.encode()))
    assert refused(lambda: insider.delete(f"{base}/{reply_path(rid, 'n1')}"))
    # Replay: undo the claim (and the reply) so the node would take the request again.
    assert refused(lambda: insider.delete(f"{base}/{claim_path(rid, 'n1')}"))
    assert refused(lambda: insider.delete(f"{base}/{request_path(pending)}"))
    assert refused(lambda: insider.delete(f"{base}/commands/results/{rid}/replies"))
    # Through the library: a CommandClient with node credentials is refused by ZooKeeper.
    with pytest.raises(AccessDenied):
        CommandClient(coordinator=agent.coordinator).unicast("n1", "ping")
    assert client.get(rid).replies["n1"].output is None
    assert runs == [rid]


def test_replayed_request_is_not_run_twice_even_by_an_operator(
    cluster: Cluster, raw: Callable[..., Any]
) -> None:
    """Re-creating an answered request (same id, claims and replies gone) does not rerun it."""
    client, _, rid, base, runs = cluster
    root = raw(OPERATOR)  # even the operator's identity: the local marker still says no
    data, _ = root.get(f"{base}/commands/results/{rid}")  # the copy managers keep
    client.delete(rid)
    time.sleep(0.5)  # let the agent see it gone (else it keeps it as done: also no rerun)
    policy = AclPolicy(operators=(OP_ID,), nodes=(NODE_ID,))
    for path in (f"commands/results/{rid}", claim_path(rid), reply_path(rid)):
        root.create(f"{base}/{path}", b"", acl=policy.acl_for(path))
    path = request_path(rid)
    root.create(f"{base}/{path}", data, acl=policy.acl_for(path))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not root.get_children(f"{base}/{reply_path(rid)}"):
        time.sleep(0.05)
    assert client.get(rid).replies["n1"].status is ReplyStatus.ABANDONED
    assert runs == [rid]


def test_node_answers_in_its_own_name_only_where_acls_allow(
    cluster: Cluster,
) -> None:
    """With node credentials the agent still claims and answers (the node role's one right)."""
    client, *_ = cluster
    result = client.wait(client.unicast("n1", "ping"), 10)
    assert result.replies["n1"].status is ReplyStatus.OK
    drain = client.wait(client.unicast("n1", "vip.drain"), 10).replies["n1"]
    assert drain.status is ReplyStatus.ERROR and "AccessDenied" in drain.error
