"""The fence process: removes managed VIPs when the agent stops renewing its lease.

A paused agent (SIGSTOP, a long GC, a deadlock) cannot remove its own
addresses, yet ZooKeeper will expire its session and a survivor will take
them over. This small separate process, in its own session (so a SIGSTOP
or SIGKILL of the agent's process group does not reach it), holds the
agent's latest lease deadline and the addresses it manages, and removes
them all at the deadline unless a newer deadline arrives first.

Protocol: one line per message on stdin (``time.monotonic()`` readings,
which all processes on a Linux host share)::

    deadline <t>                        the lease now runs until t
    manage <iface> <address> <t>        about to plumb address (lease until t)
    unmanage <iface> <address>          address was removed by the agent
    exit                                graceful end: the agent released everything

On end of input (the agent died) the fence waits for the last deadline,
removes what it manages and exits. Run as ``python -m mhafail.vip.fence``.
"""

from __future__ import annotations

import ipaddress
import os
import select
import sys
import time

from mhafail.errors import PlumbingError
from mhafail.vip._plumber import NetlinkPlumber
from mhafail.vip._spec import Vip


def _log(text: str) -> None:
    sys.stderr.write(f"mhafail-fence: {text}\n")
    sys.stderr.flush()


class Fence:
    """The fence's state machine, separate from I/O so it can be unit-tested."""

    def __init__(self, remove: object) -> None:
        self.remove = remove
        self.deadline: float | None = None
        self.managed: dict[str, Vip] = {}
        self.fired = False

    def handle(self, line: str) -> bool:
        """Apply one message; return False when the fence should exit."""
        parts = line.split()
        if not parts:
            return True
        if parts[0] == "exit":
            return False
        if parts[0] == "deadline" and len(parts) == 2:
            self._extend(float(parts[1]))
        elif parts[0] == "manage" and len(parts) == 4:
            vip = Vip(address=ipaddress.ip_address(parts[2]), interface=parts[1])
            self.managed[vip.key] = vip
            self._extend(float(parts[3]))
        elif parts[0] == "unmanage" and len(parts) == 3:
            self.managed.pop(str(ipaddress.ip_address(parts[2])), None)
        else:
            _log(f"ignoring malformed message {line.strip()!r}")
        return True

    def _extend(self, deadline: float) -> None:
        if self.deadline is None or deadline > self.deadline:
            self.deadline = deadline
            if deadline > time.monotonic():
                self.fired = False

    def due(self, now: float) -> bool:
        """True when the deadline has passed and addresses are still managed."""
        return (
            not self.fired
            and self.deadline is not None
            and now >= self.deadline
            and bool(self.managed)
        )

    def fire(self) -> None:
        """Remove every managed address (idempotent)."""
        self.fired = True
        for vip in list(self.managed.values()):
            try:
                if self.remove(vip):  # type: ignore[operator]
                    _log(f"lease ran out: removed {vip.key} from {vip.interface}")
            except PlumbingError as exc:
                _log(f"could not remove {vip.key}: {exc}")


def main() -> int:
    """Run the fence until ``exit``, or until the agent is gone and its lease ran out."""
    plumber = NetlinkPlumber()
    fence = Fence(plumber.ensure_absent)
    stdin = sys.stdin.fileno()
    buffer = b""
    alive = True
    try:
        while True:
            now = time.monotonic()
            if fence.due(now):
                fence.fire()
            if not alive:
                if fence.deadline is None or now >= fence.deadline:
                    if fence.managed and not fence.fired:
                        fence.fire()
                    return 0
                time.sleep(max(0.0, min(0.05, fence.deadline - now)))
                continue
            timeout = None
            if fence.deadline is not None and not fence.fired and fence.managed:
                timeout = max(0.0, fence.deadline - now)
            ready, _, _ = select.select([stdin], [], [], timeout)
            if not ready:
                continue
            chunk = os.read(stdin, 65536)
            if not chunk:
                alive = False
                _log("agent gone; holding its addresses until its lease runs out")
                continue
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if not fence.handle(line.decode(errors="replace")):
                    return 0
    finally:
        plumber.close()


if __name__ == "__main__":
    sys.exit(main())
