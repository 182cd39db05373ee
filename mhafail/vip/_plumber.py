"""Plumbing VIPs into the kernel: the ``Plumber`` protocol and its netlink adapter.

The only module (with ``fence``) that touches pyroute2, and only to list
interfaces at start-up: address changes go over a raw netlink socket
(``_rtnl``), in batches. Operations are idempotent and converging
(pyroute2's ``ensure`` style): an address that is already there counts as
added, one that is already gone counts as removed. A batch of adds is all
or nothing: if one address is refused, the ones it added are removed again
before the error is raised, so a failed takeover leaves nothing half-done.

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
(safety rule 7). The kernel counts lifetimes in whole seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import math
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from mhafail.errors import PlumbingError
from mhafail.vip._announce import (
    icmp6_socket,
    interface_mac,
    packet_socket,
    send_gratuitous_arp,
    send_unsolicited_na,
)
from mhafail.vip._rtnl import Request, Rtnl
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

    def ensure_present_many(
        self, vips: Sequence[Vip], valid_for: float | None = None
    ) -> frozenset[str]:
        """Make every one of ``vips`` present; return the addresses added now.

        All or nothing: when one address is refused (or an interface does
        not exist), the addresses this call added are removed again before
        :class:`PlumbingError` is raised.
        """
        ...

    def ensure_absent_many(self, vips: Sequence[Vip]) -> frozenset[str]:
        """Make every one of ``vips`` absent; return the addresses removed now.

        Tries every address; raises :class:`PlumbingError` afterwards,
        naming the ones that could not be removed.
        """
        ...

    def announce_many(
        self, vips: Sequence[Vip], still_valid: Callable[[], bool] = lambda: True
    ) -> None:
        """Announce ``vips`` in one burst; ``still_valid()`` is asked right before each address.

        Stops at the first False. Raises :class:`PlumbingError` after the
        burst, naming the addresses that could not be announced.
        """
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
    """A :class:`Plumber` over rtnetlink, for the current network namespace.

    Address changes go over a raw netlink socket in batches (``_rtnl``):
    the requests of a batch leave in one system call and their answers are
    collected afterwards. The interface listing at start-up uses pyroute2.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ipr: Any = None
        self._rtnl = _netlink_call("open a netlink socket", Rtnl)
        self._packet: dict[str, socket.socket] = {}
        self._icmp6: dict[str, socket.socket] = {}

    @_off_loop
    def close(self) -> None:
        """Close the netlink and packet sockets."""
        with self._lock:
            if self._ipr is not None:
                self._ipr.close()
            self._rtnl.close()
            for sock in [*self._packet.values(), *self._icmp6.values()]:
                sock.close()
            self._packet.clear()
            self._icmp6.clear()

    @contextlib.contextmanager
    def _netlink(self, what: str) -> Iterator[Any]:
        with self._lock:
            try:
                if self._ipr is None:
                    self._ipr = IPRoute()
                yield self._ipr
            except NetlinkError as exc:
                hint = _EPERM_HINT if getattr(exc, "code", None) == errno.EPERM else ""
                raise PlumbingError(f"{what}: {exc.args[-1] if exc.args else exc}{hint}") from exc
            except OSError as exc:
                hint = _EPERM_HINT if exc.errno == errno.EPERM else ""
                raise PlumbingError(f"{what}: {exc}{hint}") from exc

    def _indexes(self, names: Iterable[str], *, missing: bool) -> dict[str, int | None]:
        """Interface name -> index, resolved once per batch (one ioctl each, no link dump).

        Not cached across batches: an interface re-created under the same
        name gets a new index. A missing interface maps to None when
        ``missing`` allows it, else it is a :class:`PlumbingError`.
        """
        found: dict[str, int | None] = {}
        for name in names:
            if name in found:
                continue
            try:
                found[name] = socket.if_nametoindex(name)
            except (OSError, ValueError) as exc:
                if not missing:
                    raise PlumbingError(f"interface {name!r} does not exist") from exc
                found[name] = None
        return found

    def _run(self, requests: Sequence[Request], what: str) -> list[int]:
        return _netlink_call(what, self._rtnl.run, requests)

    def _requests(
        self, vips: Sequence[Vip], kind: str, index: dict[str, int | None], lifetime: int | None
    ) -> list[Request]:
        return [
            Request(
                vip=vip,
                index=index[vip.interface] or 0,
                kind=kind,
                label=_label(vip.interface) if vip.family == 4 else None,
                lifetime=lifetime,
            )
            for vip in vips
        ]

    def ensure_present_many(
        self, vips: Sequence[Vip], valid_for: float | None = None
    ) -> frozenset[str]:
        """Add ``vips`` as host addresses in one batch, all or nothing (see the module notes)."""
        vips = list(vips)
        if not vips:
            return frozenset()
        index = self._indexes([v.interface for v in vips], missing=False)  # before anything is sent
        lifetime = None if valid_for is None else kernel_lifetime(valid_for)
        what = f"add {_names(vips)}"
        try:
            codes = self._run(self._requests(vips, "add", index, lifetime), what)
        except PlumbingError:
            # The answers are lost: which adds took effect is unknown.
            self._undo(vips, index)
            raise
        added = [v for v, code in zip(vips, codes, strict=True) if code == 0]
        failed = [(v, c) for v, c in zip(vips, codes, strict=True) if c not in (0, errno.EEXIST)]
        existing = [v for v, code in zip(vips, codes, strict=True) if code == errno.EEXIST]
        if not failed and existing and lifetime is not None:
            # Already there (a leftover, or a duplicate): take over its lifetime too.
            try:
                codes = self._run(self._requests(existing, "replace", index, lifetime), what)
            except PlumbingError:
                self._undo(added, index)
                raise
            failed = [(v, c) for v, c in zip(existing, codes, strict=True) if c != 0]
        if failed:
            self._undo(added, index)
            raise PlumbingError(_failure("add", failed))
        return frozenset(v.key for v in added)

    def _undo(self, vips: Sequence[Vip], index: dict[str, int | None]) -> None:
        """Best-effort removal of what a failed batch may have added."""
        if vips:
            with contextlib.suppress(PlumbingError):
                self._run(self._requests(vips, "del", index, None), "undo")

    def ensure_absent_many(self, vips: Sequence[Vip]) -> frozenset[str]:
        """Remove ``vips`` in one batch; a missing address or interface is success."""
        index = self._indexes([v.interface for v in vips], missing=True)
        there = [v for v in vips if index[v.interface] is not None]
        if not there:
            return frozenset()
        codes = self._run(self._requests(there, "del", index, None), f"remove {_names(there)}")
        gone = (0, errno.EADDRNOTAVAIL, errno.ENOENT, errno.ENODEV)
        failed = [(v, c) for v, c in zip(there, codes, strict=True) if c not in gone]
        if failed:
            raise PlumbingError(_failure("remove", failed))
        return frozenset(v.key for v, code in zip(there, codes, strict=True) if code == 0)

    def renew_many(self, vips: Sequence[Vip], valid_for: float) -> None:
        """Set the kernel lifetime of ``vips`` in one batch (missing ones are re-added)."""
        index = self._indexes([v.interface for v in vips], missing=False)
        lifetime = kernel_lifetime(valid_for)
        codes = self._run(self._requests(vips, "replace", index, lifetime), "renew")
        failed = [(v, c) for v, c in zip(vips, codes, strict=True) if c != 0]
        if failed:
            raise PlumbingError(_failure("renew", failed))

    def ensure_present(self, vip: Vip, valid_for: float | None = None) -> bool:
        """Add ``vip`` as a host address on its interface (see the module notes)."""
        return vip.key in self.ensure_present_many([vip], valid_for)

    def renew(self, vip: Vip, valid_for: float) -> None:
        """Set the address's kernel lifetime (it is re-added if it vanished)."""
        self.renew_many([vip], valid_for)

    def ensure_absent(self, vip: Vip) -> bool:
        """Remove ``vip`` from its interface; a missing address or interface is success."""
        return vip.key in self.ensure_absent_many([vip])

    def announce(self, vip: Vip) -> None:
        """Send a gratuitous ARP (request and reply) or an unsolicited NA for ``vip``."""
        self.announce_many([vip])

    def announce_many(
        self, vips: Sequence[Vip], still_valid: Callable[[], bool] = lambda: True
    ) -> None:
        """Announce ``vips``: one socket per interface, reused; the lease asked before each."""
        failed: list[str] = []
        macs: dict[str, bytes] = {}
        with self._lock:
            for vip in vips:
                if not still_valid():
                    break
                try:
                    if vip.interface not in macs:
                        macs[vip.interface] = interface_mac(vip.interface)
                    self._send(vip, macs[vip.interface])
                except OSError as exc:
                    failed.append(f"{vip.key} on {vip.interface}: {exc}")
        if failed:
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise PlumbingError(f"announce {failed[0]}{more}")

    def _send(self, vip: Vip, mac: bytes) -> None:
        """Send one announcement (lock held); re-open a socket once if its interface changed."""
        for attempt in (1, 2):
            try:
                if vip.family == 4:
                    sock = self._packet.get(vip.interface)
                    if sock is None:
                        sock = self._packet[vip.interface] = packet_socket(vip.interface)
                    send_gratuitous_arp(sock, mac, vip.key)
                else:
                    index = socket.if_nametoindex(vip.interface)
                    sock = self._icmp6.get(vip.interface)
                    if sock is None:
                        sock = self._icmp6[vip.interface] = icmp6_socket(vip.interface, index)
                    send_unsolicited_na(sock, mac, index, vip.key)
                return
            except OSError:
                # The interface was re-created under us: bind a new socket once.
                stale = (self._packet if vip.family == 4 else self._icmp6).pop(vip.interface, None)
                if stale is not None:
                    stale.close()
                if attempt == 2:
                    raise

    def addresses(self, interface: str) -> frozenset[str]:
        """Every address on ``interface``."""
        index = self._indexes([interface], missing=False)[interface]
        dump = _netlink_call(f"list {interface}", self._rtnl.addresses, index)
        return frozenset(address for _, address in dump)

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


