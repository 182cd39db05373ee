"""Issue 19: every long-running command stops within 5 s of SIGTERM, with ZooKeeper dead or hung.

Each case runs the command as a real process against its own ZooKeeper
server (not the session one: the test kills or SIGSTOPs it), lets it do
real work, breaks ZooKeeper, sends SIGTERM and checks the exit time, the
exit status (0: a clean stop, not the watchdog) and the state left behind.
The 5 s is the correctness bound of the issue, not a benchmark.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.jlog import Jlog, Whence
from mhafail.logs import JlogService, LogAggregator, StreamState
from mhafail.testing import ZooKeeperServer
from mhafail.testing._children import reap, spawn

SECRET = b"0123456789abcdef-sigterm-secret"
BOUND = 5.0
PY = [sys.executable, "-m", "mhafail"]


@attrs.define
class Case:
    """One command under test: how to start it, what to check after it stopped."""

    argv: list[str]
    ready: bytes
    work: Callable[[], None] = lambda: None
    after_fault: Callable[[], None] = lambda: None
    check: Callable[[], None] = lambda: None
    cleanup: list[Callable[[], None]] = attrs.field(factory=list)
    proc: subprocess.Popen[bytes] | None = None
    out: Path | None = None


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _records(path: Path, start: int, count: int) -> None:
    with Jlog.open(path).writer() as writer:
        writer.write_many([f"record {i:06d}".encode() for i in range(start, start + count)])


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


class _Member:
    """An in-test process side: coordinator and membership on the test's ZooKeeper."""

    def __init__(self, zk: str, name: str, **info: object) -> None:
        self.coordinator = Coordinator(
            hosts=zk, cluster="c1", session_timeout=2, connect_timeout=10, open_acl=True
        ).start()
        self.membership = Membership(
            coordinator=self.coordinator,
            info=NodeInfo(name=name, **info),  # type: ignore[arg-type]
        )

    def stop(self) -> None:
        self.membership.stop()
        self.coordinator.stop()


def _secret_file(root: Path) -> Path:
    path = root / "secret"
    path.write_bytes(SECRET)
    path.chmod(0o600)
    return path


def _logs_serve(zk: str, root: Path) -> Case:
    """Node side; an in-test manager pulls from it while ZooKeeper breaks."""
    jlog = root / "n1" / "mainlog"
    common = ["--zk", zk, "--cluster", "c1", "--connect-timeout", "10"]
    argv = [*PY, "logs", "serve", *common, "--node", "n1", "--log", f"mainlog={jlog}"]
    argv += ["--manager", "m1", "--secret-file", str(_secret_file(root))]
    argv += ["--session-timeout", "2", "--heartbeat", "0.3"]
    case = Case(argv=argv, ready=b'"event": "ready"')
    base = root / "out"

    aggs: list[LogAggregator] = []

    def work() -> None:
        member = _Member(zk, "m1")
        case.cleanup.append(member.stop)
        agg = LogAggregator(
            coordinator=member.coordinator,
            membership=member.membership,
            name="m1",
            base=base,
            secret=SECRET,
            heartbeat=0.3,
            retry=0.2,
        ).start()
        case.cleanup.insert(0, agg.stop)
        aggs.append(agg)
        member.membership.start()
        _records(jlog, 0, 100)
        agg.wait_for(lambda st: any(s.records == 100 for s in st), timeout=20)

    def after_fault() -> None:
        # Records keep flowing with ZooKeeper broken: the stream is direct.
        _records(jlog, 100, 100)
        aggs[0].wait_for(lambda st: any(s.records == 200 for s in st), timeout=20)

    def check() -> None:
        log = Jlog.open(jlog)
        assert log.inspect().ok, log.inspect().problems
        (sub,) = [s for s in log.subscribers() if s.name == "m1"]
        state = StreamState.from_json((base / ".mhafail-state/n1/mainlog.json").read_bytes())
        assert state.last_id is not None and sub.position <= state.last_id
        with log.tail(start=Whence.BEGIN) as tail:
            payloads = [m.payload for m in tail.read_batch(1000)]
        assert payloads == [f"record {i:06d}".encode() for i in range(200)]

    case.work, case.after_fault, case.check = work, after_fault, check
    return case


