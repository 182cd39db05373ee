"""The mhafail command: zk serve, members, error handling."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from mhafail.cli import main
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.testing import ZooKeeperServer, free_port


def test_python_dash_m_works_like_the_script() -> None:
    """`python -m mhafail --help` lists the subcommands."""
    out = subprocess.run(
        [sys.executable, "-m", "mhafail", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "members" in out and "zk" in out


def test_building_the_command_line_loads_no_component() -> None:
    """Parsing ``mhafail`` arguments imports no component package (every command starts fast)."""
    code = (
        "import sys\n"
        "from mhafail.cli import build_parser\n"
        "build_parser()\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    heavy = ("console", "vip", "config", "commands", "audit", "spool", "jlog", "logs", "node")
    assert [m for m in loaded if m.split(".")[:2] in (["mhafail", h] for h in heavy)] == []
    assert [m for m in loaded if m.split(".")[0] in ("pyroute2", "git")] == []


def test_console_cli_default_port_is_the_consoles() -> None:
    """The console command's default port (kept in the CLI to stay light) is the console's own."""
    from mhafail.cli import _console
    from mhafail.console import DEFAULT_PORT

    assert _console.DEFAULT_PORT == DEFAULT_PORT


def test_bad_hosts_string_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --zk gives exit status 2 and one line naming the problem."""
    assert main(["members", "--zk", "a:b:c:d", "--cluster", "c"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mhafail: error: invalid ZooKeeper hosts")


def test_bad_tick_time_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """zk serve refuses a tickTime outside 2-60000 ms before starting anything."""
    assert main(["zk", "serve", "--tick-time", "1"]) == 2
    assert "--tick-time 1" in capsys.readouterr().err


@pytest.mark.zookeeper
def test_members_lists_live_nodes_as_json(
    coordinator_factory: Callable[..., Coordinator],
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`mhafail members --json` shows each live member with its info and session."""
    info = NodeInfo(name="mta1", roles=("mta",), pid=os.getpid(), host="h")
    m = Membership(coordinator=coordinator_factory(), info=info).start()
    try:
        assert main(["members", "--zk", zookeeper.address, "--cluster", zk_cluster, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert [x["name"] for x in data["members"]] == ["mta1"]
        assert data["members"][0]["roles"] == ["mta"]
        assert main(["members", "--zk", zookeeper.address, "--cluster", zk_cluster]) == 0
        assert "mta1" in capsys.readouterr().out
    finally:
        m.stop()


def test_members_on_unreachable_zookeeper_fails_cleanly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With no ZooKeeper listening, members exits 2 and says it cannot reach it."""
    port = free_port()
    args = ["members", "--zk", f"127.0.0.1:{port}", "--cluster", "c", "--connect-timeout", "1"]
    assert main(args) == 2
    assert "cannot reach ZooKeeper" in capsys.readouterr().err


@pytest.mark.zookeeper
def test_zk_serve_runs_until_sigterm() -> None:
    """`mhafail zk serve` prints its address, serves clients, and stops cleanly on SIGTERM."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mhafail", "zk", "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"ruok")
            assert sock.recv(4) == b"imok"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    time.sleep(0.1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
