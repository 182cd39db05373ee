"""``mhafail cmd`` end to end (in-process CLI against a real ZooKeeper), and the public face."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

import mhafail.commands
from mhafail.channel import ChannelSecurity
from mhafail.cli import main
from mhafail.commands import CommandAgent, register_builtins
from mhafail.testing import ZooKeeperServer

AgentFactory = Callable[..., CommandAgent]


def test_all_equals_the_public_names() -> None:
    """mhafail.commands.__all__ lists exactly its public names."""
    public = {
        n
        for n, v in vars(mhafail.commands).items()
        if not n.startswith("_") and type(v).__name__ != "module"
    }
    assert set(mhafail.commands.__all__) == public


@pytest.mark.zookeeper
def test_cli_send_get_list_cancel(
    agent_factory: AgentFactory,
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """send prints every reply (exit 0 when all ok), get and list find it, errors exit 2."""
    for name, roles in (("n1", ("dc=east",)), ("n2", ("dc=west",))):
        agent = agent_factory(name, roles=roles)
        register_builtins(agent)
        agent.start()
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster]
    assert main(["cmd", "send", *zk, "--all", "ping", "--json"]) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sorted(sent["replies"]) == ["n1", "n2"] and sent["complete"]
    assert main(["cmd", "send", *zk, "--select", "dc=west", "ping"]) == 0
    out = capsys.readouterr().out
    assert "n2" in out and "n1" not in out and "ok" in out
    assert main(["cmd", "send", *zk, "--node", "n1", "ping", "x=1"]) == 1
    assert "refused" in capsys.readouterr().out
    assert main(["cmd", "get", *zk, sent["id"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["replies"]["n1"]["status"] == "ok"
    assert main(["cmd", "list", *zk, "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["requests"]) == 3
    assert main(["cmd", "send", *zk, "--all", "ping", "--wait", "0"]) == 0
    rid = capsys.readouterr().out.strip()
    assert main(["cmd", "cancel", *zk, rid]) == 0
    assert main(["cmd", "get", *zk, rid, "--collect"]) in (0, 1)
    capsys.readouterr()
    assert main(["cmd", "get", *zk, rid]) == 2
    assert "no command request" in capsys.readouterr().err
    assert main(["cmd", "send", *zk, "--node", "nobody", "ping"]) == 2
    assert main(["cmd", "send", *zk, "--all", "Bad Name"]) == 2
    assert "invalid command name" in capsys.readouterr().err


@pytest.mark.zookeeper
def test_cli_output_fetches_a_large_output_by_the_reply_channel(
    agent_factory: AgentFactory,
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """send names the reply channel for a 200 KB output; output prints it whole with the
    secret and exits 2 with a clear message without it."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"cli-reply-channel-secret")
    secret.chmod(0o600)
    agent = agent_factory("n1", channel=ChannelSecurity(secret=secret.read_bytes()))
    agent.register("app.big", lambda ctx, args: "y" * 200_000)
    agent.start()
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster]
    assert main(["cmd", "send", *zk, "--node", "n1", "app.big", "--max-output", "300000"]) == 0
    captured = capsys.readouterr()
    assert "200002 bytes on the reply channel" in captured.out
    found = re.search(r"request ([0-9]{13}-[0-9a-f]{12})", captured.err)
    assert found is not None
    rid = found.group(1)
    assert main(["cmd", "output", *zk, rid, "n1", "--secret-file", str(secret), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == "y" * 200_000
    assert main(["cmd", "output", *zk, rid, "n1"]) == 2
    assert "give the CommandClient a channel" in capsys.readouterr().err
