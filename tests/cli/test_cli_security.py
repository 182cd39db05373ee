"""Credentials on the command line: --zk-auth, --zk-open, init, zk credentials, roles."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mhafail.cli import main
from mhafail.cli._zkargs import zk_security
from mhafail.coordination import Credentials, Role
from mhafail.errors import InvalidArgument
from mhafail.testing import ZooKeeperServer


@pytest.fixture
def closed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No suite-wide --zk-open: commands must be given credentials or refuse."""
    monkeypatch.delenv("MHAFAIL_ZK_OPEN", raising=False)
    monkeypatch.delenv("MHAFAIL_ZK_AUTH", raising=False)


@pytest.fixture
def auth_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """An operator and a node credentials file made by ``mhafail zk credentials``."""
    assert main(["zk", "credentials", "--dir", str(tmp_path / "auth"), "--json"]) == 0
    return dict(json.loads(capsys.readouterr().out)["files"])


def test_without_credentials_commands_refuse_with_a_clear_error(
    closed_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """No --zk-auth, no $MHAFAIL_ZK_AUTH and no --zk-open: exit 2 naming all three ways."""
    assert main(["members", "--zk", "127.0.0.1:1", "--cluster", "c"]) == 2
    err = capsys.readouterr().err
    assert "no ZooKeeper credentials" in err and "--zk-auth" in err and "--zk-open" in err
    assert "Traceback" not in err


def test_generated_files_are_private_and_hold_both_roles(auth_files: dict[str, str]) -> None:
    """zk credentials writes two 0600 files whose identities take the right roles."""
    for role, path in auth_files.items():
        assert os.stat(path).st_mode & 0o777 == 0o600
        assert Credentials.from_file(path).role is Role(role)
    assert main(["zk", "credentials", "--dir", str(Path(auth_files["node"]).parent)]) == 2


def test_readable_credentials_file_is_refused(auth_files: dict[str, str]) -> None:
    """A credentials file that group or others can read is refused, naming chmod."""
    os.chmod(auth_files["node"], 0o640)
    with pytest.raises(InvalidArgument, match="chmod 600"):
        Credentials.from_file(auth_files["node"])


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("credentials = mta\n", "USER:PASSWORD"),
        ("credentials = mta:pw\nnodes = nope\n", "invalid nodes id"),
        ("credentials = mta:pw\nnodes = x:AAAAAAAAAAAAAAAAAAAAAAAAAAA=\n", "neither"),
        ("user = mta\n", "line 1"),
        ("credentials = a:b\ncredentials = a:c\n", "twice"),
    ],
)
def test_malformed_credentials_files_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    """Each malformed credentials file gives InvalidArgument naming the problem."""
    path = tmp_path / "bad.auth"
    path.write_text(text)
    path.chmod(0o600)
    with pytest.raises(InvalidArgument, match=fragment):
        Credentials.from_file(path)


def test_environment_gives_credentials_and_flags_win(
    closed_env: None, auth_files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """$MHAFAIL_ZK_AUTH is used when no flag is given; --zk-auth and --zk-open win over it."""
    import argparse

    monkeypatch.setenv("MHAFAIL_ZK_AUTH", auth_files["node"])
    assert zk_security(argparse.Namespace())["credentials"].role is Role.NODE
    flagged = argparse.Namespace(zk_auth=auth_files["operator"])
    assert zk_security(flagged)["credentials"].role is Role.OPERATOR
    assert zk_security(argparse.Namespace(zk_open=True)) == {"open_acl": True}
    with pytest.raises(InvalidArgument, match="not both"):
        zk_security(argparse.Namespace(zk_auth=auth_files["node"], zk_open=True))


@pytest.mark.zookeeper
def test_only_operators_init_move_and_drain(
    closed_env: None,
    auth_files: dict[str, str],
    zookeeper: ZooKeeperServer,
    zk_cluster: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """init and drain work with the operator file; with the node file they exit 2."""
    zk = ["--zk", zookeeper.address, "--cluster", zk_cluster]
    node, operator = ["--zk-auth", auth_files["node"]], ["--zk-auth", auth_files["operator"]]
    assert main(["members", *zk, *node]) == 2
    assert "mhafail init" in capsys.readouterr().err  # a node never creates the cluster
    assert main(["init", *zk, *node]) == 2
    assert "operator credentials" in capsys.readouterr().err
    assert main(["init", *zk, *operator, "--config-repo", "config", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == []
    assert main(["vip", "drain", *zk, *node, "n1"]) == 2
    assert "refused by ZooKeeper ACLs" in capsys.readouterr().err
    assert main(["vip", "drain", *zk, *operator, "n1"]) == 0
    assert main(["members", *zk, *node, "--json"]) == 0
    assert main(["vip", "show", *zk, "--zk-open"]) == 2  # an open client is refused
    assert "zk-auth" in capsys.readouterr().err
