"""Attacks on the authenticated channel, each performed against a real listening socket."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mhafail.audit import AuditSeries, ClusterAudit
from mhafail.channel import Channel, ChannelSecurity, Listener, connect
from mhafail.errors import (
    AuditInvalidArgument,
    ChannelAuthFailed,
    ChannelClosed,
    ChannelInvalidArgument,
)

SECRET = b"channel-test-secret-0123"


def _echo(chan: Channel) -> None:
    while True:
        chan.send(chan.recv_one(30.0), 5.0)


@pytest.fixture
def listener() -> Iterator[Listener]:
    """An echo service with a secret, small limits and short timeouts."""
    made = Listener(
        service="echo",
        security=ChannelSecurity(secret=SECRET),
        handler=_echo,
        max_connections=3,
        handshake_timeout=0.5,
        idle_timeout=0.5,
        max_frame=8192,
    ).start()
    try:
        yield made
    finally:
        made.stop()


def _raw(listener: Listener) -> socket.socket:
    host, port = listener.endpoint.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _read_frame(sock: socket.socket) -> bytes:
    (length,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
    return sock.recv(length, socket.MSG_WAITALL)


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the peer closes ``sock`` (EOF or reset) within ``seconds``."""
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def _wait(predicate: object, seconds: float = 5.0) -> None:
    end = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_round_trip_and_wrong_or_missing_secret(listener: Listener) -> None:
    """With the secret payloads round-trip; a wrong or missing secret is refused."""
    with contextlib.closing(
        connect(listener.endpoint, "echo", ChannelSecurity(secret=SECRET))
    ) as c:
        c.send(b"x" * 5000, 1.0)
        assert c.recv_one(2.0) == b"x" * 5000
        assert c.auth == "hmac"
    with pytest.raises(ChannelAuthFailed, match="authentication failed"):
        connect(listener.endpoint, "echo", ChannelSecurity(secret=b"w" * 24))
    with pytest.raises(ChannelAuthFailed, match="authentication required"):
        connect(listener.endpoint, "echo", ChannelSecurity())


def test_oversized_pre_auth_header_is_refused_without_allocating(listener: Listener) -> None:
    """Attack: a 4-byte header announcing 256 MiB before authenticating; the listener closes
    at once (the pre-auth cap is 4 KiB), with the bytes never read or buffered."""
    with _raw(listener) as sock:
        assert json.loads(_read_frame(sock))["type"] == "hello"
        sock.sendall(struct.pack(">I", 256 << 20))
        assert _closed_within(sock, 2.0)
    # A frame just over the 4 KiB pre-auth cap is refused the same way.
    with _raw(listener) as sock:
        _read_frame(sock)
        sock.sendall(struct.pack(">I", 4097) + b"{" * 4097)
        assert _closed_within(sock, 2.0)
    _wait(lambda: listener.open_connections == 0)


def test_silent_client_is_closed_after_the_handshake_timeout(listener: Listener) -> None:
    """Attack: connect and say nothing; the listener hangs up after its handshake timeout."""
    with _raw(listener) as sock:
        start = time.monotonic()
        _read_frame(sock)
        assert _closed_within(sock, 5.0)
        assert time.monotonic() - start < 3.0


def test_idle_authenticated_connection_is_closed(listener: Listener) -> None:
    """An authenticated peer that goes silent is closed after the idle timeout."""
    chan = connect(listener.endpoint, "echo", ChannelSecurity(secret=SECRET))
    with contextlib.closing(chan), pytest.raises(ChannelClosed, match="closed by peer"):
        chan.recv_one(5.0)


def test_connection_cap_is_enforced(listener: Listener) -> None:
    """Attack: open more idle connections than the cap; the extra ones are closed at accept."""
    socks = [_raw(listener) for _ in range(3)]
    try:
        for sock in socks:
            _read_frame(sock)  # each got its hello: it holds a slot
        with _raw(listener) as extra:
            assert _closed_within(extra, 2.0)
        assert listener.refused_connections >= 1
    finally:
        for sock in socks:
            sock.close()
    _wait(lambda: listener.open_connections == 0)
    with contextlib.closing(connect(listener.endpoint, "echo", ChannelSecurity(secret=SECRET))):
        pass  # slots come back once the idle ones are gone


