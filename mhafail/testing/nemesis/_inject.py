"""Process-level faults the nemesis needs beyond :mod:`mhafail.testing._faults`.

Finding an agent's fence (a child in its own session, so signals aimed at
the agent's process group miss it) and starving processes of CPU with a
cgroup quota (cgroup v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from mhafail.testing._children import reap, spawn
from mhafail.testing._ports import unique_suffix

logger = logging.getLogger(__name__)
CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (from /proc, any session)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rfind(")") + 2 :].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def fence_pid(agent_pid: int) -> int | None:
    """The pid of the agent's fence process (``python -m mhafail.vip.fence``), if running."""
    for pid in children(agent_pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mhafail.vip.fence" in cmdline:
            return pid
    return None


def _hierarchy() -> tuple[str, Path] | None:
    """("v2", mount) or ("v1", cpu mount) for a writable cgroup with the cpu controller."""
    for version, mount, probe in (
        ("v2", CGROUP_ROOT, "cgroup.controllers"),
        ("v2", CGROUP_ROOT / "unified", "cgroup.controllers"),
        ("v1", CGROUP_ROOT / "cpu", "cpu.cfs_quota_us"),
        ("v1", CGROUP_ROOT / "cpu,cpuacct", "cpu.cfs_quota_us"),
    ):
        try:
            text = (mount / probe).read_text()
        except OSError:
            continue
        if version == "v2" and "cpu" not in text.split():
            continue
        if os.access(mount, os.W_OK):
            return version, mount
    return None


def starvation_unavailable() -> str | None:
    """Why CPU starvation cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to create a cgroup"
    if _hierarchy() is None:
        return f"no writable cgroup with the cpu controller under {CGROUP_ROOT}"
    return None


class CpuStarvation:
    """Put ``pids`` and a busy loop into a new cgroup limited to ``quota_us`` per 100 ms.

    Models a starved host (a noisy neighbour, a throttled container): the
    processes run, but only for ``quota_us`` microseconds in every 100 ms,
    and the busy loop eats most of that. :meth:`end` puts every pid back
    where it was and removes the cgroup.

    Raises:
        OSError: the cgroup could not be made (check :func:`starvation_unavailable`).
    """

    def __init__(self, pids: list[int], quota_us: int) -> None:
        found = _hierarchy()
        if found is None:
            raise OSError(starvation_unavailable())
        self.version, mount = found
        self.path = mount / f"mha-starve-{unique_suffix()}"
        self._origin = {pid: self._current(pid) for pid in pids}
        if self.version == "v2":
            with contextlib.suppress(OSError):
                (mount / "cgroup.subtree_control").write_text("+cpu")
        self.path.mkdir()
        try:
            if self.version == "v2":
                (self.path / "cpu.max").write_text(f"{quota_us} {PERIOD_US}")
            else:
                (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
                (self.path / "cpu.cfs_quota_us").write_text(str(quota_us))
            self._busy = spawn([sys.executable, "-c", "while True: pass"])
            for pid in [self._busy.pid, *pids]:
                with contextlib.suppress(ProcessLookupError, OSError):
                    (self.path / "cgroup.procs").write_text(str(pid))
        except BaseException:
            self.end()
            raise

    def _current(self, pid: int) -> Path:
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return self.path.parent
        for line in lines:
            _, controllers, where = line.split(":", 2)
            names = controllers.split(",")
            if (self.version == "v2" and controllers == "") or (
                self.version == "v1" and "cpu" in names
            ):
                return self.path.parent / where.lstrip("/")
        return self.path.parent

    def end(self) -> None:
        """Return the pids to their cgroups, stop the busy loop, remove the cgroup."""
        busy = getattr(self, "_busy", None)
        if busy is not None:
            reap(busy, timeout=2)
        for pid, origin in self._origin.items():
            with contextlib.suppress(OSError):
                (origin / "cgroup.procs").write_text(str(pid))
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                # Dying tasks leave the cgroup asynchronously.
                time.sleep(0.02)
        logger.warning("could not remove cgroup %s", self.path)


def run_quiet(argv: list[str], timeout: float) -> tuple[int, str]:
    """Run ``argv``; return (exit status, last line of stderr or stdout). Never raises."""
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s"
    text = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
    return proc.returncode, text[-1] if text else ""
