"""The console's JSON API against a real three-node cluster: every endpoint, with bad input."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from console_lab import (
    OPERATOR,
    READER,
    VIPS,
    Client,
    Lab,
    operator_client,
    wait_request,
    wait_until,
)

from mhafail.config import ConfigRepository
from mhafail.console import Console, Users
from mhafail.errors import ConsoleInvalidArgument

pytestmark = pytest.mark.zookeeper

GETS = ["/api/v1/cluster", "/api/v1/vips", "/api/v1/config", "/api/v1/logs",
        "/api/v1/audit?q=show+available", "/api/v1/commands", "/api/v1/session"]  # fmt: skip
POSTS = [
    ("/api/v1/vips/move", {"address": VIPS[0], "node": "mta1"}),
    ("/api/v1/vips/drain", {"node": "mta1"}),
    ("/api/v1/vips/undrain", {"node": "mta1"}),
    ("/api/v1/config/pull", {"repo": "mta"}),
    ("/api/v1/config/rollback", {"repo": "mta", "sha": "0" * 40}),
    ("/api/v1/commands", {"command": "ping", "target": {"all": True}}),
]


def test_public_face() -> None:
    """mhafail.console's __all__ lists exactly its public names."""
    module = importlib.import_module("mhafail.console")
    public = {
        n for n, v in vars(module).items() if not n.startswith("_") and type(v).__name__ != "module"
    }
    assert set(module.__all__) == public


def test_index_lists_versioned_endpoints(lab: Lab) -> None:
    """GET /api/v1 answers without a session and lists every endpoint under /api/v1."""
    status, doc = Client(lab.port).get("/api/v1")
    assert status == 200 and doc["version"] == 1
    paths = {(e["method"], e["path"]) for e in doc["endpoints"]}
    assert ("POST", "/api/v1/vips/move") in paths and ("GET", "/api/v1/audit") in paths
    assert all(p.startswith("/api/v1/") for _, p in paths)


