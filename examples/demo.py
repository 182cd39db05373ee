"""The mhafail demo: a highly available SMTP relay survives a crash without losing mail.

Run it with ``bash scripts/bootstrap demo`` (or ``python examples/demo.py``
once mhafail is installed with its ``smtp`` extra). It starts everything
itself and stops everything when it ends:

1. a ZooKeeper server, and a cluster created by an operator with
   credentials (``mhafail init``); a shared secret for the logs and audit ports;
2. three MTA nodes (``examples/ha_smtpd.py``), each carrying one listener
   VIP and one binding VIP; as root each runs in its own network namespace
   with real addresses, otherwise on loopback with the fake plumber;
3. a cluster manager (``examples/manager.py``: log aggregation, as_logger,
   CIDR server) and a downstream relay (``examples/sink.py``);
4. the configuration (relay, banner, throttles) published through the
   replicated config repository ``mta``;
5. a client streams 500 messages through smtplib to a listener VIP; the
   relay stalls, so mail piles up in the spools, and the VIP's owner is
   SIGKILLed mid-stream. The VIP moves, a survivor takes the dead node's
   spool over, and the demo prints what arrived where;
6. the dead node rejoins, a config change is applied cluster-wide, and a
   throttled client gets 421 from every node.

``examples/vip_demo.py`` is the shorter DuraVIP-only demo.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

from ha_smtpd import check_settings
from mta_client import Stream, Tally, greeting, stream, tally, wait_delivered

from mhafail.config import ConfigRepository, syntax_check
from mhafail.console import Console, Users
from mhafail.errors import MhafailError, ValidationFailed
from mhafail.testing import EventProcess, SimNode, SimulatedCluster

HERE = Path(__file__).resolve().parent
PORT, SINK_PORT, MESSAGES = 2525, 2600, 500
START = time.monotonic()
MTA = [
    "{python}", str(HERE / "ha_smtpd.py"), "--zk", "{zk}", "--cluster", "{cluster}",
    "--zk-auth", "{node_auth}", "--secret-file", "{secret_file}",
    "--node", "{node}", "--address", "{address}", "--port", str(PORT),
    "--root", "{shared}", "--config-dir", "{dir}/config", "--manager", "mgr1",
    "--plumber", "{plumber}", "--session-timeout", "1.5", "--grace", "0.5",
    "--rebalance", "immediate",
]  # fmt: skip
for i in (1, 2, 3):  # every node declares every VIP: any of them may carry it
    MTA += ["--vip", f"{{net}}.21{i}/{{prefix}}@{{interface}},binding=out{i}"]
    MTA += ["--vip", f"{{net}}.20{i}/{{prefix}}@{{interface}},follow=out{i}"]


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.2f}s] {text}", flush=True)


def settings(sink: str, *, banner: str, throttle: str = "") -> dict[str, bytes | None]:
    toml = f'relay = "{sink}"\nretry = 1.0\nbanner = "{banner}"\n'
    return {"global/mta.toml": (toml + (f"[throttle]\n{throttle}\n" if throttle else "")).encode()}


def main() -> int:
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(f"usage: demo.py [--loopback]\n{__doc__}")
        return 0
    loopback = "--loopback" in sys.argv[1:]  # as root too: no namespaces
    with SimulatedCluster(
        command=MTA, nodes=3, config_repos=["mta"], namespaces=False if loopback else None
    ) as cluster:
        where = "network namespaces, real addresses" if cluster.lab else "loopback, fake plumber"
        say(f"ZooKeeper {cluster.zk}; cluster {cluster.cluster} created by the operator")
        say(f"three MTA nodes up ({where}): n1, n2, n3")
        sink_record = cluster.workdir / "sink.jsonl"
        sink_addr = f"{cluster.service_address}:{SINK_PORT}"
        sink = cluster.service(
            [
                "{python}",
                str(HERE / "sink.py"),
                "--listen",
                sink_addr,
                "--record",
                str(sink_record),
            ],
            name="sink",
        )
        manager = cluster.service(
            ["{python}", str(HERE / "manager.py"), "--zk", "{zk}", "--cluster", "{cluster}",
             "--zk-auth", "{operator_auth}", "--secret-file", "{secret_file}",
             "--address", "{service_address}", "--base", "{dir}", "--log-interval", "1"],
            name="manager",
        )  # fmt: skip
        say(f"relay (sink) on {sink_addr}; manager up, CIDR server {manager.events[0]['cidr']}")

        operator = cluster.coordinator()
        # The cluster console (docs/console.md): log in as the operator.
        console = Console(
            coordinator=operator, users=Users.from_credentials(cluster.operator),
            name="demo-console", port=0, sample_period=2.0,
        ).start()  # fmt: skip
        say(
            f"console: {console.url} (user {cluster.operator.user}, "
            f"password in {cluster.files['operator_auth']})"
        )
        repo = ConfigRepository(
            name="mta", base=cluster["n1"].directory / "config", node="n1",
            coordinator=operator, validators=(syntax_check, check_settings),
        )  # fmt: skip
        try:
            try:
                repo.commit(settings("nowhere", banner="x"), message="bad", author="Ops <o@x>")
            except ValidationFailed as exc:
                say(f"a bad config is refused before it is published: {exc}")
            v1 = repo.commit(
                settings(sink_addr, banner="mhafail demo ESMTP"),
                message="relay to the sink", author="Ops <ops@example.org>", rebase=True,
            )  # fmt: skip
            for node in cluster:
                node.wait_event(lambda e: e.get("sha") == v1.sha, 20)
            say(f"config {v1.sha[:8]} (relay {sink_addr}) applied on every node")
            result = failover(cluster, sink, sink_record)
            throttled = config_and_throttle(cluster, repo, sink_addr)
            if sys.stdin.isatty():
                input(f"console still at {console.url}; press Enter to end the demo ")
        finally:
            console.stop()
            operator.stop()
        collected = sum(1 for _ in (cluster.workdir / "manager" / "logs").rglob("mainlog/*/*"))
        say(f"the manager collected {collected} mainlog files (one per node and day)")
    ok = not result.lost and not result.duplicated and result.accepted == MESSAGES and throttled
    say("demo done: " + ("every accepted message delivered exactly once" if ok else "FAILED"))
    return 0 if ok else 1


def failover(cluster: SimulatedCluster, sink: EventProcess, sink_record: Path) -> Tally:
    """Stream 500 messages; stall the relay; SIGKILL the VIP's owner; tally what arrived."""
    vip = cluster.address(201)
    victim = owner_of(cluster, vip)
    say(f"client {cluster.client_address} streams {MESSAGES} messages to {vip}:{PORT}")
    say(f"{vip} is owned by {victim.node}")
    state = Stream()
    client = threading.Thread(
        target=cluster.in_client, args=(stream, vip, PORT, MESSAGES, state), daemon=True
    )
    client.start()
    wait_until(lambda: state.sent >= 150, 60)
    sink.pause()
    say("the relay stalls (SIGSTOP): mail piles up in the spools")
    wait_until(lambda: state.sent >= 300, 60)
    spool = cluster.workdir / "shared" / "nodes" / victim.node / "spool" / "msg"
    queued = sum(1 for p in spool.iterdir() if "." not in p.name)
    victim.kill()
    killed = time.monotonic()
    say(f"SIGKILL {victim.node} after {state.sent} messages, with {queued} in its spool")
    time.sleep(1.0)
    sink.resume()
    say("the relay is back (SIGCONT)")
    survivors = [n for n in cluster if n is not victim]
    new_owner = wait_event_any(
        survivors, lambda e: e.get("event") == "acquire" and e["address"] == vip and e["t"] > killed
    )
    importer = wait_event_any(
        survivors,
        lambda e: (
            e.get("event") == "takeover" and e["kind"] == "complete" and e["node"] == victim.node
        ),
    )
    say(f"{vip} moved to {new_owner[0].node} {new_owner[1]['t'] - killed:.2f} s after the kill")
    moved, after = importer[1]["moved"], importer[1]["t"] - killed
    say(
        f"{importer[0].node} took over {victim.node}'s spool ({moved} messages) {after:.2f} s later"
    )
    client.join(120)
    records = wait_delivered(sink_record, state.attempts, 60)
    result = tally(state.attempts, records)
    say("summary:")
    for line in result.lines():
        print("    " + line, flush=True)
    victim.start()
    say(f"{victim.node} restarted: it rejoins and takes a VIP pair back (rebalance immediate)")
    victim.wait_event(lambda e: e.get("event") == "acquire", 30)
    return result


