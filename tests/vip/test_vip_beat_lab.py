"""Beats with real agents, fences and netlink in namespaces: a silent owner is fenced by a
survivor within its budget while its session lives, and there is one owner throughout."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from netlab import V4, Lab, cut_from_zookeeper

pytestmark = [pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]

SESSION = 2.0  # the lab server's largest (tick 100 ms)
BUDGET = "0.6"


def silenced_by(lab: Lab, old: str) -> list[str]:
    """The survivors whose agents fenced a silent owner (the ``silenced`` step)."""
    return [
        name
        for name in lab.names
        if name != old
        and any(
            e.get("event") == "step" and e.get("step") == "silenced"
            for e in lab.agents[name].events
        )
    ]


def test_a_paused_owner_is_fenced_within_its_budget(lab_factory: Callable[..., Lab]) -> None:
    """Owner and fence SIGSTOPped: the kernel lifetime (from the beat lease) removes the VIP,
    a survivor fences the owner and answers; resumed, the owner has no VIP and one owner stays."""
    lab = lab_factory(timeout=SESSION, extra=("--beat", BUDGET))
    old = lab.owner(V4)
    fault = time.monotonic()
    lab.agents[old].pause()
    try:
        new = lab.new_owner(V4, old, 10)
        answered = lab.client_reaches(V4, new, fault)
    finally:
        lab.agents[old].resume()
    print(f"paused {old}: {new} answered {answered - fault:.3f} s after the pause")
    time.sleep(2 * SESSION)
    lab.assert_one_owner()
    assert silenced_by(lab, old), "the takeover came from the session expiry, not the beats"


def test_a_partitioned_owner_is_fenced_within_its_budget(lab_factory: Callable[..., Lab]) -> None:
    """Owner cut from ZooKeeper (clients still reach it): its fence removes the VIP at the beat
    deadline, a survivor fences it and answers; healed, one owner stays."""
    lab = lab_factory(timeout=SESSION, extra=("--beat", BUDGET))
    old = lab.owner(V4)
    fault = time.monotonic()
    heal = cut_from_zookeeper(lab, old)
    try:
        new = lab.new_owner(V4, old, 10)
        answered = lab.client_reaches(V4, new, fault)
    finally:
        heal()
    print(f"cut {old}: {new} answered {answered - fault:.3f} s after the cut")
    time.sleep(2 * SESSION)
    lab.assert_one_owner()
    assert silenced_by(lab, old), "the takeover came from the session expiry, not the beats"