@pytest.mark.parametrize("path", GETS)
def test_reads_need_a_session(lab: Lab, path: str) -> None:
    """Every read endpoint answers 401 with a JSON error without a session cookie."""
    status, doc = Client(lab.port).get(path)
    assert status == 401 and doc["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(("path", "body"), POSTS)
def test_actions_need_a_session(lab: Lab, path: str, body: dict[str, object]) -> None:
    """Every action answers 401 without a session, and a forged cookie is no session."""
    client = Client(lab.port)
    assert client.post(path, body)[0] == 401
    client.cookie = "mhafail_console=forged-token"
    assert client.post(path, body)[0] == 401


@pytest.mark.parametrize(("path", "body"), POSTS)
def test_reader_role_may_not_act(lab: Lab, path: str, body: dict[str, object]) -> None:
    """A reader identity gets 403 forbidden on every action, even with its CSRF token."""
    client = Client(lab.port)
    assert client.login(*READER)[0] == 200
    status, doc = client.post(path, body)
    assert status == 403 and doc["error"]["code"] == "forbidden"


@pytest.mark.parametrize(("path", "body"), POSTS)
def test_actions_need_the_csrf_token(lab: Lab, path: str, body: dict[str, object]) -> None:
    """An operator's action without, or with a wrong, X-CSRF-Token is refused with 403 csrf."""
    client = operator_client(lab)
    status, doc = client.post(path, body, csrf=False)
    assert status == 403 and doc["error"]["code"] == "csrf"
    status, doc = client.post(path, body, csrf=False, headers={"X-CSRF-Token": "x" * 43})
    assert status == 403 and doc["error"]["code"] == "csrf"


def test_csrf_refusal_changes_nothing(lab: Lab) -> None:
    """A move without the CSRF token leaves every VIP where it was and sends no request."""
    client = operator_client(lab)
    before = client.get("/api/v1/vips")[1]["vips"]
    requests = len(client.get("/api/v1/commands")[1]["requests"])
    owner = before[0]["owner"]
    other = next(n for n in before[0]["declared_by"] if n != owner)
    assert (
        client.post("/api/v1/vips/move", {"address": VIPS[0], "node": other}, csrf=False)[0] == 403
    )
    assert client.get("/api/v1/vips")[1]["vips"][0]["target"] is None
    assert len(client.get("/api/v1/commands")[1]["requests"]) <= requests


def test_login_and_session_cookie(lab: Lab) -> None:
    """Login sets an HttpOnly, SameSite=Strict, Secure cookie; /session names user and role."""
    client = Client(lab.port)
    status, doc, headers = client.request(
        "POST", "/api/v1/login", {"user": OPERATOR[0], "password": OPERATOR[1]}
    )
    assert status == 200 and doc["role"] == "operator" and len(doc["csrf"]) >= 32
    cookie = headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=Strict", "Secure", "Path=/"):
        assert attribute in cookie
    client.cookie = cookie.split(";", 1)[0]
    assert client.get("/api/v1/session")[1]["user"] == OPERATOR[0]


def test_logout_ends_the_session(lab: Lab) -> None:
    """After logout the old cookie is refused."""
    client = operator_client(lab)
    assert client.post("/api/v1/logout")[0] == 200
    assert client.get("/api/v1/cluster")[0] == 401


def test_bad_logins_are_refused_and_throttled(lab: Lab) -> None:
    """Wrong passwords get 401; after five the address must wait (429), even with the right one."""
    client = Client(lab.port)
    try:
        for _ in range(5):
            status, doc = client.login(OPERATOR[0], "wrong")
            assert status == 401 and doc["error"]["code"] == "login_failed"
        status, doc = client.login(*OPERATOR)
        assert status == 429 and doc["error"]["code"] == "login_throttled"
    finally:
        lab.console.sessions.succeeded("127.0.0.1")
    assert client.login(*OPERATOR)[0] == 200


@pytest.mark.parametrize(
    "body", [{}, {"user": "ops"}, {"user": 1, "password": "x"}, {"user": "a:b", "password": "x"}]
)
def test_malformed_logins(lab: Lab, body: dict[str, object]) -> None:
    """Malformed login bodies get 400 or 401, never a session."""
    status, _doc, headers = Client(lab.port).request("POST", "/api/v1/login", body)
    assert status in (400, 401) and "set-cookie" not in headers
    lab.console.sessions.succeeded("127.0.0.1")


def test_bodies_must_be_small_json_objects(lab: Lab) -> None:
    """Wrong content type (415), bad JSON (400), a non-object (400), too large (413)."""
    client = operator_client(lab)
    raw = b'{"command": "ping"}'
    status, _doc, _ = client.request(
        "POST", "/api/v1/commands", raw=raw, headers={"Content-Type": "text/plain"}
    )
    assert status == 415
    hdr = {"Content-Type": "application/json"}
    assert client.request("POST", "/api/v1/commands", raw=b"{nope", headers=hdr)[0] == 400
    assert client.request("POST", "/api/v1/commands", raw=b"[1]", headers=hdr)[0] == 400
    big = b'{"x": "' + b"a" * 70000 + b'"}'
    assert client.request("POST", "/api/v1/commands", raw=big, headers=hdr)[0] == 413


def test_cross_origin_and_foreign_host_are_refused(lab: Lab) -> None:
    """A POST from another Origin gets 403; a non-loopback Host header (DNS rebinding) gets 421."""
    client = operator_client(lab)
    status, doc = client.post(
        "/api/v1/commands", {"command": "ping", "target": {"all": True}},
        headers={"Origin": "http://evil.example"},
    )  # fmt: skip
    assert status == 403 and doc["error"]["code"] == "bad_origin"
    status, doc, _ = client.request("GET", "/api/v1/cluster", headers={"Host": "evil.example"})
    assert status == 421


def test_unknown_paths_and_methods(lab: Lab) -> None:
    """Unknown paths get a JSON 404, wrong methods a 405 naming the allowed one."""
    client = operator_client(lab)
    assert client.get("/api/v1/nope")[0] == 404
    assert client.get("/nope")[0] == 404
    status, doc = client.post("/api/v1/cluster", {})
    assert status == 405 and "GET" in doc["error"]["message"]
    assert client.get("/api/v1/vips/move")[0] == 405


def test_pages_ship_in_the_package_with_a_strict_policy(lab: Lab) -> None:
    """The page and its assets are served from the package, with CSP, and load nothing remote."""
    client = Client(lab.port)
    for path in ("/", "/static/app.js", "/static/charts.js", "/static/style.css"):
        status, body, headers = client.request("GET", path)
        assert status == 200, path
        assert "script-src 'self'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        text = body if isinstance(body, str) else str(body)
        assert "https://" not in text and "//cdn" not in text


def test_cluster_shows_members_roles_labels_and_lease(lab: Lab) -> None:
    """/cluster lists the three nodes with roles, dc labels, uptime and a sampled lease."""
    client = operator_client(lab)

    def sampled() -> object:
        doc = client.get("/api/v1/cluster")[1]
        return doc if all(m["status"] for m in doc["members"]) else None

    doc = wait_until(sampled, 10, "a status sample of every member")
    members = {m["name"]: m for m in doc["members"]}
    assert sorted(members) == ["mta1", "mta2", "mta3"]
    assert members["mta3"]["labels"] == {"dc": "west"} and members["mta1"]["roles"] == ["mta"]
    assert all(
        m["uptime"] > 0 and m["status"]["connection"] == "connected" for m in members.values()
    )
    assert "vip.move" in members["mta1"]["status"]["commands"]
    assert doc["console"]["name"] == "console-a"


def test_vips_move_through_a_command_and_the_owner_changes(lab: Lab) -> None:
    """Moving a VIP sends vip.move to the target node, which answers ok; the owner changes."""
    client = operator_client(lab)
    vip = client.get("/api/v1/vips")[1]["vips"][0]
    target = next(n for n in vip["declared_by"] if n != vip["owner"])
    status, doc = client.post("/api/v1/vips/move", {"address": vip["address"], "node": target})
    assert status == 200 and doc["via"] == "commands"
    result = wait_request(client, doc["request"])
    assert result["replies"][target]["status"] == "ok"
    assert result["request"]["requester"]["manager"] == "console-a.ops"

    def moved() -> bool:
        now = client.get("/api/v1/vips")[1]["vips"][0]
        return now["owner"] == target

    wait_until(moved, 15, f"{vip['address']} owned by {target}")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"address": "198.18.0.99", "node": "mta1"}, "unknown VIP"),
        ({"address": "not-an-ip", "node": "mta1"}, "not-an-ip"),
        ({"address": VIPS[0], "node": "ghost"}, "ghost"),
        ({"address": VIPS[0]}, "node"),
        ({"address": 7, "node": "mta1"}, "address"),
    ],
)
def test_bad_vip_moves_are_refused(lab: Lab, body: dict[str, object], words: str) -> None:
    """A move of an unknown VIP, to an unknown node or with missing fields gets 400 naming it."""
    status, doc = operator_client(lab).post("/api/v1/vips/move", body)
    assert status == 400 and words in doc["error"]["message"]


