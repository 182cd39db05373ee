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
  node's spool is taken over by a survivor; a fenced node answers ``421``.

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

from mhafail.audit import AuditSeries, ClusterAudit
from mhafail.channel import read_secret_file
from mhafail.config import ConfigAgent, ConfigRepository, ConfigView, GitDaemon, syntax_check
from mhafail.coordination import Coordinator, Credentials, Membership, NodeInfo, in_loop
from mhafail.errors import MhafailError, SpoolError, SpoolFenced, UnknownMessage
from mhafail.jlog import JlogHandler
from mhafail.logs import JlogService
from mhafail.spool import Envelope, LockState, NodePaths, Spool, SpoolLock, Takeover
from mhafail.testing import FakeNetwork, FakePlumber
from mhafail.vip import (
    FenceProcess,
    NetlinkPlumber,
    RebalancePolicy,
    Vip,
    VipKind,
    VipManager,
    listen_socket,
    parse_vip,
)

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
    """One node: the mhafail components wired together, and the SMTP and delivery code."""

    def __init__(self, args: argparse.Namespace, loop: asyncio.AbstractEventLoop) -> None:
        self.args, self.loop, self.node = args, loop, args.node
        self.settings = parse_settings(None)
        self.servers: dict[str, asyncio.Task[None]] = {}
        self.stopping, self.relocking = threading.Event(), threading.Lock()
        secret = read_secret_file(args.secret_file)
        self.coordinator = Coordinator(
            hosts=args.zk, cluster=args.cluster, session_timeout=args.session_timeout,
            credentials=Credentials.from_file(args.zk_auth),
        ).start()  # fmt: skip
        # Per-node data on shared storage (docs/spool.md): the spool and the jlogs.
        self.paths = NodePaths(args.root, args.cluster, args.node)
        self.binding = self.paths.bind()
        logs = {"mainlog": self.paths.logs / "mainlog", "rejectlog": self.paths.logs / "rejectlog"}
        self.service = JlogService(
            node=self.node, logs=logs, managers=args.manager, host=args.address, secret=secret
        ).start()
        for logger, name in ((mainlog, "mainlog"), (rejectlog, "rejectlog")):
            logger.addHandler(JlogHandler(logs[name], format="json"))
            logger.setLevel(logging.INFO)
        self.conn = AuditSeries("conn", window_seconds=60, windows=5, export_increments=True)
        self.audit = ClusterAudit(
            node=self.node, series=[self.conn], listen=f"{args.address}:0", secret=secret
        ).start()
        validators = (syntax_check, check_settings)
        self.repo = ConfigRepository(
            name="mta", base=args.config_dir, node=self.node, coordinator=self.coordinator,
            validators=validators,
        ).init()  # fmt: skip
        self.git = GitDaemon(base=args.config_dir, host=args.address).start()
        endpoints = {"git": self.git.endpoint, "jlog": self.service.endpoint}
        info = NodeInfo(
            name=self.node, addresses=[args.address], roles=("mta",),
            endpoints=endpoints | self.audit.endpoints(),
        )  # fmt: skip
        self.membership = Membership(coordinator=self.coordinator, info=info).start()
        self.audit.follow(self.membership)  # share counts with every node and manager
        self.agent = ConfigAgent(
            repository=self.repo, membership=self.membership, validators=validators
        )
        self.agent.add_reload_hook(self.reload)
        if (live := self.repo.view()) is not None:
            self.reload(live)  # the version we ran before a restart: hooks hear only new ones
        self.agent.start()
        self.lock = SpoolLock(coordinator=self.coordinator, paths=self.paths)
        self.lock.add_listener(self.on_lock)
        self.lock.acquire(timeout=60)  # waits while a survivor imports our old spool
        self.spool = Spool(directory=self.paths.spool, node=self.node, fence=self.lock).open()
        self.takeover = Takeover(
            coordinator=self.coordinator, membership=self.membership, paths=self.paths,
            spool=self.spool, lock=self.lock, grace=args.grace, step=0.5,
        )  # fmt: skip
        self.takeover.add_listener(
            lambda e: emit("takeover", kind=e.kind.value, node=e.node, moved=e.moved)
        )
        self.takeover.start()
        self.vips = self.vip_manager([parse_vip(v) for v in args.vip])
        threading.Thread(target=self.deliver_forever, daemon=True).start()

    def vip_manager(self, vips: list[Vip]) -> VipManager:
        """DuraVIP with the kernel (and a fence), or with the fake plumber on loopback."""
        if self.args.plumber == "netlink":
            plumber: Any = NetlinkPlumber()
            fence = FenceProcess(self.coordinator.lease_deadline)  # removes VIPs if we freeze
        else:
            interfaces = {v.interface: [str(v.network)] for v in vips}
            record = FakeNetwork(path=self.args.plumber.removeprefix("fake:"))
            plumber, fence = FakePlumber(record, self.node, interfaces), None
        manager = VipManager(
            coordinator=self.coordinator, membership=self.membership, plumber=plumber,
            vips=vips, fence=fence, validate_host=fence is not None,
            rebalance=RebalancePolicy.parse(self.args.rebalance),
        )  # fmt: skip
        manager.on_acquire(in_loop(self.loop, self.on_acquire))
        manager.on_release(in_loop(self.loop, self.on_release))
        return manager.start()

    # --- events (config on the agent's thread, lock on the lease thread, VIPs on the loop) ---

    def reload(self, view: ConfigView) -> None:
        self.settings = parse_settings(view.read("mta.toml"))
        mainlog.info("config %s applied", view.sha)
        emit("config", sha=view.sha, banner=self.settings["banner"])

    def on_lock(self, state: LockState) -> None:
        emit("lock", state=state.value)
        if state is LockState.FENCED:  # stop everything, take the spool back when we can
            threading.Thread(target=self.reacquire, daemon=True).start()

    def reacquire(self) -> None:
        if not self.relocking.acquire(blocking=False):
            return  # another thread is at it
        try:
            while not self.stopping.is_set() and self.lock.state is LockState.FENCED:
                try:
                    self.lock.acquire(timeout=30)  # waits while a survivor imports our spool
                except MhafailError as exc:
                    mainlog.warning("spool lock not taken back yet: %s", exc)
                    self.stopping.wait(1.0)
        finally:
            self.relocking.release()

    def on_acquire(self, vip: Vip) -> None:
        emit("acquire", address=vip.key)
        if vip.kind is VipKind.LISTENER and vip.key not in self.servers:
            self.servers[vip.key] = self.loop.create_task(self.serve(vip.key))

    def on_release(self, vip: Vip) -> None:
        emit("release", address=vip.key)
        task = self.servers.pop(vip.key, None)
        if task is not None:
            task.cancel()  # serve_forever closes the listener when cancelled

    async def serve(self, address: str) -> None:
        for _ in range(100):  # on loopback the previous owner may still hold the port
            try:
                sock = listen_socket(address, self.args.port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        else:
            mainlog.error("cannot listen on %s:%d", address, self.args.port)
            return

        def protocol() -> Smtp:
            return Smtp(self, hostname=self.node, ident=self.settings["banner"], loop=self.loop)

        server = await self.loop.create_server(protocol, sock=sock)
        await server.serve_forever()

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

    def deliver(self, due: list[Any], settings: dict[str, Any]) -> None:
        bindings = sorted(v.key for v in self.vips.owned() if v.kind is VipKind.BINDING)
        source = bindings[0] if bindings else self.args.address
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
                    received = f"Received: by {self.node} with ESMTP id {message.id}\r\n"
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
        self.vips.stop()
        for task in self.servers.values():
            task.cancel()
        self.takeover.stop()
        self.lock.release()
        self.spool.close()
        self.agent.stop()
        self.audit.stop(flush_timeout=0.5)
        self.membership.stop()
        self.service.stop()
        self.git.stop()
        self.coordinator.stop()


async def run(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    mta = Mta(args, loop)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    emit("ready", node=mta.node, token=mta.lock.token, messages=len(mta.spool))
    await stop.wait()
    mta.stop()
    emit("stopped", node=mta.node)


def main() -> None:
    p = argparse.ArgumentParser(description="A highly available SMTP relay (mhafail example)")
    p.add_argument("--zk", required=True, help="ZooKeeper host:port[,...]")
    p.add_argument("--cluster", required=True)
    p.add_argument("--zk-auth", required=True, help="node credentials (mhafail zk credentials)")
    p.add_argument("--secret-file", required=True, help="cluster secret for logs and audit")
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--address", required=True, help="this node's own address (not a VIP)")
    p.add_argument("--vip", action="append", default=[], help="ADDR/PREFIX@IFACE[,...]")
    p.add_argument("--port", type=int, default=25, help="SMTP port on the listener VIPs")
    p.add_argument("--root", required=True, help="shared storage root (spools, jlogs)")
    p.add_argument("--config-dir", required=True, help="this node's config directory")
    p.add_argument("--manager", action="append", default=[], help="log manager names")
    p.add_argument("--plumber", default="netlink", help="netlink, or fake:PATH on loopback")
    p.add_argument("--rebalance", default="after:30", help="immediate, never or after:SECONDS")
    p.add_argument("--session-timeout", type=float, default=3.0)
    p.add_argument("--grace", type=float, default=1.0, help="seconds before a takeover")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
