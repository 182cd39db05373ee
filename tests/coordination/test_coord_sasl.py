"""SASL (DIGEST-MD5) identities against a real ZooKeeper started with a JAAS config:
the roles, the ACLs (``sasl:<user>``), root vetting and the root proof hold as with digest."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kazoo.exceptions import NodeExistsError
from kazoo.security import OPEN_ACL_UNSAFE
from zk_attack import RawClients, refused

from mhafail.cli import main
from mhafail.coordination import (
    ConnectionState,
    Coordinator,
    Credentials,
    Membership,
    NodeInfo,
    Role,
    write_credentials_pair,
)
from mhafail.coordination import _auth as auth_module
from mhafail.coordination._acl import ALL, READ, ROOT_ACL, AclPolicy, acl_id, to_kazoo
from mhafail.coordination._auth import digest_id, sasl_id
from mhafail.errors import AccessDenied, InvalidArgument, UnsafeAcl
from mhafail.testing import ZooKeeperServer
from mhafail.testing._ports import unique_suffix
from mhafail.testing._zookeeper import INSTALL_HINT, zookeeper_available
from mhafail.testing.plugin import skip_or_fail
from mhafail.vip import drain, move
from mhafail.vip._paths import Claim

USERS = {"ops": "op-secret", "mta": "node-secret"}
OP_ID = sasl_id("ops", "op-secret")
NODE_ID = sasl_id("mta", "node-secret")
OPERATOR = Credentials(
    user="ops", password="op-secret", operators=(OP_ID,), nodes=(NODE_ID,), sasl="DIGEST-MD5"
)
NODE = Credentials(
    user="mta", password="node-secret", operators=(OP_ID,), nodes=(NODE_ID,), sasl="DIGEST-MD5"
)
VIP = "198.18.0.60"

Factory = Callable[..., Coordinator]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[Role, Path]:
    """An operator and a node SASL file made by ``write_credentials_pair(sasl=True)``."""
    return write_credentials_pair(tmp_path_factory.mktemp("auth") / "auth", sasl=True)


@pytest.fixture(scope="module")
def sasl_zookeeper(generated: dict[Role, Path]) -> Iterator[ZooKeeperServer]:
    """A ZooKeeper whose JAAS Server section knows ``ops``, ``mta`` and the generated users."""
    if not zookeeper_available():
        skip_or_fail(INSTALL_HINT)
    users = dict(USERS)
    for path in generated.values():
        creds = Credentials.from_file(path)
        users[creds.user] = creds.password
    server = ZooKeeperServer(tick_time=100, sasl_users=users)
    try:
        yield server.start()
    finally:
        server.cleanup()


@pytest.fixture
def cluster() -> str:
    """A fresh cluster name."""
    return f"s{unique_suffix()}"


@pytest.fixture
def make(sasl_zookeeper: ZooKeeperServer, cluster: str) -> Iterator[Factory]:
    """Started coordinators on the SASL server; stopped after the test."""
    made: list[Coordinator] = []

    def factory(credentials: Credentials) -> Coordinator:
        coordinator = Coordinator(
            hosts=sasl_zookeeper.address,
            cluster=cluster,
            session_timeout=2.0,
            connect_timeout=5.0,
            credentials=credentials,
        )
        made.append(coordinator)
        return coordinator.start()

    yield factory
    for coordinator in reversed(made):
        coordinator.stop()


@pytest.fixture
def raw(sasl_zookeeper: ZooKeeperServer) -> Iterator[Callable[..., Any]]:
    """Raw kazoo clients (the attacker), optionally logged in with SASL; closed after the test."""
    clients = RawClients(sasl_zookeeper.address)

    def factory(user: str | None = None) -> Any:
        sasl = None
        if user is not None:
            sasl = {"mechanism": "DIGEST-MD5", "username": user, "password": USERS[user]}
        return clients(sasl_options=sasl)

    yield factory
    clients.close()


@pytest.fixture
def claimed(make: Factory, cluster: str) -> Iterator[tuple[Coordinator, Coordinator, str]]:
    """An operator-created SASL cluster where a SASL node registered and claimed a VIP."""
    operator = make(OPERATOR)
    node = make(NODE)
    membership = Membership(coordinator=node, info=NodeInfo(name="n1"))
    membership.start()
    claim = Claim(node="n1", session=node.session_id or 0, since=1.0)
    assert node.znodes.create(f"vips/{VIP}/owner", claim.to_json(), ephemeral=True, makepath=True)
    assert node.znodes.create(f"vips/{VIP}/declared/n1", b"{}", ephemeral=True, makepath=True)
    yield operator, node, f"/mhafail/{cluster}"
    membership.stop()


@pytest.mark.zookeeper
def test_sasl_node_registers_and_claims_under_sasl_acls(
    claimed: tuple[Coordinator, Coordinator, str], raw: Callable[..., Any]
) -> None:
    """A SASL node registers and claims; the znodes carry ``sasl:`` ACLs with the role's rights."""
    operator, node, base = claimed
    assert node.role is Role.NODE and operator.role is Role.OPERATOR
    assert node.znodes.children("members") == ["n1"]
    acls, _ = raw("ops").get_acls(f"{base}/vips/{VIP}/owner")
    assert {(a.id.scheme, a.id.id): a.perms for a in acls} == {
        ("sasl", "ops"): ALL,
        ("sasl", "mta"): READ,
    }
    assert operator.znodes.acl_problems() == []
    root = json.loads(raw("mta").get(base)[0])
    assert root["operator"] == "sasl:ops"  # the proof names the SASL operator