class _Tap:
    """A loopback TCP forwarder in front of a listener: records what clients send (per
    connection) and injects bytes towards the listener, as an on-path attacker would."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self.target = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.sent: list[bytearray] = []
        self.upstreams: list[socket.socket] = []
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                down, _ = self.server.accept()
                up = socket.create_connection(self.target)
                record = bytearray()
                self.sent.append(record)
                self.upstreams.append(up)
                self.socks += [down, up]
                threading.Thread(target=self._pump, args=(down, up, record), daemon=True).start()
                threading.Thread(target=self._pump, args=(up, down, None), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, record: bytearray | None) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if record is not None:
                    record += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def frames(self, conn: int) -> list[bytes]:
        """Every whole frame (header included) connection ``conn``'s client sent."""
        data, out, pos = bytes(self.sent[conn]), [], 0
        while pos + 4 <= len(data):
            (length,) = struct.unpack_from(">I", data, pos)
            out.append(data[pos : pos + 4 + length])
            pos += 4 + length
        return out

    def close(self) -> None:
        self.server.close()
        for sock in self.socks:
            sock.close()


def test_replayed_frame_is_rejected(listener: Listener) -> None:
    """Attack: replay an authenticated frame on the same connection; the listener closes it."""
    tap = _Tap(listener.endpoint)
    try:
        chan = connect(tap.endpoint, "echo", ChannelSecurity(secret=SECRET))
        with contextlib.closing(chan):
            chan.send(b"pay me once", 1.0)
            assert chan.recv_one(2.0) == b"pay me once"
            tap.upstreams[0].sendall(tap.frames(0)[-1])  # the same bytes, MAC and all
            with pytest.raises(ChannelClosed, match=r"closed by peer|receive failed"):
                chan.recv_one(2.0)  # no echo: the listener hung up
    finally:
        tap.close()


def test_replayed_frame_on_a_new_connection_is_rejected(listener: Listener) -> None:
    """Attack: replay a recorded authenticated frame on a fresh connection; keys differ per
    connection, so it fails its check."""
    tap = _Tap(listener.endpoint)
    try:
        first = connect(tap.endpoint, "echo", ChannelSecurity(secret=SECRET))
        first.send(b"recorded", 1.0)
        assert first.recv_one(2.0) == b"recorded"
        first.close()
        second = connect(tap.endpoint, "echo", ChannelSecurity(secret=SECRET))
        with contextlib.closing(second):
            tap.upstreams[1].sendall(tap.frames(0)[-1])
            with pytest.raises(ChannelClosed, match=r"closed by peer|receive failed"):
                second.recv_one(2.0)
    finally:
        tap.close()


def test_service_names_are_bound(listener: Listener) -> None:
    """A client asking for another service on this port is refused (no cross-protocol use)."""
    with pytest.raises(Exception, match="serves 'echo', not 'audit'"):
        connect(listener.endpoint, "audit", ChannelSecurity(secret=SECRET))


