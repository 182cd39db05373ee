"""An unreachable ZooKeeper gives one line, for CLI commands and for embedding applications."""

from __future__ import annotations

import subprocess
import sys
import time

from mhafail.testing import free_port

EMBEDDER = """
import sys
from mhafail.coordination import Coordinator
from mhafail.errors import CoordinationUnavailable
try:
    Coordinator(hosts=sys.argv[1], cluster="c", connect_timeout=2.0, open_acl=True).start()
except CoordinationUnavailable as exc:
    print(exc, file=sys.stderr)
"""


def test_an_embedding_application_without_logging_setup_sees_no_kazoo_noise() -> None:
    """kazoo's per-attempt warnings do not reach logging's last-resort handler (stderr)."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens: every attempt is refused
    proc = subprocess.run(
        [sys.executable, "-c", EMBEDDER, address], capture_output=True, timeout=60, check=False
    )
    lines = proc.stderr.decode().strip().splitlines()
    assert lines == [f"cannot reach ZooKeeper at {address} within 2 s"]


def test_a_command_without_connect_timeout_gives_up_after_the_default_five_seconds() -> None:
    """`mhafail members` on a refused port prints one line, soon after the 5 s default."""
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "mhafail", "members", "--zk", address, "--cluster", "c"]
    began = time.monotonic()
    proc = subprocess.run([*argv, "--zk-open"], capture_output=True, timeout=60, check=False)
    took = time.monotonic() - began
    lines = proc.stderr.decode().strip().splitlines()
    assert proc.returncode == 2
    assert [line for line in lines if "WITHOUT ZooKeeper ACLs" not in line] == [
        f"mhafail: error: cannot reach ZooKeeper at {address} within 5 s"
    ]
    assert took < 15.0, f"took {took:.1f} s"  # generous: the machine may be loaded
