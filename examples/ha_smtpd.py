"""A highly available SMTP relay in one file: aiosmtpd on mhafail's public API.

What each piece of mhafail does here (docs/tutorial.md builds it step by step):

* **DuraVIP** elects one owner per VIP. The node serves SMTP on each
  listener VIP it acquires (bound with ``IP_FREEBIND``) and stops on release;
  it delivers from a binding VIP it owns (the source address of each
  delivery), or from its own address while it owns none.
* **Config replication**: ``mta.toml`` (relay, retry, banner, per-CIDR
  throttles) comes from the replicated repository ``mta``; every new version
  is checked by :func:`check_settings` on every node and applied live; a
  refused version never goes live.
* **jlogs**: the mainlog and rejectlog are jlogs, served to the log managers.
* **Audit series**: every connection counts in a cluster-wide series; a
  client network over its limit gets ``421`` on every node.
* **Spool**: accepted mail is fenced and durable before the ``250``; a dead
  node's spool is taken over by a survivor; a fenced node answers ``421``
  until it has taken its spool back (automatically).

:class:`mhafail.node.NodeServices` starts and stops all of it from the
command line's :class:`~mhafail.node.NodeSettings`; :class:`mhafail.vip.VipServers`
serves SMTP on each listener VIP this node owns.

Run it with a ZooKeeper cluster created by ``mhafail init`` (see the demo,
``python examples/demo.py``). It prints one JSON event per line on stdout
(``ready``, ``acquire``, ``release``, ``config``, ``lock``, ``takeover``,
``stopped``) and stops within seconds of SIGTERM, handing its VIPs over.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import signal
import smtplib
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from mhafail.audit import AuditSeries
from mhafail.config import ConfigView, syntax_check
from mhafail.errors import MhafailError, SpoolError, SpoolFenced, UnknownMessage
from mhafail.node import NodeServices, NodeSettings
from mhafail.spool import Envelope, LockState, Message
from mhafail.vip import VipKind, VipServers

mainlog, rejectlog = logging.getLogger("mta.main"), logging.getLogger("mta.reject")
DEFAULTS: dict[str, Any] = {"banner": "mhafail ESMTP", "relay": "", "retry": 5.0, "throttle": {}}


def emit(event: str, **fields: Any) -> None:
    """One JSON event per line on stdout (the demo and the tests read them)."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


def parse_settings(data: bytes | None) -> dict[str, Any]:
    """``mta.toml`` -> settings. Raises ValueError (or TypeError) naming a bad value."""
    settings = DEFAULTS | tomllib.loads((data or b"").decode())
    if settings["relay"]:
        host, _, port = str(settings["relay"]).rpartition(":")
        if not host or not 0 < int(port) < 65536:
            raise ValueError(f"relay {settings['relay']!r} is not host:port")
    settings["retry"] = float(settings["retry"])
    throttle = settings["throttle"].items()
    settings["throttle"] = {ipaddress.ip_network(c): int(n) for c, n in throttle}
    return settings


def check_settings(tree: Path, _changed: frozenset[str]) -> list[str]:
    """Config validator (mhafail.config): every ``mta.toml`` must give valid settings."""
    problems = []
    for path in sorted(tree.rglob("mta.toml")):
        try:
            parse_settings(path.read_bytes())
        except (ValueError, TypeError, AttributeError) as exc:
            problems.append(f"{path.relative_to(tree)}: {exc}")
    return problems


class Smtp(SMTP):
    """aiosmtpd's server, with a throttle check before the greeting."""

    async def _handle_client(self) -> None:
        # aiosmtpd has no connect hook; the greeting is where a throttled
        # client must hear 421 (RFC 5321 3.8) and nothing else.
        if not self.event_handler.admit(self.session.peer[0]):
            await self.push("421 4.7.0 Too many connections from your network, try later")
            self.transport.close()
            return
        await super()._handle_client()


