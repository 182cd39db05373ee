"""The downstream relay of the demo and the tests: an aiosmtpd server that records what it gets.

Every message it accepts becomes one JSON line in ``--record`` (appended,
flushed before the ``250``)::

    {"t": 12.3, "peer": "198.18.0.210", "queue_id": "…", "node": "mta1",
     "attempt": "17.1", "repeat": false}

``peer`` is the source address the MTA sent from (a binding VIP it owns),
``queue_id`` and ``node`` come from the ``Received:`` header the MTA put
on top, ``attempt`` from the client's ``X-Attempt`` header. A message
whose queue id was already stored is a resend: after a node dies in the
middle of a delivery (after our ``250``, before its spool recorded it) the
survivor that imported its spool sends it again, as SMTP's at-least-once
rule wants (docs/spool.md). Like a mailbox that files a message id once,
the sink keeps the first copy and marks the resend ``"repeat": true``, so
the demo can show both numbers.

Run: ``python examples/sink.py --listen 127.0.0.1:2600 --record sink.jsonl``.
It prints ``{"event": "ready", ...}`` once it serves and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import time
from typing import IO, Any

from aiosmtpd.smtp import SMTP

RECEIVED = re.compile(rb"^Received: by (\S+) with ESMTP id ([0-9a-f]+)", re.MULTILINE)
ATTEMPT = re.compile(rb"^X-Attempt: (\S+)", re.MULTILINE)


class Recorder:
    """The aiosmtpd handler: one JSON line per accepted message."""

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.seen: set[str] = set()

    async def handle_DATA(self, server: SMTP, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or b""
        received = RECEIVED.search(data)
        attempt = ATTEMPT.search(data)
        queue_id = received.group(2).decode() if received else ""
        record = {
            "t": time.monotonic(),
            "peer": session.peer[0],
            "queue_id": queue_id,
            "node": received.group(1).decode() if received else "",
            "attempt": attempt.group(1).decode() if attempt else "",
            "repeat": queue_id in self.seen,
        }
        self.seen.add(queue_id)
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()
        return "250 2.0.0 Ok: stored"


async def serve(listen: str, record: str) -> None:
    """Serve until SIGTERM or SIGINT."""
    host, _, port = listen.rpartition(":")
    loop = asyncio.get_running_loop()
    with open(record, "a") as out:
        handler = Recorder(out)
        server = await loop.create_server(lambda: SMTP(handler, hostname="sink"), host, int(port))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(json.dumps({"event": "ready", "t": time.monotonic(), "listen": listen}), flush=True)
        await stop.wait()
        server.close()


def main() -> None:
    """Parse the flags and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:2600", help="host:port")
    parser.add_argument("--record", required=True, help="JSON lines file, appended")
    args = parser.parse_args()
    asyncio.run(serve(args.listen, args.record))


if __name__ == "__main__":
    main()
