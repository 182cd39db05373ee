"""The fence process: removes managed VIPs when the agent stops renewing its lease.

A paused agent (SIGSTOP, a long GC, a deadlock) cannot remove its own
addresses, yet ZooKeeper will expire its session and a survivor will take
them over. This small separate process, in its own session (so a SIGSTOP
or SIGKILL of the agent's process group does not reach it), holds the
agent's latest lease deadline and the addresses it manages, and removes
them at the deadline unless a newer deadline arrives first.

Protocol: one line per message on stdin (``time.monotonic()`` readings,
which all processes on a Linux host share)::

    deadline <t>                        the lease now runs until t
    manage <iface> <address> <t>        about to plumb address (lease until t)
    unmanage <iface> <address>          address was removed by the agent
    exit                                graceful end: the agent released everything

and on stdout: ``ready rt=<0|1> locked=<0|1>`` once started, then ``ok``
after each batch of input it read (the agent's proof that the fence is
alive and reading). Writes to stdout never block the fence: if the agent
stops reading, acknowledgements are dropped.

Rules (safety rule 7):

* past the deadline, every managed address is removed, and removed *again*
  every few milliseconds for as long as the deadline stays past: an agent
  that checked its lease, stalled, and plumbed after the deadline finds its
  address gone at once; ``manage`` after the deadline removes at once;
* on SIGTERM or SIGINT (a supervisor stopping the service or killing the
  agent's control group) every managed address is removed before exit;
* on end of input (the agent died) it waits for the last deadline, removes
  what it manages and exits;
* it asks for real-time scheduling (SCHED_FIFO) and locks its memory where
  permitted, so CPU starvation of the agent's cgroup or memory pressure
  does not delay it;
* while the deadline is ahead it renews the kernel lifetime of every managed
  address that is present (``--lifetimes``), so that a host frozen as a
  whole drops them on its own. The renewal is here, not in the agent: a
  netlink *replace* re-creates a missing address, and an agent paused just
  before one would resurrect its address when resumed. A paused fence is
  replaced (SIGKILLed, so a pending renewal never runs) or, frozen with its
  agent, re-checks its deadline the moment it runs again.

Run as ``python -I -m mhafail.vip.fence`` with ``/`` as working directory
(isolated: nothing from the agent's directory or environment is imported).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import signal
import sys
import time
from collections.abc import Callable

from mhafail.errors import PlumbingError
from mhafail.vip._spec import Vip

# How often a past deadline is enforced again while addresses are managed.
ENFORCE_INTERVAL = 0.005
# How often the fence looks for kernel lifetimes to renew.
RENEW_INTERVAL = 0.25
# An address is renewed when its kernel lifetime may end within this long:
# two looks of slack, so a renewal never comes too late, and a lifetime of
# whole seconds is not rewritten with the same value four times a second.
RENEW_AHEAD = 0.75
# The shortest lifetime any plumbing or renewal gives (the kernel's unit).
MIN_LIFETIME = 1.0
_RT_PRIORITY = 10
_MCL_CURRENT, _MCL_FUTURE = 1, 2


def _log(text: str) -> None:
    # stderr is a pipe to the agent: when the agent is dead, a write fails.
    # The fence's work matters most exactly then, so logging never raises.
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"mhafail-fence: {text}\n")
        sys.stderr.flush()


class Fence:
    """The fence's state machine, separate from I/O so it can be unit-tested.

    Args:
        remove: removes one address; returns True if it was present.
        clock: the monotonic clock.
        renew: renews the kernel lifetimes of present addresses up to a deadline.
        remove_many: removes many addresses in one batch; returns the ones
            that were present. Enforcement runs every few milliseconds while
            the deadline is past: one netlink batch instead of a request
            per address keeps a real-time fence with hundreds of addresses
            from hogging its CPU.
    """

    def __init__(
        self,
        remove: Callable[[Vip], bool],
        clock: Callable[[], float] = time.monotonic,
        *,
        renew: Callable[[list[Vip], float], dict[str, float]] | None = None,
        remove_many: Callable[[list[Vip]], frozenset[str]] | None = None,
    ) -> None:
        self.remove = remove
        self.remove_many = remove_many
        self.clock = clock
        self.renew = renew
        self.deadline: float | None = None
        self.managed: dict[str, Vip] = {}
        self.next_renew = 0.0
        # Per managed address, a time before which its kernel lifetime
        # cannot end (a lower bound: renewing early is only extra work).
        self.kernel_end: dict[str, float] = {}
        # Unmanaged in the batch being read: removed once more after it (see settle).
        self.dropped: dict[str, Vip] = {}

    def handle(self, line: str) -> bool:
        """Apply one message; return False when the fence should exit."""
        parts = line.split()
        if not parts:
            return True
        try:
            if parts[0] == "exit" and len(parts) == 1:
                return False
            if parts[0] == "deadline" and len(parts) == 2:
                self._extend(float(parts[1]))
            elif parts[0] == "manage" and len(parts) == 4:
                vip = Vip(address=ipaddress.ip_address(parts[2]), interface=parts[1])
                self.managed[vip.key] = vip
                self.dropped.pop(vip.key, None)  # plumbed again: not to be removed
                # The agent plumbs after this notice, with a lifetime of at
                # least a second: the first renewal can wait that long.
                self.kernel_end[vip.key] = self.clock() + MIN_LIFETIME
                self._extend(float(parts[3]))
                if self.expired():
                    self.enforce()  # told after the deadline: remove at once
            elif parts[0] == "unmanage" and len(parts) == 3:
                key = str(ipaddress.ip_address(parts[2]))
                if (gone := self.managed.pop(key, None)) is not None and self.renew is not None:
                    self.dropped[key] = gone
                self.kernel_end.pop(key, None)
            else:
                _log(f"ignoring malformed message {line.strip()[:200]!r}")
        except ValueError:
            _log(f"ignoring malformed message {line.strip()[:200]!r}")
        return True

    def settle(self) -> None:
        """After a batch of messages: remove the addresses it unmanaged, once more.

        A renewal checks that an address is present and then *replaces* it,
        which adds it back if the agent removed it in between; the agent's
        ``unmanage`` follows its removal, so removing the address again here
        undoes such a renewal (an address unmanaged and managed again in the
        same batch is left alone: the agent plumbs it again).
        """
        vips, self.dropped = list(self.dropped.values()), {}
        for vip in vips:
            try:
                if self.remove(vip):
                    _log(f"removed {vip.key} again: a renewal had added it back")
            except PlumbingError as exc:
                _log(f"could not remove {vip.key}: {exc}")

    def _extend(self, deadline: float) -> None:
        if self.deadline is None or deadline > self.deadline:
            self.deadline = deadline

    def expired(self) -> bool:
        """True when the deadline has passed (or none was ever given)."""
        return self.deadline is None or self.clock() >= self.deadline

    def due(self) -> bool:
        """True when addresses are managed and the deadline has passed."""
        return bool(self.managed) and self.expired()

    def renew_due(self) -> bool:
        """True when lifetimes should be renewed now (deadline ahead, addresses managed)."""
        return (
            self.renew is not None
            and bool(self.managed)
            and not self.expired()
            and self.clock() >= self.next_renew
        )

    def renew_lifetimes(self) -> None:
        """Renew, up to the deadline, the kernel lifetimes that may end soon.

        Only addresses within ``RENEW_AHEAD`` of their lifetime's end are
        renewed: with a hundred VIPs per node, renewing all of them four
        times a second at real-time priority took most of a CPU.
        """
        assert self.renew is not None and self.deadline is not None
        now = self.clock()
        self.next_renew = now + RENEW_INTERVAL
        due = [
            vip
            for key, vip in self.managed.items()
            if self.kernel_end.get(key, 0.0) - now < RENEW_AHEAD
        ]
        if due:
            try:
                lifetimes = self.renew(due, self.deadline)
            except PlumbingError as exc:
                _log(f"could not renew lifetimes: {exc}")
            else:
                for key, lifetime in lifetimes.items():
                    if key in self.managed:
                        self.kernel_end[key] = now + lifetime
        if self.expired():
            self.enforce()  # the deadline passed during the renewal: undo at once

    def enforce(self) -> None:
        """Remove every managed address (idempotent; they stay managed)."""
        vips = list(self.managed.values())
        if self.remove_many is not None:
            try:
                removed = self.remove_many(vips)
            except PlumbingError as exc:
                _log(f"could not remove them all at once ({exc}); one by one")
            else:
                for vip in vips:
                    if vip.key in removed:
                        _log(f"lease ran out: removed {vip.key} from {vip.interface}")
                return
        for vip in vips:
            try:
                if self.remove(vip):
                    _log(f"lease ran out: removed {vip.key} from {vip.interface}")
            except PlumbingError as exc:
                _log(f"could not remove {vip.key}: {exc}")


def _realtime() -> tuple[bool, bool]:
    """Lock memory, then ask for SCHED_FIFO; return (real-time, locked).

    Memory is locked first, at normal priority: mlockall faults in the
    whole address space (about 45 MiB with pyroute2), work that would
    otherwise hold a CPU away from every normal process for tens of
    milliseconds.
    """
    rt = locked = False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        locked = libc.mlockall(_MCL_CURRENT | _MCL_FUTURE) == 0
    except (OSError, AttributeError):
        pass
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_RT_PRIORITY))
        rt = True
    except (OSError, AttributeError):
        pass
    return rt, locked


def _leave_realtime() -> None:
    """Back to normal scheduling once nothing is left to protect.

    Tearing down a process with locked memory takes 50-100 ms of CPU; at
    real-time priority nothing else runs on that CPU meanwhile, and on a
    small host the survivors taking over the released VIPs (and
    ZooKeeper) stalled behind a fence that was merely exiting.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


