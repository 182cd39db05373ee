"""The HA MTA example: accepted messages per second, and the outage clients see per fault.

Side by side in one run, on loopback, with the same clients (``CLIENTS``
threads, one SMTP connection each, ``MESSAGES`` messages each):

* ``plain``: the same aiosmtpd handler shape writing each message to a
  maildir (write, fsync, rename, fsync of the directory): no HA;
* ``ha x1``: ``examples/ha_smtpd.py`` on one node, mail into the fenced,
  durable spool (group commit), ``250`` only after it is durable;
* ``ha x3``: three nodes, each owning one listener VIP, clients spread over
  the three VIPs.

Delivery is off in the throughput runs (no relay configured), so the
figures are acceptance only. Then the outage: one client streams to a
VIP, its owner is SIGKILLed or SIGSTOPped (past the 1.5 s session), and
the longest stretch between a failed try and the next 250 is reported.
As root the outage runs use network namespaces (real addresses, ARP).

Run: ``python benchmarks/bench_mta.py [--quick]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

from demo import MTA  # noqa: E402 - the examples are scripts
from mta_client import Stream, message_bytes, stream, tally  # noqa: E402

from mhafail.testing import SimulatedCluster, free_port  # noqa: E402

PORT = 2525
PLAIN = r"""
import asyncio, os, sys, json, time
from aiosmtpd.smtp import SMTP
root = sys.argv[2]
for sub in ("tmp", "new"):
    os.makedirs(os.path.join(root, sub), exist_ok=True)
class Maildir:
    n = 0
    def write(self, data):
        Maildir.n += 1
        name = f"{time.time_ns()}.{os.getpid()}.{Maildir.n}"
        tmp = os.path.join(root, "tmp", name)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.write(fd, data); os.fsync(fd); os.close(fd)
        os.rename(tmp, os.path.join(root, "new", name))
        dfd = os.open(os.path.join(root, "new"), os.O_RDONLY); os.fsync(dfd); os.close(dfd)
    async def handle_DATA(self, server, session, envelope):
        await asyncio.to_thread(self.write, envelope.original_content)
        return "250 2.0.0 Ok"
async def main():
    loop = asyncio.get_running_loop()
    h = Maildir()
    await loop.create_server(lambda: SMTP(h), "127.0.0.1", int(sys.argv[1]))
    print(json.dumps({"event": "ready"}), flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def blast(addresses: list[str], port: int, clients: int, messages: int) -> float:
    """Messages per second accepted by ``clients`` threads spread over ``addresses``."""
    import smtplib

    errors: list[str] = []

    def one(address: str, index: int) -> None:
        try:
            with smtplib.SMTP(address, port, timeout=30) as smtp:
                for n in range(messages):
                    smtp.sendmail(
                        "a@example.org", ["b@example.net"], message_bytes(f"{index}-{n}.1")
                    )
        except (smtplib.SMTPException, OSError) as exc:
            errors.append(str(exc))

    threads = [
        threading.Thread(target=one, args=(addresses[i % len(addresses)], i))
        for i in range(clients)
    ]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - began
    if errors:
        raise SystemExit(f"client errors: {errors[:3]}")
    return clients * messages / took


def plain(clients: int, messages: int) -> float:
    port = free_port()
    root = tempfile.mkdtemp(prefix="mha-bench-maildir-")
    proc = subprocess.Popen(
        [sys.executable, "-c", PLAIN, str(port), root], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return blast(["127.0.0.1"], port, clients, messages)
    finally:
        proc.kill()
        proc.wait()


def ha(nodes: int, clients: int, messages: int) -> float:
    with SimulatedCluster(
        command=MTA, nodes=nodes, namespaces=False, config_repos=["mta"]
    ) as cluster:
        vips = [cluster.address(201 + i) for i in range(nodes)]
        for node in cluster:
            node.wait_event(lambda e: e["event"] == "acquire", 20)
        time.sleep(1.0)  # let placement settle
        return blast(vips, PORT, clients, messages)


def outage(kind: str) -> float:
    with SimulatedCluster(command=MTA, nodes=3, config_repos=["mta"]) as cluster:
        vip = cluster.address(201)
        time.sleep(1.5)
        owner = next(
            n
            for n in cluster
            if [e for e in n.events if e.get("address") == vip][-1:]
            and [e for e in n.events if e.get("address") == vip][-1]["event"] == "acquire"
        )
        state = Stream()
        client = threading.Thread(
            target=cluster.in_client, args=(stream, vip, PORT, 10**6, state), daemon=True
        )
        client.start()
        while state.sent < 50:
            time.sleep(0.01)
        if kind == "SIGKILL":
            owner.kill()
        else:
            owner.pause()
        goal = state.sent + 50
        while state.sent < goal:
            time.sleep(0.01)
        state.stop.set()
        client.join(30)
        if kind != "SIGKILL":
            owner.resume()
        return tally(state.attempts, []).longest_failure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    clients, messages = (8, 50) if args.quick else (16, 200)
    print(f"bench_mta: {clients} clients x {messages} messages, loopback")
    base = plain(clients, messages)
    print(f"  plain aiosmtpd + maildir (fsync)   {base:8.0f} msg/s")
    for nodes in (1, 3):
        rate = ha(nodes, clients, messages)
        share = f"{rate / base:.0%} of plain"
        print(f"  ha_smtpd x{nodes} (fenced spool)        {rate:8.0f} msg/s ({share})")
    for kind in ("SIGKILL", "SIGSTOP"):
        print(f"  client outage, owner {kind:7s}     {outage(kind):8.2f} s (session 1.5 s)")


if __name__ == "__main__":
    main()