def _logs_manager(zk: str, root: Path) -> Case:
    """Manager side; an in-test node serves a jlog to it while ZooKeeper breaks."""
    base = root / "out"
    common = ["--zk", zk, "--cluster", "c1", "--connect-timeout", "10"]
    argv = [*PY, "logs", "manager", *common, "--name", "m1", "--base", str(base)]
    argv += ["--secret-file", str(_secret_file(root)), "--session-timeout", "2"]
    argv += ["--heartbeat", "0.3", "--retry", "0.2"]
    case = Case(argv=argv, ready=b'"event": "ready"')
    jlog = root / "n1" / "mainlog"
    state_path = base / ".mhafail-state/n1/mainlog.json"

    def lines() -> list[bytes]:
        files = sorted(p for p in base.glob("*/*/*/mainlog/c1/n1") if p.is_file())
        return b"".join(f.read_bytes() for f in files).splitlines()

    def before() -> None:
        service = JlogService(
            node="n1", logs={"mainlog": jlog}, managers=["m1"], secret=SECRET, heartbeat=0.3
        ).start()
        member = _Member(zk, "n1", endpoints={"jlog": service.endpoint})
        member.membership.start()
        case.cleanup += [member.stop, service.stop]
        _records(jlog, 0, 100)
        _wait(lambda: len(lines()) == 100, 20, "the first 100 records in the output")

    def after_fault() -> None:
        _records(jlog, 100, 100)
        _wait(lambda: len(lines()) == 200, 20, "200 records in the output")

    def check() -> None:
        state = StreamState.from_json(state_path.read_bytes())
        assert state.file is not None
        # Flushed and consistent: the state covers exactly the file, which holds
        # every record received, once, in order.
        assert state.offset == (base / state.file).stat().st_size
        assert state.records == 200
        assert lines() == [f"record {i:06d}".encode() for i in range(200)]
        (sub,) = [s for s in Jlog.open(jlog).subscribers() if s.name == "m1"]
        assert state.last_id is not None and sub.position <= state.last_id

    case.work, case.after_fault, case.check = before, after_fault, check
    return case


def _audit_node(zk: str, root: Path) -> Case:
    """An audit node writing as_logger snapshots, counting keys given on stdin."""
    snapshots = root / "snapshots"
    common = ["--zk", zk, "--cluster", "c1", "--connect-timeout", "10"]
    argv = [*PY, "audit", "node", *common, "--node", "a1", "--series", "conn"]
    argv += ["--listen", "127.0.0.1:0", "--secret-file", str(_secret_file(root))]
    argv += ["--session-timeout", "2", "--log-dir", str(snapshots), "--log-interval", "0.2"]
    case = Case(argv=argv, ready=b'"event": "ready"')

    def work() -> None:
        assert case.proc is not None and case.proc.stdin is not None
        case.proc.stdin.write(b"add conn 198.18.0.1 3\ncount conn 198.18.0.1\n")
        case.proc.stdin.flush()
        _wait(lambda: b'"count": 3' in case.out.read_bytes(), 10, "the count")  # type: ignore[union-attr]
        _wait(lambda: any(snapshots.rglob("*")), 10, "a snapshot")

    def check() -> None:
        assert case.out is not None
        assert b'"event": "stopped"' in case.out.read_bytes()
        # Nothing half written: no temporary files next to the snapshots.
        leftovers = [p for p in snapshots.rglob("*") if p.is_file() and ".tmp" in p.name]
        assert leftovers == []

    case.work, case.check = work, check
    return case


def _cidr_serve(zk: str, root: Path) -> Case:
    """The CIDR HTTP server (it uses no ZooKeeper; it must stop the same way)."""
    (root / "snap").mkdir()
    port_file = root / "port"
    from mhafail.testing import free_port

    port = free_port("127.0.0.1")
    port_file.write_text(str(port))
    argv = [*PY, "cidr", "--dir", str(root / "snap"), "--serve", "--port", str(port)]
    case = Case(argv=argv, ready=b"serving CIDR queries")

    def check() -> None:
        import socket

        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # the port is closed: the server is gone

    case.check = check
    return case


def _config_agent(zk: str, root: Path) -> Case:
    """A config replication agent with its git daemon."""
    common = ["--zk", zk, "--cluster", "c1", "--connect-timeout", "10"]
    argv = [*PY, "config", "agent", "--dir", str(root / "cfg"), "--node", "n1", *common]
    argv += ["--session-timeout", "2"]
    case = Case(argv=argv, ready=b'"event": "ready"')
    daemons: list[int] = []

    def work() -> None:
        assert case.proc is not None
        daemons.extend(_children(case.proc.pid))
        assert daemons, "no git daemon child found"

    def check() -> None:
        _wait(lambda: not any(_alive(pid) for pid in daemons), 2, "git daemon to go")

    case.work, case.check = work, check
    return case


COMMANDS: dict[str, Callable[[str, Path], Case]] = {
    "logs serve": _logs_serve,
    "logs manager": _logs_manager,
    "audit node": _audit_node,
    "cidr --serve": _cidr_serve,
    "config agent": _config_agent,
}


@pytest.fixture
def own_zk() -> Iterator[ZooKeeperServer]:
    """A ZooKeeper server of this test alone (the test kills or pauses it)."""
    server = ZooKeeperServer(tick_time=100).start()
    try:
        yield server
    finally:
        pid = server.pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        server.cleanup()


def _start(case: Case, root: Path) -> None:
    case.out = root / "output.txt"
    with open(case.out, "wb") as out:
        case.proc = spawn(case.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.PIPE)
    end = time.monotonic() + 30
    while case.ready not in case.out.read_bytes():
        if case.proc.poll() is not None or time.monotonic() > end:
            raise AssertionError(f"{case.argv[3:5]} did not start:\n{case.out.read_text()}")
        time.sleep(0.05)


