"""Network-namespace test hosts (root only)."""

import subprocess
from collections.abc import Callable

import pytest

from mhafail.testing import NetnsLab

pytestmark = pytest.mark.root


def namespaces() -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "list"], check=False, capture_output=True, text=True
    ).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_hosts_reach_each_other_and_everything_is_removed() -> None:
    """Hosts on the lab bridge ping each other over IPv4 and IPv6; close() removes all."""
    lab = NetnsLab(hosts=2, client=True)
    with lab:
        names = {h.netns for h in lab.members.values()} | {lab.lan}
        assert names <= namespaces()
        assert all(n.startswith("mha-") for n in names)
        h1, h2 = lab["h1"], lab["h2"]
        assert f"{h1.ipv4}/24" in h1.addresses()
        h1.run(["ping", "-c", "1", "-W", "2", h2.ipv4])
        h1.run(["ping", "-6", "-c", "1", "-W", "2", h2.ipv6])
        lab["c1"].run(["ping", "-c", "1", "-W", "2", h1.ipv4])
        h2.link_down()
        assert h1.run(["ping", "-c", "1", "-W", "1", h2.ipv4], check=False).returncode != 0
        h2.link_up()
        sleeper = h1.spawn(["sleep", "60"])
    assert sleeper.poll() is not None
    assert not names & namespaces()


def test_lab_is_removed_even_when_the_test_body_fails(
    netns_lab_factory: Callable[..., NetnsLab],
) -> None:
    """A failing body inside the context manager still removes the namespaces."""
    lab = NetnsLab(hosts=1)
    with pytest.raises(RuntimeError), lab:
        raise RuntimeError("boom")
    assert lab.lan not in namespaces()
    made = netns_lab_factory(hosts=1)
    assert made.lan in namespaces()
