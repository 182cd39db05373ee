"""TLS to ZooKeeper: a real server with a secure client port (Netty factory, PEM files).

Debian's ZooKeeper supports ``secureClientPort`` only with the Netty
connection factory; the netty jars Debian ships next to it work once they
are on the class path (the NIO factory cannot do TLS).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from mhafail.coordination import Coordinator, Credentials, TlsSettings
from mhafail.errors import CoordinationUnavailable, InvalidArgument
from mhafail.testing import ZooKeeperServer, free_port

pytestmark = pytest.mark.zookeeper

NETTY = ("buffer", "codec", "common", "handler", "resolver", "transport")
NETTY += ("transport-native-epoll", "transport-native-unix-common")


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=mha-test-ca",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, extra in (("server", ["-extfile", str(d / "san.cnf")]), ("client", [])):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN=mha-{name}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(d / f"{name}.pem"),
            *extra,
        )
        (d / f"{name}.key").chmod(0o600)
    (d / "server-keystore.pem").write_text(
        (d / "server.key").read_text() + (d / "server.pem").read_text()
    )
    return d


@attrs.define(kw_only=True, eq=False)
class TlsZooKeeper(ZooKeeperServer):
    """A ZooKeeperServer that also serves TLS (mutual) on ``secure_port``."""

    pki: Path
    secure_port: int = attrs.field(factory=free_port)

    def _write_config(self) -> Path:
        cfg = super()._write_config()
        with cfg.open("a") as out:
            out.write(
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory\n"
                f"secureClientPort={self.secure_port}\n"
                f"secureClientPortAddress={self.host}\n"
                f"ssl.keyStore.location={self.pki / 'server-keystore.pem'}\n"
                "ssl.keyStore.type=PEM\n"
                f"ssl.trustStore.location={self.pki / 'ca.pem'}\n"
                "ssl.trustStore.type=PEM\n"
                "ssl.clientAuth=need\n"
            )
        return cfg


@pytest.fixture
def tls_zookeeper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, zookeeper: ZooKeeperServer
) -> Iterator[TlsZooKeeper]:
    """A started TLS ZooKeeper (the plain ``zookeeper`` fixture proves java is there)."""
    jars = [Path(f"/usr/share/java/netty-{n}.jar") for n in NETTY]
    if shutil.which("openssl") is None or not all(j.exists() for j in jars):
        pytest.fail("TLS test needs openssl and Debian's libnetty-java jars")
    from mhafail.testing._zookeeper import find_classpath

    monkeypatch.setenv("MHAFAIL_ZOOKEEPER_CLASSPATH", ":".join([find_classpath(), *map(str, jars)]))
    server = TlsZooKeeper(pki=make_pki(tmp_path), tick_time=100)
    server.start()
    yield server
    server.cleanup()


def test_coordinator_works_over_mutual_tls(tls_zookeeper: TlsZooKeeper) -> None:
    """With the CA and a client certificate, a credentialed coordinator runs over TLS."""
    pki = tls_zookeeper.pki
    tls = TlsSettings(
        ca=str(pki / "ca.pem"), certfile=str(pki / "client.pem"), keyfile=str(pki / "client.key")
    )
    hosts = f"127.0.0.1:{tls_zookeeper.secure_port}"
    credentials = Credentials(user="ops", password="pw")  # noqa: S106 - a test password
    with Coordinator(hosts=hosts, cluster="tls", credentials=credentials, tls=tls) as c:
        assert c.znodes.create("members/n1", b"{}") is not None


# kazoo leaves the socket of a failed TLS handshake to the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_tls_without_client_certificate_or_trusted_ca_is_refused(
    tls_zookeeper: TlsZooKeeper,
) -> None:
    """No client certificate, or a CA that did not sign the server: no session."""
    pki = tls_zookeeper.pki
    hosts = f"127.0.0.1:{tls_zookeeper.secure_port}"
    for tls in (
        TlsSettings(ca=str(pki / "ca.pem")),
        TlsSettings(
            ca=str(pki / "client.pem"),
            certfile=str(pki / "client.pem"),
            keyfile=str(pki / "client.key"),
        ),
    ):
        c = Coordinator(hosts=hosts, cluster="tls", open_acl=True, tls=tls, connect_timeout=1)
        with pytest.raises(CoordinationUnavailable):
            c.start()


def test_readable_tls_key_is_refused(tmp_path: Path) -> None:
    """A client key that group or others can read is refused before connecting."""
    key = tmp_path / "k.pem"
    key.write_text("x")
    key.chmod(0o644)
    (tmp_path / "c.pem").write_text("x")
    with pytest.raises(InvalidArgument, match="chmod 600"):
        TlsSettings(certfile=str(tmp_path / "c.pem"), keyfile=str(key))