class Mta:
    """One node: mhafail's node services, and the SMTP and delivery code."""

    def __init__(self, settings: NodeSettings, port: int, loop: asyncio.AbstractEventLoop) -> None:
        self.settings, self.stopping = parse_settings(None), threading.Event()
        self.conn = AuditSeries("conn", window_seconds=60, windows=5, export_increments=True)
        self.node = NodeServices(
            settings=settings, roles=("mta",), config_repo="mta", series=[self.conn],
            validators=(syntax_check, check_settings),
            logs={"mainlog": mainlog, "rejectlog": rejectlog},
        )  # fmt: skip
        self.node.on_config(self.reload)
        self.node.on_vip_acquire(lambda vip: emit("acquire", address=vip.key))
        self.node.on_vip_release(lambda vip: emit("release", address=vip.key))
        self.node.on_lock(lambda state: emit("lock", state=state.value))  # FENCED: 421, relock
        self.node.on_takeover(
            lambda e: emit("takeover", kind=e.kind.value, node=e.node, moved=e.moved)
        )
        self.node.start()
        self.spool, self.lock, self.vips = self.node.spool, self.node.lock, self.node.vips

        def protocol() -> Smtp:
            return Smtp(self, hostname=settings.node, ident=self.settings["banner"], loop=loop)

        # One SMTP server per listener VIP we own, bound with IP_FREEBIND.
        self.servers = VipServers(manager=self.vips, port=port, protocol=protocol, loop=loop)
        self.servers.start()
        threading.Thread(target=self.deliver_forever, daemon=True).start()

    def reload(self, view: ConfigView) -> None:
        self.settings = parse_settings(view.read("mta.toml"))  # readers take it once per use
        mainlog.info("config %s applied", view.sha)
        emit("config", sha=view.sha, banner=self.settings["banner"])

    # --- SMTP -----------------------------------------------------------------------

    def admit(self, peer: str) -> bool:
        """Count the connection; False if its network is over a limit, cluster-wide."""
        ip = ipaddress.ip_address(peer)
        if ip.version != 4:
            return True
        self.conn.add(peer)
        for network, limit in self.settings["throttle"].items():
            if ip in network and self.conn.count(str(network)) > limit:
                rejectlog.info("421 throttled %s (%s over %d)", peer, network, limit)
                return False
        return True

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        if self.lock.state is not LockState.HELD:
            return SpoolFenced.smtp_reply
        try:
            envelope_ = Envelope(sender=envelope.mail_from, recipients=envelope.rcpt_tos)
            queue_id = await self.spool.aput(envelope_, envelope.original_content)
        except SpoolError as exc:
            rejectlog.warning("%s from %s: %s", exc.smtp_reply, session.peer[0], exc)
            return exc.smtp_reply
        mainlog.info("%s <= %s from %s", queue_id, envelope.mail_from, session.peer[0])
        return f"250 2.0.0 Ok: queued as {queue_id}"  # only now: the message is durable

    # --- delivery (a thread: smtplib blocks) -----------------------------------------

    def deliver_forever(self) -> None:
        while not self.stopping.wait(0.05):
            due = self.spool.due(limit=100) if self.lock.state is LockState.HELD else []
            if due and self.settings["relay"]:
                try:
                    self.deliver(due, self.settings)
                except MhafailError as exc:  # fenced or taken over: the importer delivers
                    mainlog.warning("delivery stopped: %s", exc)

    def deliver(self, due: list[Message], settings: dict[str, Any]) -> None:
        bindings = sorted(v.key for v in self.vips.owned() if v.kind is VipKind.BINDING)
        source = bindings[0] if bindings else self.node.settings.address
        host, _, port = settings["relay"].rpartition(":")
        try:
            relay = smtplib.SMTP(host, int(port), source_address=(source, 0), timeout=10)
        except OSError as exc:
            mainlog.warning("relay %s unreachable from %s: %s", settings["relay"], source, exc)
            return
        with relay:
            for message in due:
                try:
                    self.spool.claim(message.id)  # immediately before the next hop
                    data = self.spool.read(message.id)
                    received = f"Received: by {self.node.name} with ESMTP id {message.id}\r\n"
                    relay.sendmail(message.sender, message.pending, received.encode() + data)
                except UnknownMessage:
                    continue  # taken over by a survivor meanwhile
                except (smtplib.SMTPException, OSError) as exc:
                    self.spool.defer(message.id, time.time() + settings["retry"], str(exc))
                    return
                self.spool.done(message.id)
                mainlog.info("%s => %s from %s", message.id, settings["relay"], source)

    def stop(self) -> None:
        """Hand the VIPs over, then leave; each step is bounded (done within 5 s)."""
        self.stopping.set()
        self.node.stop()  # DuraVIP first: a survivor claims our VIPs at once
        self.servers.close()


async def run(settings: NodeSettings, port: int) -> None:
    loop = asyncio.get_running_loop()
    mta = Mta(settings, port, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit("ready", node=settings.node, token=mta.lock.token, messages=len(mta.spool))
    await stop.wait()
    mta.stop()
    emit("stopped", node=settings.node)


def main() -> None:
    p = argparse.ArgumentParser(description="A highly available SMTP relay (mhafail example)")
    NodeSettings.add_arguments(p)  # --zk, --cluster, --node, --address, --vip, --root, ...
    p.add_argument("--port", type=int, default=25, help="SMTP port on the listener VIPs")
    p.set_defaults(session_timeout=3.0, grace=1.0)
    args = p.parse_args()
    asyncio.run(run(NodeSettings.from_args(args), args.port))


if __name__ == "__main__":
    main()
