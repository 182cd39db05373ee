"""Plumbing VIPs into the kernel: the ``Plumber`` protocol and its netlink adapter.

The only module (with ``_announce`` and ``fence``) that touches pyroute2.
Operations are idempotent and converging (pyroute2's ``ensure`` style): an
address that is already there counts as added, one that is already gone
counts as removed.

Addresses are always plumbed as host addresses (/32, /128) whatever the
VIP's declared prefix, so no subnet route appears and the connected
route's preferred source (the host's own address) stays the default source.
IPv6 VIPs are added without duplicate address detection (usable at once)
and deprecated (preferred lifetime 0), so source address selection never
picks them for outgoing traffic (RFC 6724 rule 3) while they still accept
connections and explicit binds.

Addresses can carry a lifetime (``valid_for``): the kernel deletes an
address on its own when its valid lifetime runs out, which is the last
line of defence when the agent and its fence are frozen together
(DESIGN.md rule 7). The kernel counts lifetimes in whole seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import math
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from mhafail.errors import PlumbingError
from mhafail.vip._announce import packet_socket, send_gratuitous_arp, send_unsolicited_na
from mhafail.vip._spec import Vip

LABEL_SUFFIX = ":mha"


class Plumber(Protocol):
    """Puts VIPs on interfaces and announces them. Implementations are thread-safe."""

    def ensure_present(self, vip: Vip, valid_for: float | None = None) -> bool:
        """Make ``vip`` present on its interface; True if it was added now.

        With ``valid_for`` (seconds) the address disappears on its own after
        that long unless :meth:`renew` extends it.
        """
        ...

    def renew(self, vip: Vip, valid_for: float) -> None:
        """Set the remaining lifetime of a present ``vip`` to ``valid_for`` seconds."""
        ...

    def ensure_absent(self, vip: Vip) -> bool:
        """Make ``vip`` absent from its interface; True if it was removed now."""
        ...

    def announce(self, vip: Vip) -> None:
        """Tell the LAN that this host now has ``vip`` (GARP or unsolicited NA)."""
        ...

    def addresses(self, interface: str) -> frozenset[str]:
        """Every address on ``interface`` (compressed, without prefix)."""
        ...

    def interfaces(self) -> dict[str, list[str]]:
        """The host's interfaces with their addresses as ``addr/prefix``.

        Addresses that carry mhafail's own mark (left over by an agent that
        died) are not the host's: they are left out.
        """
        ...


def kernel_lifetime(valid_for: float) -> int:
    """Whole seconds of kernel lifetime for ``valid_for`` seconds of lease.

    Rounded *down* so that the kernel drops the address no later than the
    lease ends; at least 1 s, the kernel's smallest finite lifetime (so for
    leases shorter than a second the kernel backstop can trail the lease).
    """
    return max(1, math.floor(valid_for))


def _label(interface: str) -> str:
    # IPv4 labels must start with the interface name and fit in 15 characters.
    return (interface + LABEL_SUFFIX)[:15]


F = TypeVar("F", bound=Callable[..., Any])


_EPERM_HINT = (
    " (changing addresses and sending ARP need root, or CAP_NET_ADMIN and CAP_NET_RAW; "
    "tests without root use mhafail.testing.FakePlumber)"
)


def _off_loop(method: F) -> F:
    """Run ``method`` on a helper thread when the caller's thread runs an asyncio loop.

    pyroute2 drives each call on the calling thread's running event loop
    if there is one, and fails there ("This event loop is already
    running"): an asyncio MTA (aiosmtpd) that builds or stops its VIP
    manager inside ``asyncio.run`` would crash. The call still blocks the
    caller, as it would without a loop.
    """

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return method(*args, **kwargs)
        outcome: dict[str, Any] = {}

        def call() -> None:
            try:
                outcome["value"] = method(*args, **kwargs)
            except BaseException as exc:  # handed back to the caller's thread
                outcome["error"] = exc

        helper = threading.Thread(target=call, name="mhafail-netlink")
        helper.start()
        helper.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    return wrapper  # type: ignore[return-value]


class NetlinkPlumber:
    """A :class:`Plumber` over rtnetlink (pyroute2), for the current network namespace."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ipr: Any = _off_loop(IPRoute)()
        self._packet: dict[str, socket.socket] = {}

    @_off_loop
    def close(self) -> None:
        """Close the netlink and packet sockets."""
        with self._lock:
            self._ipr.close()
            for sock in self._packet.values():
                sock.close()
            self._packet.clear()

    @contextlib.contextmanager
    def _netlink(self, what: str) -> Iterator[Any]:
        with self._lock:
            try:
                yield self._ipr
            except NetlinkError as exc:
                hint = _EPERM_HINT if getattr(exc, "code", None) == errno.EPERM else ""
                raise PlumbingError(f"{what}: {exc.args[-1] if exc.args else exc}{hint}") from exc
            except OSError as exc:
                hint = _EPERM_HINT if exc.errno == errno.EPERM else ""
                raise PlumbingError(f"{what}: {exc}{hint}") from exc

    def _index(self, _ipr: Any, interface: str) -> int:
        # One ioctl in this process's namespace (the netlink socket's too);
        # pyroute2's link_lookup dumps every link for each call, and the
        # fence renews every managed address with it several times a second.
        try:
            return socket.if_nametoindex(interface)
        except (OSError, ValueError):
            raise PlumbingError(f"interface {interface!r} does not exist") from None

    def _kwargs(self, ipr: Any, vip: Vip, valid_for: float | None) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "index": self._index(ipr, vip.interface),
            "address": vip.key,
            "prefixlen": vip.address.max_prefixlen,
        }
        lifetime = None if valid_for is None else kernel_lifetime(valid_for)
        if vip.family == 4:
            kwargs["label"] = _label(vip.interface)
            if lifetime is not None:
                kwargs["valid_lft"] = lifetime
                kwargs["preferred_lft"] = lifetime
        else:
            kwargs["flags"] = IFA_F_NODAD
            kwargs["preferred_lft"] = 0
            if lifetime is not None:
                kwargs["valid_lft"] = lifetime
        return kwargs

    @_off_loop
    def ensure_present(self, vip: Vip, valid_for: float | None = None) -> bool:
        """Add ``vip`` as a host address on its interface (see the module notes)."""
        with self._netlink(f"add {vip.key} on {vip.interface}") as ipr:
            kwargs = self._kwargs(ipr, vip, valid_for)
            try:
                ipr.addr("add", **kwargs)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    if valid_for is not None:
                        ipr.addr("replace", **kwargs)  # take over its lifetime too
                    return False
                raise
            return True

    @_off_loop
    def renew(self, vip: Vip, valid_for: float) -> None:
        """Set the address's kernel lifetime (it is re-added if it vanished)."""
        with self._netlink(f"renew {vip.key} on {vip.interface}") as ipr:
            ipr.addr("replace", **self._kwargs(ipr, vip, valid_for))

    @_off_loop
    def ensure_absent(self, vip: Vip) -> bool:
        """Remove ``vip`` from its interface; a missing address or interface is success."""
        with self._netlink(f"remove {vip.key} from {vip.interface}") as ipr:
            try:
                index = socket.if_nametoindex(vip.interface)
            except (OSError, ValueError):
                return False  # the interface is gone, and the address with it
            try:
                ipr.addr(
                    "del",
                    index=index,
                    address=vip.key,
                    prefixlen=vip.address.max_prefixlen,
                )
            except NetlinkError as exc:
                if exc.code in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV):
                    return False
                raise
            return True

    @_off_loop
    def announce(self, vip: Vip) -> None:
        """Send a gratuitous ARP (request and reply) or an unsolicited NA for ``vip``."""
        try:
            if vip.family == 4:
                self._arp(vip)
            else:
                with self._netlink(f"index of {vip.interface}") as ipr:
                    index = self._index(ipr, vip.interface)
                send_unsolicited_na(vip.interface, index, vip.key)
        except OSError as exc:
            raise PlumbingError(f"announce {vip.key} on {vip.interface}: {exc}") from exc

    def _arp(self, vip: Vip) -> None:
        with self._lock:
            sock = self._packet.get(vip.interface)
            if sock is None:
                sock = self._packet[vip.interface] = packet_socket(vip.interface)
            try:
                send_gratuitous_arp(sock, vip.interface, vip.key)
            except OSError:
                # The interface was re-created under us: bind a new socket once.
                sock.close()
                sock = self._packet[vip.interface] = packet_socket(vip.interface)
                send_gratuitous_arp(sock, vip.interface, vip.key)

    @_off_loop
    def addresses(self, interface: str) -> frozenset[str]:
        """Every address on ``interface``."""
        with self._netlink(f"list {interface}") as ipr:
            index = self._index(ipr, interface)
            return frozenset(str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=index))

    @_off_loop
    def interfaces(self) -> dict[str, list[str]]:
        """Every interface with its addresses as ``addr/prefix``."""
        with self._netlink("list interfaces") as ipr:
            names = {
                int(link["index"]): str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()
            }
            result: dict[str, list[str]] = {name: [] for name in names.values()}
            for a in ipr.get_addr():
                name = names.get(int(a["index"]))
                if name is not None and not _ours(a, name):
                    result[name].append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
            return result


def _ours(msg: Any, interface: str) -> bool:
    """True for an address mhafail plumbed (its label, or the IPv6 shape it uses)."""
    if msg["family"] == socket.AF_INET:
        return bool(msg.get_attr("IFA_LABEL") == _label(interface))
    flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
    cache = msg.get_attr("IFA_CACHEINFO")
    deprecated = cache is not None and cache["ifa_preferred"] == 0
    return bool(msg["prefixlen"] == 128 and flags & IFA_F_NODAD and deprecated)