class _Stop(Exception):
    """Raised by the signal handler to leave the loop."""


def _ack(fd: int, data: bytes) -> None:
    # The agent may not be reading (stalled, or gone): never wait for it.
    with contextlib.suppress(BlockingIOError, BrokenPipeError):
        os.write(fd, data)


def _orphaned(fence: Fence) -> int:
    """The agent is gone: remove what it managed when its lease runs out, then exit."""
    while fence.managed:
        if fence.due():
            fence.enforce()
            return 0
        assert fence.deadline is not None  # managed addresses always came with one
        time.sleep(min(0.05, max(ENFORCE_INTERVAL, fence.deadline - fence.clock())))
    return 0


def run(fence: Fence, stdin: int, stdout: int) -> int:
    """The fence's loop; returns the exit status."""
    buffer = b""
    while True:
        if fence.due():
            fence.enforce()
        elif fence.renew_due():
            fence.renew_lifetimes()
        timeout = None
        if fence.managed:
            timeout = ENFORCE_INTERVAL
            if fence.deadline is not None and not fence.expired():
                timeout = max(0.0, fence.deadline - fence.clock())
                if fence.renew is not None:
                    timeout = max(0.0, min(timeout, fence.next_renew - fence.clock()))
        ready, _, _ = select.select([stdin], [], [], timeout)
        if not ready:
            continue
        chunk = os.read(stdin, 65536)
        if not chunk:
            _log("agent gone; holding its addresses until its lease runs out")
            return _orphaned(fence)
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if not fence.handle(line.decode(errors="replace")):
                return 0
        fence.settle()
        if len(buffer) > 4096:
            _log("dropping an over-long message")
            buffer = b""
        _ack(stdout, b"ok\n")