@pytest.mark.zookeeper
def test_client_without_credentials_cannot_touch_a_sasl_cluster(
    claimed: tuple[Coordinator, Coordinator, str], raw: Callable[..., Any]
) -> None:
    """Without a SASL login one can neither read, replace a claim, move, drain nor register."""
    _, _, base = claimed
    attacker = raw()
    owner = f"{base}/vips/{VIP}/owner"
    assert refused(lambda: attacker.get(owner))
    assert refused(lambda: attacker.delete(owner))
    assert refused(lambda: attacker.create(f"{base}/targets/{VIP}", b'{"node": "n2"}'))
    assert refused(lambda: attacker.create(f"{base}/drained/n1", b'{"node": "n1"}'))
    assert refused(lambda: attacker.create(f"{base}/members/evil", b"{}", ephemeral=True))


@pytest.mark.zookeeper
def test_sasl_node_role_cannot_move_or_drain(
    claimed: tuple[Coordinator, Coordinator, str], raw: Callable[..., Any]
) -> None:
    """The node's SASL identity is refused operator work; the operator's may do it."""
    operator, node, base = claimed
    with pytest.raises(AccessDenied):
        move(node, VIP, "n1")
    with pytest.raises(AccessDenied):
        drain(node, "n1")
    insider = raw("mta")
    assert refused(lambda: insider.create(f"{base}/targets/{VIP}", b'{"node": "n1"}'))
    assert refused(lambda: insider.set_acls(f"{base}/members", OPEN_ACL_UNSAFE))
    move(operator, VIP, "n1")
    drain(operator, "n1")
    assert node.znodes.children("drained") == ["n1"]


@pytest.mark.zookeeper
def test_wrong_sasl_password_is_refused_with_a_clear_error(
    make: Factory, sasl_zookeeper: ZooKeeperServer
) -> None:
    """The server refuses a wrong password or an unknown user with an AccessDenied naming SASL."""
    make(OPERATOR)
    for user in ("mta", "nobody"):
        wrong = Credentials(user=user, password="wrong", sasl="DIGEST-MD5")
        with pytest.raises(AccessDenied, match=f"refused the SASL DIGEST-MD5 login of '{user}'"):
            make(wrong)


@pytest.mark.zookeeper
def test_sasl_credentials_against_a_server_without_sasl_are_refused(
    zookeeper: ZooKeeperServer, zk_cluster: str
) -> None:
    """A server without a JAAS Server section drops the login: the same clear AccessDenied."""
    coordinator = Coordinator(
        hosts=zookeeper.address,
        cluster=zk_cluster,
        session_timeout=0.5,  # kazoo waits this long for the dropped SASL answer
        connect_timeout=5.0,
        credentials=NODE,
    )
    with pytest.raises(AccessDenied, match="servers without SASL"):
        coordinator.start()