def test_drain_and_undrain(lab: Lab) -> None:
    """Draining a node sends vip.drain (ok) and lists it drained; undrain clears it."""
    client = operator_client(lab)
    status, doc = client.post("/api/v1/vips/drain", {"node": "mta3"})
    assert status == 200
    assert wait_request(client, doc["request"])["replies"]["mta3"]["status"] == "ok"
    assert client.get("/api/v1/vips")[1]["drained"] == ["mta3"]
    status, doc = client.post("/api/v1/vips/undrain", {"node": "mta3"})
    assert wait_request(client, doc["request"])["replies"]["mta3"]["status"] == "ok"
    assert client.get("/api/v1/vips")[1]["drained"] == []
    for bad in ({"node": "../x"}, {"node": "ghost"}, {}):
        assert client.post("/api/v1/vips/drain", bad)[0] == 400


def _applied(client: Client, sha: str) -> object:
    repo = client.get("/api/v1/config")[1]["repos"][0]
    return repo if repo["head"] and repo["head"]["sha"] == sha and not repo["drift"] else None


def test_config_head_drift_pull_and_rollback(lab: Lab) -> None:
    """Head and reports show; pull runs config.pull; rollback publishes the old tree on a node."""
    client = operator_client(lab)
    repo = ConfigRepository(
        name="mta", base=lab.tmp / "mta1" / "config", node="mta1", coordinator=lab.coordinator
    )
    first = repo.commit({"global/a.conf": b"one\n"}, message="one", author="T <t@example.com>")
    second = repo.commit({"global/a.conf": b"two\n"}, message="two", author="T <t@example.com>")
    doc = wait_until(lambda: _applied(client, second.sha), 20, "every node on the head")
    assert doc["head"]["message"] == "two" and {n["node"] for n in doc["nodes"]} == {
        "mta1",
        "mta2",
        "mta3",
    }
    status, pulled = client.post("/api/v1/config/pull", {"repo": "mta"})
    assert status == 200
    replies = wait_request(client, pulled["request"])["replies"]
    assert {r["status"] for r in replies.values()} == {"ok"}
    status, rolled = client.post("/api/v1/config/rollback", {"repo": "mta", "sha": first.sha})
    assert status == 200, rolled
    reply = wait_request(client, rolled["request"])["replies"][rolled["node"]]
    assert reply["status"] == "ok", reply
    wait_until(lambda: _applied(client, reply["output"]["sha"]), 20, "every node on the rollback")
    assert (
        lab.tmp / "mta2" / "config" / "mta" / "current" / "global" / "a.conf"
    ).read_bytes() == b"one\n"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"repo": "mta", "sha": "xyz"}, 400),
        ({"repo": "nope", "sha": "a" * 40}, 400),
        ({"repo": "../etc", "sha": "a" * 40}, 400),
        ({"repo": "mta"}, 400),
    ],
)
def test_bad_rollbacks_are_refused(lab: Lab, body: dict[str, object], status: int) -> None:
    """A rollback with a bad sha, an unknown or unsafe repository, or no sha gets a clear 400."""
    got, doc = operator_client(lab).post("/api/v1/config/rollback", body)
    assert got == status and doc["error"]["message"]


