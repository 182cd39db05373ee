"""The console test lab: a three-node cluster, a console over it, an API client."""

from __future__ import annotations

import contextlib
import http.client
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs

from mhafail.audit import ASLogger, AuditSeries, QueryEngine, SnapshotStore
from mhafail.console import Console, Users
from mhafail.coordination import Coordinator
from mhafail.testing import EventProcess
from mhafail.testing._ports import unique_suffix

HERE = Path(__file__).parent.parent
NODES = ("mta1", "mta2", "mta3")
VIPS = ("198.18.0.10", "198.18.0.11")
OPERATOR = ("ops", "ops-secret-password")
READER = ("viewer", "viewer-secret-password")


def users() -> Users:
    """The test users: one operator, one reader."""
    return Users.from_passwords(operators=dict([OPERATOR]), readers=dict([READER]))


def node_process(zk: str, cluster: str, node: str, tmp: Path, dc: str = "east") -> EventProcess:
    """A console_node.py process (not started)."""
    argv = [
        sys.executable, str(HERE / "console_node.py"), "--zk", zk, "--cluster", cluster,
        "--node", node, "--state-dir", str(tmp / node), "--net", str(tmp / "net.log"),
        "--dc", dc, "--records", "25", *[a for v in VIPS for a in ("--vip", f"{v}/24@eth0")],
    ]  # fmt: skip
    return EventProcess(argv, name=node, log_dir=tmp)


@attrs.define
class Lab:
    """A running cluster with a console."""

    zk: str
    cluster: str
    nodes: dict[str, EventProcess]
    coordinator: Coordinator
    console: Console
    tmp: Path

    @property
    def port(self) -> int:
        """The console's port."""
        return int(self.console.url.rstrip("/").rsplit(":", 1)[1])


def audit_store(root: Path) -> QueryEngine:
    """A snapshot store with one written interval of the series ``conn``."""
    series = AuditSeries("conn", window_seconds=300, windows=6, family="ipv4", track_intervals=True)
    for host, times in ((5, 40), (6, 25), (7, 10), (9, 3)):
        for _ in range(times):
            series.add(f"198.18.{host}.{host + 1}")
    store = SnapshotStore(root=root)
    ASLogger(store=store, series=[series], include=[r"^conn$"], log_interval=60).run_once()
    return QueryEngine(store=store)


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until it returns something truthy."""
    end = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def make_lab(zk: str, tmp: Path, **console_kwargs: Any) -> Iterator[Lab]:
    """Start three nodes (VIPs, config, jlog, commands) and a console on a fresh cluster."""
    cluster = f"console{unique_suffix()}"
    nodes = {n: node_process(zk, cluster, n, tmp, "west" if n == "mta3" else "east") for n in NODES}
    coordinator = Coordinator(hosts=zk, cluster=cluster, open_acl=True, session_timeout=2.0)
    try:
        for proc in nodes.values():
            proc.start(ready=None)
        for proc in nodes.values():
            proc.wait_event(lambda e: e.get("event") == "ready", 30)
        coordinator.start()
        kwargs: dict[str, Any] = {
            "coordinator": coordinator,
            "users": users(),
            "name": "console-a",
            "port": 0,
            "audit": audit_store(tmp / "audit"),
            "sample_period": 0.5,
        }
        kwargs.update(console_kwargs)
        console = Console(**kwargs).start()
        try:
            yield Lab(zk, cluster, nodes, coordinator, console, tmp)
        finally:
            console.stop()
    finally:
        for proc in nodes.values():
            proc.terminate()
        coordinator.stop()


class Client:
    """A tiny API client with a cookie jar of one cookie."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self.host = host
        self.cookie: str | None = None
        self.csrf: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        csrf: bool = True,
    ) -> tuple[int, Any, dict[str, str]]:
        """Send one request; returns status, decoded JSON (or text) and headers."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        hdrs = {"Host": f"{self.host}:{self.port}"}
        if self.cookie:
            hdrs["Cookie"] = self.cookie
        data = raw
        if method == "POST" and raw is None:
            data = json.dumps(body or {}).encode()
            hdrs["Content-Type"] = "application/json"
        if method == "POST" and csrf and self.csrf:
            hdrs["X-CSRF-Token"] = self.csrf
        hdrs.update(headers or {})
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        out_headers = {k.lower(): v for k, v in resp.getheaders()}
        try:
            doc = json.loads(payload) if payload else None
        except ValueError:
            doc = payload.decode(errors="replace")
        return resp.status, doc, out_headers

    def login(self, user: str, password: str) -> tuple[int, Any]:
        """Log in; keeps the cookie and CSRF token."""
        status, doc, headers = self.request(
            "POST", "/api/v1/login", {"user": user, "password": password}
        )
        if status == 200:
            self.cookie = headers["set-cookie"].split(";", 1)[0]
            self.csrf = doc["csrf"]
        return status, doc

    def get(self, path: str) -> tuple[int, Any]:
        """GET an API path."""
        status, doc, _ = self.request("GET", path)
        return status, doc

    def post(self, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any]:
        """POST JSON to an API path."""
        status, doc, _ = self.request("POST", path, body, **kwargs)
        return status, doc


def operator_client(lab: Lab) -> Client:
    """A client logged in as the operator."""
    client = Client(lab.port)
    status, doc = client.login(*OPERATOR)
    assert status == 200, doc
    return client


def wait_request(client: Client, rid: str, timeout: float = 15.0) -> dict[str, Any]:
    """Poll a command request until every node answered."""

    def done() -> Any:
        status, doc = client.get(f"/api/v1/commands/{rid}")
        assert status == 200, doc
        return doc if doc["complete"] else None

    return wait_until(done, timeout, f"replies to {rid}")


def console_process(
    zk: str, cluster: str, name: str, tmp: Path, extra: tuple[str, ...] = ()
) -> EventProcess:
    """A ``mhafail console --json`` process (not started); users from a users file."""
    users_file = tmp / "users"
    if not users_file.exists():
        from mhafail.coordination._auth import digest_id

        users_file.write_text(
            f"operators = {digest_id(*OPERATOR)}\nreaders = {digest_id(*READER)}\n"
        )
        users_file.chmod(0o600)
    argv = [
        sys.executable, "-m", "mhafail", "console", "--zk", zk, "--cluster", cluster,
        "--zk-open", "--listen", "127.0.0.1:0", "--name", name, "--users", str(users_file),
        "--sample-period", "0.5", "--session-timeout", "1.0", "--json", *extra,
    ]  # fmt: skip
    return EventProcess(argv, name=name, log_dir=tmp)
