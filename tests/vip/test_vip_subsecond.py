"""The sub-second budget as a supported configuration (root): tick 20 ms, session 0.35 s.

Real agents with their real fences in network namespaces, the monitor of
every node's address notifications and the ARP observer (``helpers/netlab.py``):
at keepalived-fast's master-down interval an owner that crashes or pauses is
replaced, and no two network-attached nodes ever hold a VIP.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from netlab import V4, Lab

pytestmark = [pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

TICK_MS = 20
SESSION = 0.35


def fast_lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(timeout=SESSION, tick_time=TICK_MS, extra=("--zk-tick", str(TICK_MS / 1000)))


def test_crashed_owner_is_replaced_at_the_fast_budget(lab_factory: Callable[..., Lab]) -> None:
    """A SIGKILLed owner's VIP moves within a second; its orphaned fence removes it in time."""
    lab = fast_lab(lab_factory)
    old = lab.owner(V4)
    lab.fence_pid(old)
    fault = time.monotonic()
    lab.agents[old].kill()
    new = lab.new_owner(V4, old, 5)
    took = lab.client_reaches(V4, new, fault) - fault
    print(f"client reached {new} {took * 1000:.0f} ms after the crash")
    time.sleep(4 * SESSION)
    lab.assert_one_owner()
    assert old not in lab.monitor.holders(V4)


def test_paused_owner_gives_up_before_a_survivor_claims(lab_factory: Callable[..., Lab]) -> None:
    """An owner paused for 2 s (its fence runs on) loses the VIP with no second owner, twice."""
    lab = fast_lab(lab_factory)
    for _ in range(2):
        old = lab.owner(V4)
        fault = time.monotonic()
        lab.agents[old].pause()
        try:
            new = lab.new_owner(V4, old, 5)
            lab.client_reaches(V4, new, fault)
            time.sleep(2.0 - (time.monotonic() - fault))
        finally:
            lab.agents[old].resume()
        time.sleep(4 * SESSION)  # the resumed agent rejoins; nothing stale may be announced
        lab.assert_one_owner()