def main() -> int:
    """Run the fence until ``exit``, or until the agent is gone and its lease ran out."""
    try:
        from mhafail.vip._plumber import NetlinkPlumber, kernel_lifetime

        plumber = NetlinkPlumber()
    except Exception as exc:  # reported to the agent as one line, not a traceback
        _log(f"cannot start: {type(exc).__name__}: {exc}")
        return 2

    def renew(vips: list[Vip], deadline: float) -> dict[str, float]:
        # Only addresses the agent actually plumbed: a replace would add the rest.
        present: dict[str, frozenset[str]] = {}
        for vip in vips:
            if vip.interface not in present:
                present[vip.interface] = plumber.addresses(vip.interface)
        there = [vip for vip in vips if vip.key in present[vip.interface]]
        left = deadline - time.monotonic()
        if not there or left <= 0:
            return {}
        plumber.renew_many(there, left)  # one netlink batch, not one call per address
        return {vip.key: float(kernel_lifetime(left)) for vip in there}

    fence = Fence(
        plumber.ensure_absent,
        renew=renew if "--lifetimes" in sys.argv[1:] else None,
        remove_many=plumber.ensure_absent_many,
    )
    rt, locked = _realtime()
    stdout = sys.stdout.fileno()
    os.set_blocking(stdout, False)

    def on_signal(signum: int, _frame: object) -> None:
        raise _Stop(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    _ack(stdout, f"ready rt={int(rt)} locked={int(locked)}\n".encode())
    try:
        status = run(fence, sys.stdin.fileno(), stdout)
    except _Stop as stop:
        # A supervisor stops the service (or systemd's KillMode=control-group
        # after the agent died): nothing may stay plumbed without the agent.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _log(f"{stop.args[0]}: removing {len(fence.managed)} managed address(es)")
        fence.enforce()
        status = 0
    # Every exit path has removed (or handed back) what it managed: the
    # rest is teardown, which must not run at real-time priority.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    _leave_realtime()
    plumber.close()
    return status


if __name__ == "__main__":
    code = main()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.flush()
    # No interpreter teardown: nothing needs it, and it is CPU spent while
    # the host is busy taking over the addresses this fence gave up.
    os._exit(code)
