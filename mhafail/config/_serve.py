"""GitDaemon: serve a node's config repositories read-only over ``git://``.

Each node runs one ``git daemon`` child bound to its own address, serving
each repository's *export* repository (``git://host:port/<repo>/export``)
and advertises ``host:port`` as the ``git`` endpoint in its member info.
``git daemon`` only ever runs ``upload-pack`` (the receive-pack service is
off by default), so peers can fetch but never push.

What is served: only directories marked ``git-daemon-export-ok`` (no
``--export-all``), which mhafail creates in export repositories alone. An
export repository holds published, checked history and nothing else; the
working copy (``<repo>/work``, with the operators' stash entries, drafts
and commits that lost the race) is never served. That matters because
``upload-pack`` under protocol v2 hands out *any* object it holds to a
client naming its sha, whatever ``uploadpack.allowAnySHA1InWant`` says.

The child gets ``PR_SET_PDEATHSIG``: if the node process is SIGKILLed, the
kernel kills its daemon too, so no orphan keeps serving a dead node's
repository (or its port).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import attrs

from mhafail.config._paths import absolute_path
from mhafail.errors import InvalidChange, RepositoryError

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
ENDPOINT = "git"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child after fork
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.setpgrp()


def _daemon_program() -> str:
    # Run git-daemon itself, not the `git daemon` wrapper: the wrapper forks
    # it, and the parent-death signal does not survive a fork, so a SIGKILLed
    # node would leave an orphan daemon serving its repository.
    try:
        out = subprocess.run(
            ["git", "--exec-path"], capture_output=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise RepositoryError(f"cannot find git: {exc}") from exc
    program = Path(out.decode().strip()) / "git-daemon"
    if not program.exists():
        raise RepositoryError(f"git-daemon is not installed ({program} missing)")
    return str(program)


_ENDPOINT = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}")


def repo_url(endpoint: str, repo: str) -> str:
    """The fetch URL of ``repo`` on a node whose git endpoint is ``host:port``.

    The endpoint comes from a member znode (shared data): only a plain
    ``host:port`` or ``[v6]:port`` is accepted, so it can never turn into
    another URL, path or transport.

    Raises:
        InvalidChange: the endpoint is not ``host:port``.
    """
    if not isinstance(endpoint, str) or _ENDPOINT.fullmatch(endpoint) is None:
        raise InvalidChange(f"invalid git endpoint {str(endpoint)[:80]!r}: need host:port")
    return f"git://{endpoint}/{repo}/export"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


@attrs.define(kw_only=True, eq=False)
class GitDaemon:
    """A ``git daemon`` child process serving ``base`` read-only.

    Args:
        base: the node's config directory (holds ``<repo>/export``).
        host: the address to bind (the node's own address).
        port: the port (0: pick a free one).
        start_timeout: seconds :meth:`start` waits for the port to accept.

    Start it from a thread that lives as long as the daemon should (the
    main thread): the kernel's parent-death signal is tied to that thread.
    """

    base: Path = attrs.field(converter=absolute_path)
    host: str = "127.0.0.1"
    port: int = 0
    start_timeout: float = 10.0
    _proc: subprocess.Popen[bytes] | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise InvalidChange(f"invalid git daemon port {self.port}")

    @property
    def endpoint(self) -> str:
        """``host:port``, for ``NodeInfo.endpoints["git"]``."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """True while the daemon process lives."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> GitDaemon:
        """Start the daemon and wait until it accepts connections.

        Raises:
            RepositoryError: git daemon exited or never accepted (port taken?).
        """
        if self._proc is not None:
            raise RepositoryError("git daemon already started")
        self.base.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = _free_port(self.host)
        argv = [
            _daemon_program(),
            "--reuseaddr",
            "--informative-errors",
            f"--base-path={self.base}",
            f"--listen={self.host}",
            f"--port={self.port}",
            "--max-connections=64",
            "--timeout=30",
            str(self.base),
        ]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl must run in the child
        )
        end = time.monotonic() + self.start_timeout
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RepositoryError(f"git daemon on {self.endpoint} exited with {code}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                break
            if time.monotonic() > end:
                self.stop()
                raise RepositoryError(f"git daemon on {self.endpoint} did not start")
            time.sleep(0.02)
        logger.info("serving %s on git://%s", self.base, self.endpoint)
        return self

    def stop(self) -> None:
        """Stop the daemon and its per-connection children; idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def __enter__(self) -> GitDaemon:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