def test_logs_lag_table_and_history(lab: Lab) -> None:
    """/logs has every node's mail log for both managers, 25 records pending, and history."""
    client = operator_client(lab)

    def rows() -> object:
        doc = client.get("/api/v1/logs")[1]
        return doc if len(doc["rows"]) == 6 and doc["history"] else None

    doc = wait_until(rows, 10, "six lag rows")
    assert {(r["node"], r["subscriber"]) for r in doc["rows"]} == {
        (n, s) for n in ("mta1", "mta2", "mta3") for s in ("mgr-a", "mgr-b")
    }
    assert all(r["pending_records"] == 25 and r["lag_seconds"] > 0 for r in doc["rows"])
    assert all(len(h["points"]) >= 1 for h in doc["history"])


def test_audit_query_answers_rows(lab: Lab) -> None:
    """A CIDR query answers rows with counts, top talker first when ordered by count."""
    client = operator_client(lab)
    q = "show count for 198.18.0.0/16 in conn cidrsize 24 order by count"
    status, doc = client.get("/api/v1/audit?q=" + q.replace(" ", "+").replace("/", "%2F"))
    assert status == 200, doc
    assert [r["cidr"] for r in doc["rows"]][:2] == ["198.18.5.0/24", "198.18.6.0/24"]
    assert doc["rows"][0]["count"] == 40


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("show count for 198.18.0.0/16 inn conn", 400, "query_syntax"),
        ("show count for 300.1.1.1 in conn", 400, None),
        ("show count for 198.18.0.0/16 in nosuch", 404, "not_found"),
        ("", 400, "bad_request"),
    ],
)
def test_bad_audit_queries(lab: Lab, query: str, status: int, code: str | None) -> None:
    """Syntax errors carry the position and what was expected; unknown series 404; empty 400."""
    got, doc = operator_client(lab).get(
        "/api/v1/audit?q=" + query.replace(" ", "+").replace("/", "%2F")
    )
    assert got == status, doc
    if code:
        assert doc["error"]["code"] == code
    if code == "query_syntax":
        assert doc["error"]["position"] == 29 and "'in'" in doc["error"]["expected"]


