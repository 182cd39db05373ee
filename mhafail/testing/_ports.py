"""Free loopback ports and short unique names for test resources."""

from __future__ import annotations

import os
import socket
import threading

_lock = threading.Lock()
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free now and not handed out before.

    The kernel picks the port; remembering what we handed out avoids giving
    the same port twice before its first user binds it.
    """
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise OSError("no free port found")


def unique_suffix() -> str:
    """A short suffix unique to this process and call (for names and paths)."""
    with _lock:
        unique_suffix.counter += 1  # type: ignore[attr-defined]
        return f"{os.getpid() % 100000:05d}{unique_suffix.counter:03d}"  # type: ignore[attr-defined]


unique_suffix.counter = 0  # type: ignore[attr-defined]


def in_ci() -> bool:
    """True when running under CI (``CI=true``), where skipped tests count as failures."""
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")
