"""ZooKeeper ACL roles and cluster-root vetting: each attack of issue 11 (findings 1, 2),
performed with a raw kazoo client against a real ZooKeeper, fails."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl
from zk_attack import NODE, NODE_ID, OPERATOR, refused

from mhafail.coordination import Coordinator, Credentials, Membership, NodeInfo, Role
from mhafail.errors import AccessDenied, CoordinationError, InvalidArgument, UnsafeAcl
from mhafail.testing import ZooKeeperServer
from mhafail.vip import drain, move
from mhafail.vip._paths import Claim

pytestmark = pytest.mark.zookeeper

VIP = "198.18.0.50"

Factory = Callable[..., Coordinator]


@pytest.fixture
def credentialed(
    coordinator_factory: Factory, zk_cluster: str
) -> Iterator[tuple[Coordinator, Coordinator, str]]:
    """An operator-initialised cluster with a registered node holding a claim."""
    operator = coordinator_factory(credentials=OPERATOR)
    node = coordinator_factory(credentials=NODE)
    # Stopped below: a membership left running outlives its session and
    # logged "session is not live" through the rest of the test run.
    membership = Membership(coordinator=node, info=NodeInfo(name="n1")).start()
    claim = Claim(node="n1", session=node.session_id or 0, since=1.0)
    assert node.znodes.create(f"vips/{VIP}/owner", claim.to_json(), ephemeral=True, makepath=True)
    assert node.znodes.create(f"vips/{VIP}/declared/n1", b"{}", ephemeral=True, makepath=True)
    yield operator, node, f"/mhafail/{zk_cluster}"
    membership.stop()


def test_credential_less_client_cannot_touch_a_credentialed_cluster(
    credentialed: tuple[Coordinator, Coordinator, str], raw: Callable[..., Any]
) -> None:
    """Without credentials one can neither read, replace a claim, move, drain nor register."""
    _, _, base = credentialed
    attacker = raw()
    owner = f"{base}/vips/{VIP}/owner"
    assert refused(lambda: attacker.get(owner))
    assert refused(lambda: attacker.delete(owner))
    assert refused(lambda: attacker.set(owner, b'{"node": "evil", "since": 1}'))
    assert refused(lambda: attacker.create(f"{base}/targets/{VIP}", b'{"node": "n2"}'))
    assert refused(lambda: attacker.create(f"{base}/drained/n1", b'{"node": "n1"}'))
    fake = NodeInfo(name="evil", endpoints={"audit": "127.0.0.1:9"}).to_json()
    assert refused(lambda: attacker.create(f"{base}/members/evil", fake, ephemeral=True))
    assert refused(lambda: attacker.get_children(f"{base}/members"))


def test_node_role_cannot_move_drain_or_publish_config(
    credentialed: tuple[Coordinator, Coordinator, str], raw: Callable[..., Any]
) -> None:
    """A node's identity may claim and register, but not write targets, drains or config heads."""
    operator, node, base = credentialed
    operator.znodes.ensure("config/config/applied")
    operator.znodes.create("config/config/head", b'{"sha": "0"}')
    insider = raw(NODE)
    assert refused(lambda: insider.create(f"{base}/targets/{VIP}", b'{"node": "n1"}'))
    assert refused(lambda: insider.create(f"{base}/drained/n2", b'{"node": "n2"}'))
    assert refused(lambda: insider.set(f"{base}/config/config/head", b'{"sha": "1"}'))
    assert refused(lambda: insider.delete(f"{base}/config/config/head"))
    assert refused(lambda: insider.create(f"{base}/config/other", b""))
    assert refused(lambda: insider.set_acls(f"{base}/members", OPEN_ACL_UNSAFE))
    with pytest.raises(AccessDenied):
        move(node, VIP, "n1")
    with pytest.raises(AccessDenied):
        drain(node, "n1")
    # What a node must do still works: report its config state.
    assert node.znodes.create("config/config/applied/n1", b"{}") is not None
    assert node.znodes.set("config/config/applied/n1", b'{"sha": "0"}') is not None


def test_operator_role_may_move_and_drain(
    credentialed: tuple[Coordinator, Coordinator, str],
) -> None:
    """The operator's identity writes move targets and drain markers, readable by nodes."""
    operator, node, _ = credentialed
    move(operator, VIP, "n1")
    drain(operator, "n1")
    assert node.znodes.get(f"targets/{VIP}") is not None
    assert node.znodes.children("drained") == ["n1"]
    assert operator.role is Role.OPERATOR and node.role is Role.NODE


def test_every_created_znode_carries_the_policy(
    credentialed: tuple[Coordinator, Coordinator, str], raw: Callable[..., Any]
) -> None:
    """Folders created on the way (makepath) get their own path's ACL, not the leaf's."""
    operator, _, base = credentialed
    assert operator.znodes.acl_problems() == []
    reader = raw(OPERATOR)
    folder, _ = reader.get_acls(f"{base}/vips/{VIP}")
    claim, _ = reader.get_acls(f"{base}/vips/{VIP}/owner")
    node_perms = {a.id.id: a.perms for a in folder}[NODE_ID]
    assert node_perms == 1 | 4 | 8  # read, create, delete: claim and release
    assert {a.id.id: a.perms for a in claim}[NODE_ID] == 1  # nobody rewrites a claim