def test_commands_send_replies_history_cancel(lab: Lab) -> None:
    """A broadcast ping gets three ok replies, shows in the history and can be cancelled."""
    client = operator_client(lab)
    status, doc = client.post("/api/v1/commands", {"command": "ping", "target": {"all": True}})
    assert status == 200
    result = wait_request(client, doc["request"])
    assert {n: r["status"] for n, r in result["replies"].items()} == {
        "mta1": "ok", "mta2": "ok", "mta3": "ok"
    }  # fmt: skip
    status, doc = client.post(
        "/api/v1/commands", {"command": "status", "target": {"select": "dc=west"}}
    )
    assert list(wait_request(client, doc["request"])["replies"]) == ["mta3"]
    history = client.get("/api/v1/commands")[1]["requests"]
    assert doc["request"] in [r["id"] for r in history]
    status, cancelled = client.post(f"/api/v1/commands/{doc['request']}/cancel")
    assert status == 200 and cancelled["found"] is True


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"command": "ping", "target": {"node": "ghost"}}, "ghost"),
        ({"command": "ping", "target": {"select": "dc=nowhere"}}, "no live member"),
        ({"command": "ping", "target": {"all": True, "node": "x"}}, "target"),
        ({"command": "ping"}, "target"),
        ({"command": "bad name!", "target": {"all": True}}, "command"),
        ({"command": "ping", "args": [1], "target": {"all": True}}, "args"),
        ({"command": "ping", "target": {"all": True}, "ttl": -1}, "ttl"),
    ],
)
def test_bad_commands_are_refused(lab: Lab, body: dict[str, object], words: str) -> None:
    """Bad targets, names, arguments and options get 400 with a message naming the problem."""
    status, doc = operator_client(lab).post("/api/v1/commands", body)
    assert status == 400 and words in doc["error"]["message"], doc


def test_unknown_and_malformed_request_ids(lab: Lab) -> None:
    """An unknown request id is 404; a malformed one 400."""
    client = operator_client(lab)
    assert client.get("/api/v1/commands/1700000000000-aaaaaaaaaaaa")[0] == 404
    assert client.get("/api/v1/commands/..%2F..")[0] == 400
    assert client.post("/api/v1/commands/1700000000000-aaaaaaaaaaaa/cancel")[1]["found"] is False


def test_binds_loopback_by_default_and_refuses_plain_http_elsewhere(lab: Lab) -> None:
    """The default address is 127.0.0.1; a non-loopback address without TLS is refused."""
    users = Users.from_passwords(operators=dict([OPERATOR]))
    console = Console(coordinator=lab.coordinator, users=users, name="c-default")
    assert console.host == "127.0.0.1"
    with pytest.raises(ConsoleInvalidArgument, match="plain HTTP"):
        Console(coordinator=lab.coordinator, users=users, name="c2", host="0.0.0.0")
    with pytest.raises(ConsoleInvalidArgument, match="no users"):
        Console(coordinator=lab.coordinator, users=Users(), name="c3")


def test_users_file(tmp_path: Path) -> None:
    """A users file gives operators and readers; a world-readable or malformed one is refused."""
    from mhafail.coordination._auth import digest_id

    path = tmp_path / "users"
    path.write_text(f"operators = {digest_id('a', 'pw-a')}\nreaders = {digest_id('b', 'pw-b')}\n")
    path.chmod(0o600)
    users = Users.from_file(path)
    assert users.role_of("a", "pw-a").value == "operator"
    assert users.role_of("b", "pw-b").value == "reader"
    assert users.role_of("a", "pw-b") is None
    path.chmod(0o644)
    with pytest.raises(ConsoleInvalidArgument, match="mode"):
        Users.from_file(path)
    path.chmod(0o600)
    path.write_text("admins = x\n")
    with pytest.raises(ConsoleInvalidArgument, match="line 1"):
        Users.from_file(path)


def test_users_file_with_sasl_identities(tmp_path: Path) -> None:
    """SASL DIGEST-MD5 ids (``sasl:user:KEY``) log in with their user and password."""
    from mhafail.coordination._auth import digest_id

    path = tmp_path / "users"
    path.write_text(
        "sasl = DIGEST-MD5 ops:pw-ops\n"
        f"operators = sasl:{digest_id('ops', 'pw-ops')}\n"
        f"readers = sasl:{digest_id('mta', 'pw-mta')}\n"
    )
    path.chmod(0o600)
    users = Users.from_file(path)
    assert users.role_of("ops", "pw-ops").value == "operator"
    assert users.role_of("mta", "pw-mta").value == "reader"
    assert users.role_of("ops", "pw-mta") is None