@pytest.mark.zookeeper
def test_squatted_root_with_look_alike_sasl_acls_is_refused(
    make: Factory, raw: Callable[..., Any], cluster: str
) -> None:
    """A squatter who plants a drain marker, then gives everything our exact SASL ACLs, is caught.

    ``sasl:ops`` is a public name, so the ACLs alone prove nothing; the root's
    proof, keyed with the operator's role id and its KEY, does.
    """
    squatter = raw()
    base = f"/mhafail/{cluster}"
    with contextlib.suppress(NodeExistsError):
        squatter.create("/mhafail", b"", acl=to_kazoo(ROOT_ACL))
    for path in (base, f"{base}/drained", f"{base}/drained/n1"):
        squatter.create(path, b"", acl=OPEN_ACL_UNSAFE)
    policy = AclPolicy(operators=(OP_ID,), nodes=(NODE_ID,))
    for rel in ("drained/n1", "drained", ""):
        squatter.set_acls(f"{base}/{rel}" if rel else base, policy.acl_for(rel))
    with pytest.raises(UnsafeAcl, match="not created by an operator"):
        make(NODE)


@pytest.mark.zookeeper
def test_sasl_login_is_repeated_on_every_reconnection(
    make: Factory, sasl_zookeeper: ZooKeeperServer, cluster: str, tcp_proxy_factory: Any
) -> None:
    """After its connection drops, the node logs in again: its session keeps its node rights.

    ZooKeeper keeps authentication per connection, not per session, so a
    reconnect without a new SASL exchange would be refused the node's writes.
    """
    make(OPERATOR)
    proxy = tcp_proxy_factory(sasl_zookeeper.address)
    node = Coordinator(
        hosts=proxy.address, cluster=cluster, session_timeout=2.0, credentials=NODE
    ).start()
    reconnected = threading.Event()
    states: list[ConnectionState] = []

    def note(state: ConnectionState) -> None:
        states.append(state)
        if ConnectionState.SUSPENDED in states and state is ConnectionState.CONNECTED:
            reconnected.set()

    node.add_state_listener(note)
    try:
        session = node.session_id
        proxy.cut()
        proxy.restore()  # closes the connection; kazoo reconnects to the same session
        assert reconnected.wait(5.0)
        assert node.session_id == session
        assert node.znodes.create("members/n7", b"{}", ephemeral=True) is not None
        with pytest.raises(AccessDenied):
            drain(node, "n7")
    finally:
        node.stop()


@pytest.mark.zookeeper
def test_role_lists_may_mix_digest_and_sasl_identities(make: Factory) -> None:
    """A digest operator and a SASL node share one cluster, each in its role."""
    op_digest = digest_id("ops", "op-secret")
    operator = Credentials(
        user="ops", password="op-secret", operators=(op_digest,), nodes=(NODE_ID,)
    )
    node_creds = Credentials(
        user="mta",
        password="node-secret",
        operators=(op_digest,),
        nodes=(NODE_ID,),
        sasl="DIGEST-MD5",
    )
    op = make(operator)
    node = make(node_creds)
    with pytest.raises(AccessDenied):
        drain(node, "n1")
    drain(op, "n1")
    assert node.znodes.children("drained") == ["n1"]