def test_squatted_cluster_root_is_refused_at_start(
    coordinator_factory: Factory, raw: Callable[..., Any], zk_cluster: str
) -> None:
    """A root, members and drained pre-created with open ACLs make every role refuse to start."""
    squatter = raw()
    base = f"/mhafail/{zk_cluster}"
    squatter.ensure_path("/mhafail")
    for path in (base, f"{base}/members", f"{base}/drained"):
        squatter.create(path, b"", acl=OPEN_ACL_UNSAFE)
    for credentials in (NODE, OPERATOR):
        with pytest.raises(UnsafeAcl, match=f"{base}.*world:anyone"):
            coordinator_factory(credentials=credentials)


def test_squatted_folder_under_a_proper_root_is_refused(
    coordinator_factory: Factory, raw: Callable[..., Any], zk_cluster: str
) -> None:
    """A squatter who re-ACLs the root after planting an open ``members`` is still caught."""
    squatter = raw()
    base = f"/mhafail/{zk_cluster}"
    squatter.ensure_path("/mhafail")
    squatter.create(base, b"", acl=OPEN_ACL_UNSAFE)
    squatter.create(f"{base}/members", b"", acl=OPEN_ACL_UNSAFE)
    proper = [make_digest_acl("ops", "op-secret", all=True)]
    squatter.set_acls(base, [*proper, make_digest_acl("mta", "node-secret", read=True)])
    with pytest.raises(UnsafeAcl, match=f"{base}/members"):
        coordinator_factory(credentials=NODE)


def test_foreign_identity_root_is_refused(
    coordinator_factory: Factory, raw: Callable[..., Any], zk_cluster: str
) -> None:
    """A root created by another identity (that lets our node read) is not our cluster."""
    squatter = raw(Credentials(user="evil", password="x"))
    base = f"/mhafail/{zk_cluster}"
    squatter.ensure_path("/mhafail")
    acl = [make_digest_acl("evil", "x", all=True), make_digest_acl("mta", "node-secret", read=True)]
    squatter.create(base, b"", acl=acl)
    with pytest.raises(UnsafeAcl, match="digest:evil"):
        coordinator_factory(credentials=NODE)


def test_root_with_look_alike_identities_is_refused_by_nodes(
    coordinator_factory: Factory, raw: Callable[..., Any], zk_cluster: str
) -> None:
    """A squatter using our user names with its own passwords lacks the operator's proof."""
    squatter = raw(Credentials(user="ops", password="guess"))
    base = f"/mhafail/{zk_cluster}"
    squatter.ensure_path("/mhafail")
    acl = [
        make_digest_acl("ops", "guess", all=True),
        make_digest_acl("mta", "node-secret", read=True),
    ]
    squatter.create(base, b"", acl=acl)
    with pytest.raises(UnsafeAcl, match="not created by an operator"):
        coordinator_factory(credentials=NODE)


def test_a_node_never_creates_the_cluster(coordinator_factory: Factory) -> None:
    """With node credentials a missing cluster root is an error naming ``mhafail init``."""
    with pytest.raises(CoordinationError, match="mhafail init"):
        coordinator_factory(credentials=NODE)


def test_open_cluster_is_an_explicit_choice_with_a_warning(
    coordinator_factory: Factory, zookeeper: ZooKeeperServer, caplog: pytest.LogCaptureFixture
) -> None:
    """No credentials and no open_acl is refused; open_acl logs one warning per cluster."""
    with pytest.raises(InvalidArgument, match="open_acl"):
        Coordinator(hosts=zookeeper.address, cluster="x")
    with pytest.raises(InvalidArgument, match="not both"):
        Coordinator(hosts=zookeeper.address, cluster="x", credentials=NODE, open_acl=True)
    with caplog.at_level(logging.WARNING, logger="mhafail.coordination"):
        coordinator_factory(open_acl=True)
        coordinator_factory(open_acl=True)
    warnings = [r for r in caplog.records if "WITHOUT ZooKeeper ACLs" in r.getMessage()]
    assert len(warnings) == 1


def test_open_client_cannot_join_a_credentialed_cluster(
    credentialed: tuple[Coordinator, Coordinator, str], coordinator_factory: Factory
) -> None:
    """An open coordinator on a credentialed cluster is refused with a hint to use --zk-auth."""
    with pytest.raises(AccessDenied, match="zk-auth"):
        coordinator_factory(open_acl=True)


def test_init_check_lists_planted_acls_and_repair_fixes_them(
    credentialed: tuple[Coordinator, Coordinator, str], raw: Callable[..., Any]
) -> None:
    """A znode an operator session planted with an open ACL is reported, then repaired."""
    operator, _, base = credentialed
    raw(OPERATOR).create(f"{base}/drained/n9", b"{}", acl=OPEN_ACL_UNSAFE)
    problems = operator.znodes.acl_problems()
    assert [p for p, _ in problems] == ["drained/n9"]
    assert operator.znodes.repair_acls() == 1
    assert operator.znodes.acl_problems() == []
    assert refused(lambda: raw().delete(f"{base}/drained/n9"))


def test_secrets_stay_out_of_reprs() -> None:
    """Neither Credentials nor a Coordinator's repr shows the password."""
    c = Coordinator(hosts="127.0.0.1:1", cluster="c", credentials=NODE)
    assert "node-secret" not in repr(NODE)
    assert "node-secret" not in repr(c)
    assert "node-secret" not in repr(
        Coordinator(hosts="h:1", cluster="c", credentials=("u", "node-secret"))
    )