def _end(case: Case) -> None:
    if case.proc is not None:
        if case.proc.poll() is None:
            reap(case.proc, signal.SIGKILL)
        if case.proc.stdin is not None:
            case.proc.stdin.close()
    for cleanup in case.cleanup:
        cleanup()


def _break(zk: ZooKeeperServer, fault: str) -> None:
    if fault == "killed":
        zk.kill()
    else:
        assert zk.pid is not None
        os.kill(zk.pid, signal.SIGSTOP)


def _run_case(command: str, fault: str, zk: ZooKeeperServer, root: Path) -> tuple[Case, float, int]:
    case = COMMANDS[command](zk.address, root)
    try:
        _start(case, root)
        case.work()
        _break(zk, fault)
        case.after_fault()
        time.sleep(0.5)  # let the command notice (or not) that ZooKeeper is gone
        assert case.proc is not None
        sent = time.monotonic()
        case.proc.send_signal(signal.SIGTERM)
        try:
            status = case.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            status = None
        took = time.monotonic() - sent
        assert status is not None, f"{command} still running 15 s after SIGTERM"
        return case, took, status
    finally:
        _end(case)


@pytest.mark.parametrize("fault", ["killed", "stopped"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_command_stops_within_5s_of_sigterm_with_zookeeper_broken(
    command: str, fault: str, own_zk: ZooKeeperServer, tmp_path: Path
) -> None:
    """With ZooKeeper SIGKILLed or SIGSTOPped, SIGTERM ends the command cleanly (status 0, no
    watchdog) within 5 s, and what it leaves on disk is consistent and complete."""
    case, took, status = _run_case(command, fault, own_zk, tmp_path)
    assert case.out is not None
    output = case.out.read_text(errors="replace")
    assert status == 0, f"{command}: exit {status}\n{output[-3000:]}"
    assert "exiting now" not in output, output[-3000:]
    assert took < BOUND, f"{command} took {took:.2f} s to stop"
    case.check()


@pytest.mark.parametrize("command", list(COMMANDS))
def test_second_signal_ends_the_command_at_once(
    command: str, own_zk: ZooKeeperServer, tmp_path: Path
) -> None:
    """A SIGINT right after the SIGTERM (ZooKeeper hung) ends the process at once, saying so."""
    case = COMMANDS[command](own_zk.address, tmp_path)
    try:
        _start(case, tmp_path)
        _break(own_zk, "stopped")
        assert case.proc is not None
        sent = time.monotonic()
        case.proc.send_signal(signal.SIGTERM)
        case.proc.send_signal(signal.SIGINT)
        status = case.proc.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        _end(case)
    assert case.out is not None
    output = case.out.read_text(errors="replace")
    assert status in (128 + signal.SIGTERM, 128 + signal.SIGINT), output[-3000:]
    assert "mhafail: second SIG" in output
    assert took < 1.0, f"{command} took {took:.2f} s after the second signal"


def test_zk_serve_stops_within_5s_with_its_server_hung(tmp_path: Path) -> None:
    """``zk serve`` with its own ZooKeeper SIGSTOPped stops on SIGTERM within 5 s and takes the
    server down with it; with the server killed it exits by itself, saying so."""
    for fault in ("stopped", "killed"):
        out = tmp_path / f"{fault}.txt"
        with open(out, "wb") as f:
            proc = spawn([*PY, "zk", "serve"], stdout=f, stderr=subprocess.STDOUT)
        try:
            _wait(lambda out=out: b"zookeeper serving on" in out.read_bytes(), 30, "zk serve")
            (java,) = _children(proc.pid)
            os.kill(java, signal.SIGSTOP if fault == "stopped" else signal.SIGKILL)
            sent = time.monotonic()
            if fault == "stopped":
                proc.send_signal(signal.SIGTERM)
            status = proc.wait(timeout=15)
            took = time.monotonic() - sent
        finally:
            if proc.poll() is None:
                reap(proc, signal.SIGKILL)
        text = out.read_text(errors="replace")
        assert took < BOUND, f"{fault}: {took:.2f} s"
        assert not _alive(java), "the ZooKeeper server outlived zk serve"
        if fault == "stopped":
            assert status == 0 and "zookeeper stopped" in text, text[-2000:]
        else:
            assert status == 1 and "zookeeper exited" in text, text[-2000:]


def test_watchdog_ends_a_stop_that_hangs(tmp_path: Path) -> None:
    """A command whose clean stop hangs is ended by the watchdog ``grace`` seconds after
    the signal, with a message, so a supervisor never needs SIGKILL."""
    script = (
        "import time\n"
        "from mhafail.cli._signals import stop_on_signals\n"
        "stop = stop_on_signals(grace=0.5)\n"
        "print('ready', flush=True)\n"
        "stop.wait()\n"
        "time.sleep(60)  # a stop path that never ends\n"
    )
    proc = spawn([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            reap(proc, signal.SIGKILL)
    assert proc.stderr is not None
    assert status == 128 + signal.SIGTERM
    assert b"still stopping 0.5 s after the signal" in proc.stderr.read()
    assert 0.4 < took < 3
