"""Manager output files: modes, the open-file cap, idle close; and TLS between the two sides."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
from pathlib import Path

import pytest

from mhafail.errors import LogsInvalidArgument
from mhafail.logs import JlogService
from mhafail.logs._client import open_request
from mhafail.logs._output import OutputFiles
from mhafail.logs._wire import PeerClosed

from .conftest import SECRET


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_cap_and_idle_close_never_close_a_file_in_use(tmp_path: Path) -> None:
    """Over the cap the least recently used idle file is closed, never one being written;
    idle files close after ``idle_close``; new files and directories get the modes asked."""
    clock = _Clock()
    files = OutputFiles(
        tmp_path / "out", file_mode=0o600, dir_mode=0o700, max_open=2, idle_close=10,
        monotonic=clock,
    )  # fmt: skip
    with files.use("a/1") as fd1, files.use("a/2"), files.use("b/3") as fd3:
        # Three in use at once: the cap yields rather than closing a descriptor under a writer.
        assert files.open_count == 3
        os.write(fd1, b"one\n")
        os.write(fd3, b"three\n")
    assert files.open_count == 2  # the least recently used idle file was closed
    assert (tmp_path / "out/a/1").read_bytes() == b"one\n"
    assert stat.S_IMODE((tmp_path / "out/a/1").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "out/a").stat().st_mode) == 0o700
    clock.now = 5
    with files.use("b/3"):
        pass
    clock.now = 12
    assert files.close_idle() == 1  # a/2 idle since 0; b/3 used at 5
    assert files.open_count == 1
    files.close_all()
    assert files.open_count == 0


def _cert(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def test_tls_service_serves_trusting_clients_only(tmp_path: Path) -> None:
    """Over TLS plus the secret a client that trusts the node's certificate is served; a plain
    client is not; TLS without client certificates and without a secret does not start."""
    key, cert = _cert(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=str(cert))
    with JlogService(node="n1", logs={"mainlog": tmp_path / "mainlog"}, ssl_context=server,
                     secret=SECRET, handshake_timeout=1.0) as svc:  # fmt: skip
        opened = open_request(svc.endpoint, {"op": "list"}, ssl_context=client, secret=SECRET)
        opened.conn.close()
        assert opened.accept["logs"] == ["mainlog"]
        with pytest.raises(PeerClosed):
            open_request(svc.endpoint, {"op": "list"}, timeout=1.0, secret=SECRET)
    no_client_certs = JlogService(node="n1", logs={"mainlog": tmp_path / "mainlog"},
                                  ssl_context=server)  # fmt: skip
    with pytest.raises(LogsInvalidArgument, match="does not require client certificates"):
        no_client_certs.start()