def test_listen_policy(tmp_path: Path) -> None:
    """No secret needs the explicit flag and loopback; TLS without client certificates is no
    authentication on a non-loopback address."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def make(host: str, **kw: object) -> Listener:
        return Listener(service="echo", host=host, handler=_echo, security=ChannelSecurity(**kw))  # type: ignore[arg-type]

    with pytest.raises(ChannelInvalidArgument, match="allow_unauthenticated=True"):
        make("127.0.0.1").start()
    with pytest.raises(ChannelInvalidArgument, match="loopback addresses only"):
        make("198.18.0.1", allow_unauthenticated=True).start()
    with pytest.raises(ChannelInvalidArgument, match="does not require client certificates"):
        make("198.18.0.1", ssl_context=server).start()
    with pytest.raises(ChannelInvalidArgument, match="without a shared secret or TLS"):
        connect("198.18.0.1:9", "echo", ChannelSecurity())
    open_one = make("127.0.0.1", allow_unauthenticated=True).start()
    try:
        with contextlib.closing(connect(open_one.endpoint, "echo", ChannelSecurity())) as chan:
            assert chan.auth == "none"
        with pytest.raises(ChannelAuthFailed, match="does not authenticate"):
            connect(open_one.endpoint, "echo", ChannelSecurity(secret=SECRET))
    finally:
        open_one.stop()


def _certs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=tmp_path)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "1", "-subj", "/CN=mha-test-ca")  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
        (tmp_path / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "1",
            "-extfile", f"{name}.ext")  # fmt: skip
    return tmp_path / "ca.pem", tmp_path / "server", tmp_path / "client", tmp_path


def test_mutual_tls_without_a_secret_refuses_clients_without_a_certificate(
    tmp_path: Path,
) -> None:
    """Attack: with mutual TLS as the only authentication, a client without a certificate is
    refused in the TLS handshake; one with a certificate from the CA is served."""
    ca, server_base, client_base, _ = _certs(tmp_path)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(f"{server_base}.pem", f"{server_base}.key")
    server.load_verify_locations(ca)
    server.verify_mode = ssl.CERT_REQUIRED
    listener = Listener(
        service="echo",
        security=ChannelSecurity(ssl_context=server),
        handler=_echo,
        handshake_timeout=1.0,
    ).start()
    try:
        anonymous = ssl.create_default_context(cafile=str(ca))
        with pytest.raises((ChannelClosed, ChannelAuthFailed)):
            chan = connect(listener.endpoint, "echo", ChannelSecurity(ssl_context=anonymous))
            chan.send(b"hi", 1.0)  # TLS 1.3 reports the refusal on first use
            chan.recv_one(2.0)
        client = ssl.create_default_context(cafile=str(ca))
        client.load_cert_chain(f"{client_base}.pem", f"{client_base}.key")
        with contextlib.closing(
            connect(listener.endpoint, "echo", ChannelSecurity(ssl_context=client))
        ) as chan:
            assert chan.auth == "tls"
            chan.send(b"hi", 1.0)
            assert chan.recv_one(2.0) == b"hi"
    finally:
        listener.stop()


# --- the audit port -----------------------------------------------------------------


@pytest.fixture
def audit_receiver() -> Iterator[tuple[ClusterAudit, AuditSeries]]:
    """A ClusterAudit receiving on loopback with the shared secret."""
    series = AuditSeries("conn", window_seconds=60, export_increments=True)
    audit = ClusterAudit(
        node="m", series=[series], listen="127.0.0.1:0", secret=SECRET, max_connections=4
    ).start()
    try:
        yield audit, series
    finally:
        audit.stop(flush_timeout=0)


def _push(n: int, origin: str = "evil") -> dict[str, object]:
    start = int(time.time() // 60) * 60
    batch = {
        "v": 1, "series": "conn", "family": "ipv4", "window_seconds": 60,
        "origin": {"node": origin, "incarnation": 1}, "seq": 1,
        "windows": [[start, [[3323068416, n]]]],
    }  # fmt: skip
    return {
        "v": 2, "type": "push", "origin": {"node": origin, "incarnation": 1},
        "items": [{"snapshot": False, "batch": batch}],
    }  # fmt: skip


def test_unauthenticated_push_to_the_audit_port_is_refused(
    audit_receiver: tuple[ClusterAudit, AuditSeries],
) -> None:
    """Attack: push a batch under a forged origin as a plain TCP client (the old wire format)
    and as a channel client without the secret; nothing is counted."""
    audit, series = audit_receiver
    host, port = audit.endpoints()["audit"].rsplit(":", 1)
    data = json.dumps(_push(1000)).encode()
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(struct.pack(">I", len(data)) + data)
        assert _closed_within(sock, 3.0)
    with pytest.raises(ChannelAuthFailed):
        connect(audit.endpoints()["audit"], "audit", ChannelSecurity(secret=b"guess" * 4))
    assert series.count("0.0.0.0/0") == 0
    assert audit.stats().received.applied == 0


@pytest.mark.parametrize("n", [2**63, 2**64, -1, 0])
def test_audit_increments_out_of_range_are_refused(
    audit_receiver: tuple[ClusterAudit, AuditSeries], n: int
) -> None:
    """An authenticated peer pushing an increment outside 1..2**63-1 gets the batch refused by
    name; the connection and the receiver go on, and a good batch still counts."""
    audit, series = audit_receiver
    chan = connect(audit.endpoints()["audit"], "audit", ChannelSecurity(secret=SECRET))
    with contextlib.closing(chan):
        chan.send(json.dumps(_push(n)).encode(), 2.0)
        reply = json.loads(chan.recv_one(2.0))
        assert reply["ok"] is True
        assert (
            "outside 1.." in reply["series"]["conn"]["error"]
            or "bad increment" in (reply["series"]["conn"]["error"])
        )
        chan.send(json.dumps(_push(5)).encode(), 2.0)
        assert json.loads(chan.recv_one(2.0))["series"]["conn"] == {"last_seq": 1}
    assert series.count("198.18.0.0/24") == 5


def test_audit_secret_stays_out_of_repr_and_policy_applies() -> None:
    """The audit secret is not in repr; listening without a secret needs the loopback flag."""
    series = AuditSeries("conn", export_increments=True)
    audit = ClusterAudit(node="m", series=[series], secret=SECRET)
    assert SECRET.decode() not in repr(audit)
    with pytest.raises(AuditInvalidArgument, match="allow_unauthenticated"):
        ClusterAudit(node="m", series=[series], listen="127.0.0.1:0")
    with pytest.raises(AuditInvalidArgument, match="loopback addresses only"):
        ClusterAudit(node="m", series=[series], listen="198.18.0.1:0", allow_unauthenticated=True)


def test_threads_do_not_pile_up_under_connection_floods(listener: Listener) -> None:
    """Attack: 40 connections at once against a cap of 3; open connections never exceed it."""
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, listener.open_connections)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    socks = [_raw(listener) for _ in range(40)]
    time.sleep(0.3)
    for sock in socks:
        sock.close()
    stop.set()
    watcher.join()
    assert peak <= 3
