"""remove_stale_namespaces() removes leftovers but never another run's namespaces in use."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from mhafail.testing import NetnsLab, remove_stale_namespaces

pytestmark = pytest.mark.root


def test_a_live_runs_lab_is_kept_and_a_leftover_is_removed(
    netns_lab_factory: Callable[..., NetnsLab],
) -> None:
    """A lab whose maker is alive survives the clean-up; an abandoned namespace does not."""
    lab = netns_lab_factory(hosts=1)
    leftover = "mha-stale-test-leftover"
    subprocess.run(["ip", "netns", "add", leftover], check=True)
    try:
        # Only names this test made: other runs on the machine are none of its business.
        removed = remove_stale_namespaces(prefix=leftover)
        removed += remove_stale_namespaces(prefix=f"mha-{lab.id}-")
    finally:
        subprocess.run(["ip", "netns", "del", leftover], check=False, capture_output=True)
    assert leftover in removed
    assert lab.lan not in removed
    assert lab["h1"].netns not in removed
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    assert lab.lan in listed
