"""NetlinkPlumber for embedders: usable inside asyncio, and a clear error without privileges."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.root

PROGRAM_EPERM = """
from mhafail.errors import PlumbingError
from mhafail.vip import NetlinkPlumber, parse_vip
try:
    NetlinkPlumber().ensure_present(parse_vip("127.0.0.200/8@lo"))
except PlumbingError as exc:
    print(exc)
"""

PROGRAM_ASYNCIO = """
import asyncio
from mhafail.vip import NetlinkPlumber, parse_vip
async def main():
    plumber = NetlinkPlumber()  # pyroute2 alone fails here: the loop is running
    vip = parse_vip("127.0.0.200/8@lo")
    print(plumber.ensure_present(vip), "127.0.0.200" in plumber.addresses("lo"))
    plumber.ensure_absent(vip)
    plumber.close()
asyncio.run(main())
"""


@pytest.fixture
def netns() -> Iterator[str]:
    """A throwaway network namespace."""
    name = "mha-plumber-hints"
    subprocess.run(["ip", "netns", "add", name], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_plumber_without_privileges_says_what_it_needs(netns: str) -> None:
    """Without CAP_NET_ADMIN the error names root/CAP_NET_ADMIN and the fake plumber."""
    unprivileged = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    argv = ["ip", "netns", "exec", netns, *unprivileged, sys.executable, "-c", PROGRAM_EPERM]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    assert "Operation not permitted" in out
    assert "CAP_NET_ADMIN" in out
    assert "FakePlumber" in out


def test_the_plumber_works_from_a_thread_running_an_asyncio_loop(netns: str) -> None:
    """Created and called inside asyncio.run, the plumber adds and lists an address."""
    argv = ["ip", "netns", "exec", netns, sys.executable, "-c", PROGRAM_ASYNCIO]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.split() == ["True", "True"]