def _names(vips: Sequence[Vip]) -> str:
    """``198.18.0.200 on eth0`` for one VIP, a count for several (error messages)."""
    if len(vips) == 1:
        return f"{vips[0].key} on {vips[0].interface}"
    return f"{len(vips)} addresses"


def _failure(what: str, failed: Sequence[tuple[Vip, int]]) -> str:
    """An error message naming the first refused address, the reason, and how many more."""
    vip, code = failed[0]
    hint = _EPERM_HINT if code == errno.EPERM else ""
    more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
    preposition = "from" if what == "remove" else "on"
    return f"{what} {vip.key} {preposition} {vip.interface}: {os.strerror(code)}{hint}{more}"


T = TypeVar("T")


def _netlink_call(what: str, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn``; socket failures become :class:`PlumbingError` naming ``what``."""
    try:
        return fn(*args)
    except OSError as exc:
        hint = _EPERM_HINT if exc.errno == errno.EPERM else ""
        raise PlumbingError(f"{what}: {exc}{hint}") from exc


def _ours(msg: Any, interface: str) -> bool:
    """True for an address mhafail plumbed (its label, or the IPv6 shape it uses)."""
    if msg["family"] == socket.AF_INET:
        return bool(msg.get_attr("IFA_LABEL") == _label(interface))
    flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
    cache = msg.get_attr("IFA_CACHEINFO")
    deprecated = cache is not None and cache["ifa_preferred"] == 0
    return bool(msg["prefixlen"] == 128 and flags & IFA_F_NODAD and deprecated)
