"""The testing kit's ZooKeeper launcher and fault tools."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mhafail.errors import TestingError, ZooKeeperNotInstalled
from mhafail.testing import ZooKeeperServer, find_classpath, pause_process, resume_process

pytestmark = pytest.mark.zookeeper


def test_server_starts_restarts_and_cleans_up() -> None:
    """A server starts on a free port, keeps its data across restart, and leaves no files."""
    server = ZooKeeperServer(tick_time=50)
    try:
        server.start()
        assert server.mode() == "standalone"
        pid = server.pid
        server.restart()
        assert server.mode() == "standalone"
        assert server.pid != pid
        server.kill()
        assert not server.running
        assert server.mode() is None
    finally:
        server.cleanup()
    assert not server.workdir.exists()


def test_classpath_from_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """MHAFAIL_ZOOKEEPER_CLASSPATH overrides Debian's layout."""
    monkeypatch.setenv("MHAFAIL_ZOOKEEPER_CLASSPATH", "/opt/zk/lib/*")
    assert find_classpath() == "/opt/zk/lib/*"


def test_missing_zookeeper_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without java on PATH the error says exactly what to install."""
    monkeypatch.delenv("MHAFAIL_ZOOKEEPER_CLASSPATH", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ZooKeeperNotInstalled, match="apt-get install -y zookeeper"):
        find_classpath()


def test_broken_server_reports_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that cannot start raises TestingError with the tail of its log."""
    monkeypatch.setenv("MHAFAIL_ZOOKEEPER_CLASSPATH", str(tmp_path / "missing.jar"))
    server = ZooKeeperServer(workdir=tmp_path / "zk")
    with pytest.raises(TestingError, match="exited"):
        server.start(timeout=20)
    server.cleanup()


def test_no_orphan_server_when_the_parent_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed parent takes its ZooKeeper child with it (no orphans)."""
    script = (
        "import sys, time\n"
        "from mhafail.testing import ZooKeeperServer\n"
        "s = ZooKeeperServer().start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.stdout.close()
    os.kill(child, 0)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    end = time.monotonic() + 10
    while Path(f"/proc/{child}").exists() and time.monotonic() < end:
        time.sleep(0.05)
    assert not Path(f"/proc/{child}").exists()


def test_pause_and_resume_a_process() -> None:
    """pause_process stops a process (state T) and resume_process lets it run on."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pause_process(proc.pid)
        state = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        assert state == "T"
        resume_process(proc.pid)

        def state() -> str:
            return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]

        end = time.monotonic() + 5
        while state() in ("T", "t") and time.monotonic() < end:
            time.sleep(0.01)  # SIGCONT is delivered asynchronously
        assert state() not in ("T", "t")  # running or sleeping again (R, S or briefly D)
    finally:
        proc.kill()
        proc.wait()
