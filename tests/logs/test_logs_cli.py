"""``mhafail logs``: status, tail, decommission, and refusals of bad flags and config files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mhafail.cli import main
from mhafail.jlog import Jlog

from .conftest import SECRET, Lab, expect_exact, record, wait_until


@pytest.mark.zookeeper
def test_status_and_tail_against_live_processes(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """``logs status --json`` shows each subscriber's backlog and the live managers, and
    ``logs tail`` prints a node's newest records live."""
    secret = lab.root / "secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    lab.node("n1", "--secret-file", str(secret), managers=("m1", "m2"))
    lab.manager("m1", "--secret-file", str(secret))
    with Jlog.open(lab.jlog("n1")).writer() as writer:
        writer.write_many([record("n1", i) for i in range(300)])
    expect_exact(lab.base("m1"), lab.cluster, ["n1"], 300, 30)
    zk = ["--zk", lab.zk, "--cluster", lab.cluster]
    assert main(["logs", "status", *zk, "--secret-file", str(secret), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["managers"] == ["m1"]
    subs = {r["subscriber"]: r for r in data["subscribers"]}
    assert subs["m2"]["pending_records"] == 300 and subs["m2"]["lag_seconds"] >= 0
    wait_until(lambda: Jlog.open(lab.jlog("n1")).checkpoint("m1").marker == 300, 10, "m1 ack")
    assert main(["logs", "status", *zk, "--secret-file", str(secret)]) == 0
    text = capsys.readouterr().out
    assert "n1" in text and "m2" in text and "300" in text
    # Without the secret the node refuses: status says so and exits 1.
    assert main(["logs", "status", *zk, "--json"]) == 1
    assert "authentication required" in json.loads(capsys.readouterr().out)["errors"]["n1"]

    tail = subprocess.Popen(
        [sys.executable, "-m", "mhafail", "logs", "tail", *zk, "--node", "n1", "--log",
         "mainlog", "-n", "2", "--count", "4", "--secret-file", str(secret)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        # The tail prints the two newest, then whatever comes next.
        wait_until(lambda: _tail_connected(lab), 15, "the tail session")
        with Jlog.open(lab.jlog("n1")).writer() as writer:
            writer.write_many([record("n1", i) for i in range(300, 302)])
        out, _ = tail.communicate(timeout=20)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.communicate()
    assert out.splitlines() == [record("n1", i) for i in range(298, 302)]


def _tail_connected(lab: Lab) -> bool:
    return "tail of mainlog" in lab.procs[0].output()


@pytest.mark.zookeeper
def test_tail_of_an_unknown_node_or_log_fails_with_a_message(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    """Tailing a node that is not live, or a log it does not serve, exits 2 with the reason."""
    lab.node("n1", managers=("m1",))
    zk = ["--zk", lab.zk, "--cluster", lab.cluster]
    assert main(["logs", "tail", *zk, "--node", "n9", "--log", "mainlog", "--count", "1"]) == 2
    assert "not live" in capsys.readouterr().err
    assert main(["logs", "tail", *zk, "--node", "n1", "--log", "nolog", "--count", "1"]) == 2
    assert "unknown log" in capsys.readouterr().err


def test_decommission_removes_the_subscriber_and_frees_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``logs decommission`` removes a manager's subscriber and deletes what only it held."""
    jlog = Jlog.create(tmp_path / "mainlog", unit_limit=2048)
    jlog.add_subscriber("m1")
    jlog.add_subscriber("m2")
    with jlog.writer() as writer:
        writer.write_many([record("n1", i) for i in range(300)])
    jlog.set_checkpoint("m1", jlog.last_id())
    before = len(jlog.segments())
    assert main(["logs", "decommission", "--manager", "m2", str(jlog.path), "--json"]) == 0
    freed = json.loads(capsys.readouterr().out)["freed"][str(jlog.path)]
    assert len(freed) == before - 1 == before - len(jlog.segments())
    assert main(["logs", "decommission", "--manager", "m2", str(jlog.path)]) == 2
    assert "no subscriber" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "flags", "match"),
    [
        ('name = "m1"\nbogus = 1\n', [], "unknown keys bogus"),
        ('name = "m1"\ncommit_records = "many"\n', [], "must be a int"),
        ("name = [\n", [], "cannot read config"),
        ('name = "m1"\nfile_mode = "rw"\n', ["--base", "/tmp/x"], "not an octal mode"),
        ("", ["--name", "m1"], "needs base"),
        ('name = "m1"\npattern = "%Y/{log}"\n', ["--base", "/tmp/x"], "must contain"),
    ],
)
def test_manager_refuses_bad_settings(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    config: str,
    flags: list[str],
    match: str,
) -> None:
    """A bad config file or flag stops ``logs manager`` before it pulls anything, saying why."""
    path = tmp_path / "m.toml"
    path.write_text(config)
    argv = ["logs", "manager", "--config", str(path), "--zk", "127.0.0.1:1"]
    assert main([*argv, "--cluster", "c1", *flags]) == 2
    assert match in capsys.readouterr().err


def test_serve_refuses_bad_log_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """``logs serve`` needs NAME=PATH logs and a valid listen address."""
    zk = ["--zk", "127.0.0.1:1", "--cluster", "c1", "--node", "n1"]
    assert main(["logs", "serve", *zk, "--log", "mainlog"]) == 2
    assert "expected NAME=PATH" in capsys.readouterr().err
    assert main(["logs", "serve", *zk, "--log", "a=/tmp/a", "--listen", "nope"]) == 2
    assert "invalid endpoint" in capsys.readouterr().err
