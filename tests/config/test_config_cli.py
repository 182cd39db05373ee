"""The ``mhafail config`` command: eccfg-like actions with --json, against real ZooKeeper."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from mhafail.cli import main
from mhafail.config import GitDaemon
from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.testing import ZooKeeperServer

pytestmark = pytest.mark.zookeeper


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    status = main(["config", *argv])
    out, err = capsys.readouterr()
    assert status == 0 or err, "a failing command must say why on stderr"
    print(err)
    return status, json.loads(out) if out.strip() and "--json" in argv else out


def test_cli_round_trip(
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """init, commit, log, diff, status, freeze/thaw, rollback and pull work and print JSON."""
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster, "--repo", "mta", "--json"]
    a = ["--dir", str(tmp_path / "a"), "--node", "a", *zk]
    b = ["--dir", str(tmp_path / "b"), "--node", "b", *zk]
    assert _run(capsys, "init", *a)[0] == 0
    work = tmp_path / "a" / "mta" / "work"
    (work / "global").mkdir()
    (work / "global" / "mta.toml").write_text("port = 25\n")
    (work / "global" / "other").write_text("x\n")
    status, first = _run(capsys, "commit", "-m", "first", "--author", "Op <op@example.org>", *a)
    assert status == 0 and isinstance(first, dict)
    assert sorted(first["paths"]) == ["global/mta.toml", "global/other"]
    (work / "global" / "mta.toml").write_text("port = 2525\n")
    status, diff = _run(capsys, "diff", *a)
    assert status == 0 and "+port = 2525" in diff["diff"]  # type: ignore[index]
    status, _ = _run(capsys, "commit", "-m", "second", "global/mta.toml", *a)
    assert status == 0
    status, log = _run(capsys, "log", *a)
    assert [e["message"] for e in log] == ["second", "first"]  # type: ignore[union-attr]
    status, rolled = _run(capsys, "rollback", first["sha"][:10], *a)
    assert status == 0
    assert _run(capsys, "freeze", "--node", "a", *zk[:-1], "--dir", str(tmp_path / "a"))[0] == 0
    status, st = _run(capsys, "status", *a)
    assert st["head"]["sha"] == rolled["sha"]  # type: ignore[index]
    assert st["nodes"] == {} and st["drift"] == []  # type: ignore[index]
    assert _run(capsys, "thaw", *a)[0] == 0
    # A second node cannot pull while no node serves the repository...
    assert main(["config", "init", *b]) == 2
    assert "cannot fetch" in capsys.readouterr().err
    # ...and pulls the head into its working copy once node a serves it.
    coordinator = coordinator_factory()
    with GitDaemon(base=tmp_path / "a") as daemon:
        info = NodeInfo(name="a", endpoints={"git": daemon.endpoint})
        membership = Membership(coordinator=coordinator, info=info).start()
        try:
            assert _run(capsys, "init", *b)[0] == 0
        finally:
            membership.stop()
    assert (tmp_path / "b" / "mta" / "work" / "global" / "mta.toml").read_text() == "port = 25\n"


def test_cli_bad_input_exits_2_with_a_message(
    zookeeper: ZooKeeperServer, zk_cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing to commit, malformed TOML, an unknown sha and a non-repository exit 2 and say why."""
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster, "--repo", "mta"]
    a = ["--dir", str(tmp_path / "a"), "--node", "a", *zk]
    assert main(["config", "init", *a]) == 0
    assert main(["config", "commit", "-m", "nothing", *a]) == 2
    assert "nothing to commit" in capsys.readouterr().err
    work = tmp_path / "a" / "mta" / "work"
    (work / "bad.toml").write_text("x = = 1\n")
    assert main(["config", "commit", "-m", "bad", *a]) == 2
    assert "bad.toml: invalid TOML" in capsys.readouterr().err
    assert main(["config", "rollback", "deadbeef", *a]) == 2
    assert "unknown commit" in capsys.readouterr().err
    assert main(["config", "log", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "not a config repository" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_cli_commit_refuses_symbolic_links(
    *,
    kind: str,
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    coordinator_factory: Callable[..., Coordinator],
) -> None:
    """A symlink in the working copy (to /etc/passwd or /etc) makes commit exit 2; nothing ships."""
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster, "--repo", "mta"]
    a = ["--dir", str(tmp_path / "a"), "--node", "a", *zk]
    assert main(["config", "init", *a]) == 0
    work = tmp_path / "a" / "mta" / "work"
    (work / "global").mkdir()
    (work / "global" / "ok.conf").write_text("fine\n")
    if kind == "file":
        (work / "global" / "pw").symlink_to("/etc/passwd")
    else:
        (work / "etc").symlink_to("/etc")
    assert main(["config", "commit", "-m", "steal", *a]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and ("global/pw" in err or "etc" in err)
    assert "Traceback" not in err
    assert coordinator_factory().znodes.get("config/mta/head") is None