@pytest.mark.zookeeper
def test_cli_takes_generated_sasl_credentials_files(
    sasl_zookeeper: ZooKeeperServer,
    generated: dict[Role, Path],
    cluster: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--zk-auth`` with ``zk credentials --sasl`` files: the operator inits and drains, the
    node is refused."""
    monkeypatch.delenv("MHAFAIL_ZK_OPEN", raising=False)
    zk = ["--zk", sasl_zookeeper.address, "--cluster", cluster]
    operator = ["--zk-auth", str(generated[Role.OPERATOR])]
    node = ["--zk-auth", str(generated[Role.NODE])]
    assert main(["init", *zk, *operator]) == 0
    assert main(["vip", "drain", *zk, *node, "n1"]) == 2
    assert "refused by ZooKeeper ACLs" in capsys.readouterr().err
    assert main(["vip", "drain", *zk, *operator, "n1"]) == 0
    assert main(["members", *zk, *node, "--json"]) == 0


# --- no server needed ---------------------------------------------------------


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zk.auth"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_sasl_credentials_file_round_trips(tmp_path: Path) -> None:
    """A file written from SASL credentials reads back to the same identity and role."""
    for creds in (OPERATOR, NODE):
        back = Credentials.from_file(_write(tmp_path, creds.to_file_text()))
        assert back == creds
    assert "op-secret" not in repr(OPERATOR)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("sasl = DIGEST-MD5 mta\n", "DIGEST-MD5 USER:PASSWORD"),
        ("sasl = PLAIN mta:pw\n", "sasl = PLAIN"),
        ("sasl = GSSAPI\n", "GSSAPI PRINCIPAL"),
        ("credentials = mta:pw\nsasl = DIGEST-MD5 mta:pw\n", "not both"),
        ("sasl = DIGEST-MD5 mta:pw\nsasl = DIGEST-MD5 mta:pw\n", "twice"),
        ("sasl = DIGEST-MD5 mta:pw\nnodes = sasl:m:t:a\n", "invalid nodes id"),
        (f"sasl = DIGEST-MD5 mta:wrong\noperators = {OP_ID}\nnodes = {NODE_ID}\n", "neither"),
        # A DIGEST-MD5 identity is listed with its KEY: a bare name does not match.
        ("sasl = DIGEST-MD5 mta:node-secret\nnodes = sasl:mta\n", "neither"),
    ],
)
def test_malformed_sasl_files_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    """Each malformed SASL credentials file gives InvalidArgument naming the problem."""
    with pytest.raises(InvalidArgument, match=fragment) as caught:
        Credentials.from_file(_write(tmp_path, text))
    assert "node-secret" not in str(caught.value) and "mta:wrong" not in str(caught.value)


def test_readable_sasl_file_is_refused(tmp_path: Path) -> None:
    """A SASL credentials file that others can read is refused like a digest one."""
    path = _write(tmp_path, NODE.to_file_text())
    path.chmod(0o644)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        Credentials.from_file(path)


def test_gssapi_identity_takes_its_role_by_principal() -> None:
    """A GSSAPI principal finds its listed id (KEY or not) and maps to a ``sasl:`` ACL id."""
    key = digest_id("x", "random").partition(":")[2]
    creds = Credentials(
        user="mta/host1@EXAMPLE.COM",
        sasl="GSSAPI",
        operators=(f"sasl:ops@EXAMPLE.COM:{key}",),
        nodes=("sasl:mta/host1@EXAMPLE.COM",),
    )
    assert creds.role is Role.NODE
    assert acl_id(creds.operators[0]) == ("sasl", "ops@EXAMPLE.COM")
    policy = AclPolicy(operators=creds.operators, nodes=creds.nodes)
    assert {ident for _, ident in policy.entries_for("members")} == {
        ("sasl", "ops@EXAMPLE.COM"),
        ("sasl", "mta/host1@EXAMPLE.COM"),
    }
    with pytest.raises(InvalidArgument, match="GSSAPI takes no password"):
        Credentials(user="mta", password="pw", sasl="GSSAPI")


def test_zk_credentials_sasl_writes_files_and_the_jaas_section(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``zk credentials --sasl`` writes two SASL files and a private JAAS Server section."""
    folder = tmp_path / "auth"
    assert main(["zk", "credentials", "--sasl", "--dir", str(folder), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert all(i.startswith("sasl:") for i in out["operators"] + out["nodes"])
    node = Credentials.from_file(out["files"]["node"])
    assert node.sasl == "DIGEST-MD5" and node.role is Role.NODE
    jaas = folder / "zookeeper-jaas.conf"
    assert jaas.stat().st_mode & 0o777 == 0o600
    assert f'user_{node.user}="{node.password}"' in jaas.read_text()


def test_sasl_without_pure_sasl_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without pure-sasl installed, SASL credentials are refused naming the extra to install."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        auth_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "puresasl" else real(name, *a),
    )
    with pytest.raises(InvalidArgument, match=r"mhafail\[sasl\]"):
        Coordinator(hosts="127.0.0.1:1", cluster="c", credentials=NODE)


_LINES = st.sampled_from(
    [
        "sasl = DIGEST-MD5 mta:node-secret",
        "sasl = GSSAPI mta/h@R",
        "credentials = mta:node-secret",
        f"operators = {OP_ID}",
        f"nodes = {NODE_ID}",
        "nodes = sasl:mta/h@R",
        "# comment",
        "",
    ]
)


def test_credentials_file_parser_raises_only_invalid_argument(tmp_path: Path) -> None:
    """Any text in a credentials file gives Credentials or InvalidArgument, nothing else."""
    path = tmp_path / "zk.auth"

    @settings(max_examples=200, deadline=1000)
    @given(lines=st.lists(st.one_of(_LINES, st.text(max_size=80)), max_size=6))
    def parse(lines: list[str]) -> None:
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogatepass") as handle:
            handle.write("\n".join(lines))
        try:
            creds = Credentials.from_file(path)
        except InvalidArgument:
            return
        assert creds.identity in creds.operators + creds.nodes

    parse()
