"""DuraVIP with real agents, real addresses and a real client, in network namespaces (root).

The lab (three agents, a client, a ZooKeeper on the bridge, an address
monitor) lives in ``helpers/netlab.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from netlab import TIMEOUT, V4, V6, Lab

pytestmark = [pytest.mark.root, pytest.mark.zookeeper, pytest.mark.slow]


def test_crash_fails_over_through_the_announcement_alone(lab: Lab) -> None:
    """SIGKILL plus link down: a survivor takes both VIPs; the client follows its GARP/NA."""
    old = lab.owner(V4)
    assert lab.owner(V6) in lab.names
    lab.client_reaches(V4, old, 0)
    fault = time.monotonic()
    lab.agents[old].kill()
    lab.lab[old].link_down()
    new = lab.new_owner(V4, old)
    first = lab.client_reaches(V4, new, fault)
    lab.client_reaches(V6, lab.new_owner(V6, old), fault)
    # The client learnt the new MAC from the gratuitous ARP: it never asked.
    assert (
        lab.client.arp_requests(V4, fault) == [] or min(lab.client.arp_requests(V4, fault)) > first
    )
    lab.assert_one_owner()


def test_paused_owner_is_fenced_before_its_session_expires(lab: Lab) -> None:
    """An agent paused past the session timeout is fenced before anyone else adds its VIPs."""
    old = lab.owner(V4)
    fault = time.monotonic()
    lab.agents[old].pause()
    try:
        new = lab.new_owner(V4, old)
        time.sleep(TIMEOUT)
    finally:
        lab.agents[old].resume()
    lab.client_reaches(V4, new, fault)
    time.sleep(2 * TIMEOUT)  # the resumed agent must not take anything back wrongly
    lab.assert_one_owner()
    assert len(lab.monitor.holders(V4)) == 1


def test_owner_cut_off_from_zookeeper_but_not_from_clients(lab: Lab) -> None:
    """An owner that loses ZooKeeper (clients still reach it) gives the VIP up in time."""
    old = lab.owner(V4)
    host = lab.lab[old]
    fault = time.monotonic()
    host.run(["ip", "route", "add", "blackhole", "198.18.0.1/32"])
    try:
        new = lab.new_owner(V4, old)
        lab.client_reaches(V4, new, fault)
    finally:
        host.run(["ip", "route", "del", "blackhole", "198.18.0.1/32"])
    time.sleep(2 * TIMEOUT)
    lab.assert_one_owner()


def test_planned_move_and_rejoin_keep_one_owner(lab: Lab) -> None:
    """`mhafail vip move` hands over without overlap; a restarted node rejoins cleanly."""
    old = lab.owner(V4)
    target = next(n for n in lab.names if n != old)
    start = time.monotonic()
    subprocess.run(
        ["ip", "netns", "exec", lab.lab.lan, sys.executable, "-m", "mhafail", "vip", "move",
         "--zk", lab.zk.address, "--cluster", "lab", V4, target, "--wait", "10"],
        check=True, capture_output=True,
    )  # fmt: skip
    assert lab.owner(V4) == target
    lab.client_reaches(V4, target, start)
    lab.agents[old].terminate()
    lab.agents[old].start()
    time.sleep(2 * TIMEOUT)
    lab.assert_one_owner()
    status = subprocess.run(
        ["ip", "netns", "exec", lab.lab.lan, sys.executable, "-m", "mhafail", "vip", "show",
         "--zk", lab.zk.address, "--cluster", "lab", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = {r["address"]: r for r in json.loads(status)["vips"]}
    assert rows[V4]["owner"] == target and rows[V4]["state"] == "owned"
    assert set(rows[V6]["declared_by"]) == set(lab.names)
