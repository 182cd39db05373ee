"""VipServers: one asyncio server per VIP this node owns, following DuraVIP's events.

An asyncio MTA (aiosmtpd) wants to answer on a listener VIP exactly while
this node owns it. :class:`VipServers` listens to a :class:`VipManager`'s
acquire and release events on the application's event loop: on acquire it
binds the VIP's port with ``IP_FREEBIND`` (:func:`listen_socket`) and
serves it with ``loop.create_server(protocol, sock=...)``; on release it
closes that listener at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import attrs

from mhafail.coordination import in_loop
from mhafail.errors import InvalidArgument
from mhafail.vip._manager import VipManager
from mhafail.vip._sockets import listen_socket
from mhafail.vip._spec import Vip, VipKind

logger = logging.getLogger(__name__)


def _port(_instance: object, _attribute: object, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise InvalidArgument(f"port {value!r}: must be an integer in 1..65535")


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidArgument(f"{attribute.name} {value!r}: must be a positive number")


@attrs.define(kw_only=True, eq=False)
class VipServers:
    """Serves ``protocol`` on ``port`` of every VIP of ``kinds`` this node owns.

    Wiring (on the event loop's thread, before or after ``manager.start()``)::

        servers = VipServers(manager=manager, port=25, protocol=make_smtp,
                             loop=asyncio.get_running_loop()).start()
        ...
        servers.close()  # on shutdown, after or before manager.stop()

    Args:
        manager: the node's VIP manager (started or not).
        port: the TCP port to serve on each VIP.
        protocol: the protocol factory ``loop.create_server`` calls per
            connection (for aiosmtpd: ``lambda: SMTP(handler, ...)``).
        loop: the event loop to serve on; events reach it through
            ``in_loop`` (never on the manager's thread).
        kinds: which VIPs to serve (default: listener VIPs only).
        bind_timeout: how long to retry binding while the port is still
            taken (the previous owner on the same host, on loopback).
        backlog: the listen backlog.

    Guarantees: a VIP's listener is open only between its acquire and its
    release event (both run in order on ``loop``); a release closes the
    listener at once (connections in progress finish on their own). A VIP
    already owned at :meth:`start` is served too.

    Failure behaviour: a VIP whose port stays taken for ``bind_timeout`` is
    logged and not served until its next acquire; nothing is raised into
    the manager.

    Raises:
        InvalidArgument: ``port``, ``bind_timeout`` or ``backlog`` is invalid.
    """

    manager: VipManager
    port: int = attrs.field(validator=_port)
    protocol: Callable[[], asyncio.BaseProtocol]
    loop: asyncio.AbstractEventLoop
    kinds: frozenset[VipKind] = frozenset({VipKind.LISTENER})
    bind_timeout: float = attrs.field(default=5.0, validator=_positive)
    backlog: int = attrs.field(default=128, validator=_positive)

    _tasks: dict[str, asyncio.Task[None]] = attrs.field(init=False, factory=dict)
    _servers: dict[str, asyncio.Server] = attrs.field(init=False, factory=dict)
    _started: bool = attrs.field(init=False, default=False)
    _closed: bool = attrs.field(init=False, default=False)

    def start(self) -> VipServers:
        """Follow the manager's events; serve the VIPs it owns already. Call on ``loop``."""
        if self._started:
            return self
        self._started = True
        # Register first, then look: a VIP acquired in between is seen twice
        # (served once), one released in between is closed by its event.
        self.manager.on_acquire(in_loop(self.loop, self._on_acquire))
        self.manager.on_release(in_loop(self.loop, self._on_release))
        for vip in sorted(self.manager.owned(), key=lambda v: v.key):
            self._on_acquire(vip)
        return self

    def serving(self) -> frozenset[str]:
        """The VIP addresses with an open listener now."""
        return frozenset(self._servers)

    def close(self) -> None:
        """Close every listener and stop following events. Call on ``loop``."""
        self._closed = True
        for key in list(self._tasks):
            self._stop(key)

    def _on_acquire(self, vip: Vip) -> None:
        if self._closed or vip.kind not in self.kinds or vip.key in self._tasks:
            return
        self._tasks[vip.key] = self.loop.create_task(self._serve(vip.key))

    def _on_release(self, vip: Vip) -> None:
        self._stop(vip.key)

    def _stop(self, key: str) -> None:
        task = self._tasks.pop(key, None)
        server = self._servers.pop(key, None)
        if server is not None:
            server.close()  # stops listening now, not when the task unwinds
        if task is not None:
            task.cancel()

    async def _serve(self, key: str) -> None:
        end = time.monotonic() + self.bind_timeout
        while True:
            try:
                sock = listen_socket(key, self.port, backlog=int(self.backlog))
                break
            except OSError as exc:
                if time.monotonic() >= end:
                    logger.error("cannot listen on %s port %d: %s", key, self.port, exc)
                    self._tasks.pop(key, None)
                    return
                await asyncio.sleep(0.05)
        try:
            server = await self.loop.create_server(self.protocol, sock=sock)
        except BaseException:
            sock.close()
            raise
        self._servers[key] = server
        logger.info("serving %s port %d", key, self.port)
        try:
            await server.serve_forever()
        finally:
            server.close()
            if self._servers.get(key) is server:
                del self._servers[key]