def config_and_throttle(cluster: SimulatedCluster, repo: ConfigRepository, sink_addr: str) -> bool:
    """Publish config v2 (banner, throttle), show it live everywhere; True if 421 everywhere."""
    throttled = cluster.address(66)
    if cluster.lab is not None:
        cluster.lab["c1"].run(["ip", "addr", "add", f"{throttled}/24", "dev", "eth0"])
    v2 = repo.commit(
        settings(sink_addr, banner="demo ESMTP, config v2", throttle=f'"{throttled}/32" = 3'),
        message="new banner; throttle a noisy client", author="Ops <ops@example.org>", rebase=True,
    )  # fmt: skip
    for node in cluster:
        node.wait_event(lambda e: e.get("sha") == v2.sha, 20)
    say(f"config {v2.sha[:8]} applied on every node; each listener VIP now greets:")
    listeners = [cluster.address(201 + i) for i in range(3)]
    for address in listeners:
        say(f"    {address}: {cluster.in_client(greeting, address, PORT)}")
    say(f"the noisy client {throttled} (limit 3 connections, counted cluster-wide):")
    for _ in range(3):
        cluster.in_client(lambda: greeting(listeners[0], PORT, source=throttled))
    time.sleep(1.0)  # counts reach every node within 0.5 s
    throttled_everywhere = True
    for address in listeners:
        answer = cluster.in_client(lambda a=address: greeting(a, PORT, source=throttled))
        throttled_everywhere &= answer.startswith("421")
        say(f"    {address}: {answer}")
    return throttled_everywhere


def owner_of(cluster: SimulatedCluster, address: str) -> SimNode:
    """The node whose latest acquire/release event for ``address`` is an acquire."""
    for node in cluster:
        mine = [e for e in node.events if e.get("address") == address]
        if mine and mine[-1]["event"] == "acquire":
            return node
    raise SystemExit(f"demo: nobody owns {address}")


def wait_until(predicate, timeout):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise SystemExit("demo: timed out")
        time.sleep(0.02)


def wait_event_any(nodes, predicate, timeout=30.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for node in nodes:
            for event in list(node.events):
                if predicate(event):
                    return node, event
        time.sleep(0.02)
    for node in nodes:
        print(node.node, node.events[-8:], file=sys.stderr)
    raise SystemExit("demo: an expected event never came")


if __name__ == "__main__":
    os.environ.pop("MHAFAIL_ZK_OPEN", None)
    try:
        sys.exit(main())
    except MhafailError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        sys.exit(1)
