"""A spool node for the tests: coordinator, membership, spool lock, spool, takeover.

Run as ``python spool_node.py --zk ... --cluster ... --node ... --root ...``.
Prints one JSON event per line (``ready``, ``lock``, ``takeover``, ``acked``,
``refused``, ``delivered``, ``fenced``, ``filed``) with ``t`` from ``time.monotonic()``.
Commands on stdin: ``put N`` (N messages from 16 threads), ``produce`` (a
message every few milliseconds until fenced), ``deliver`` (deliver what is
due to the sink at ``--sink``: one line ``<id> <node>`` per message),
``file`` (a checkpoint: every message in the commit log gets its file).
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from mhafail.coordination import Coordinator, Membership, NodeInfo
from mhafail.errors import MhafailError, SpoolFenced, UnknownMessage
from mhafail.spool import Envelope, NodePaths, Spool, SpoolLock, Takeover

_out = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """Print one JSON event."""
    with _out:
        sys.stdout.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
        sys.stdout.flush()


class Node:
    """The wiring an MTA would do, plus test commands."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.coordinator = Coordinator(
            hosts=args.zk,
            cluster=args.cluster,
            session_timeout=args.session_timeout,
            open_acl=True,
            server_tick=0.1,
        ).start()
        self.membership = Membership(coordinator=self.coordinator, info=NodeInfo(name=args.node))
        self.paths = NodePaths(args.root, args.cluster, args.node)
        self.binding = self.paths.bind()
        self.lock = SpoolLock(coordinator=self.coordinator, paths=self.paths)
        self.lock.add_listener(lambda state: emit("lock", state=state.value))
        self.accepting = threading.Event()
        self.lock.add_listener(self._on_lock)
        self.lock.acquire(timeout=60)
        self.spool = Spool(directory=self.paths.spool, node=args.node, fence=self.lock).open()
        self.membership.start()
        self.takeover = Takeover(
            coordinator=self.coordinator,
            membership=self.membership,
            paths=self.paths,
            spool=self.spool,
            lock=self.lock,
            grace=args.grace,
            step=args.step,
            batch=args.batch,
            refresh=0.5,
        )
        self.takeover.add_listener(
            lambda e: emit(
                "takeover",
                kind=e.kind.value,
                node=e.node,
                token=e.token,
                moved=e.moved,
                detail=e.detail,
            )
        )
        self.takeover.start()
        self.accepting.set()
        self.delivering = args.deliver

    def _on_lock(self, state: Any) -> None:
        if state.value != "held":
            self.accepting.clear()  # an MTA answers 421 from here on

    def put(self, count: int) -> None:
        env = Envelope(sender="s@example.org", recipients=("r@example.net",))

        def one(i: int) -> str | None:
            try:
                return self.spool.put(env, f"message {i} from {self.args.node}\r\n".encode())
            except MhafailError as exc:
                emit("refused", error=type(exc).__name__)
                return None

        with ThreadPoolExecutor(16) as pool:
            ids = [i for i in pool.map(one, range(count)) if i]
        emit("put", count=len(ids), ids=ids)

    def produce(self) -> None:
        env = Envelope(sender="s@example.org", recipients=("r@example.net",))
        n = 0
        while True:
            n += 1
            started = time.monotonic()  # a freeze may fall between the put and its event
            try:
                mid = self.spool.put(env, f"produced {n}\r\n".encode())
            except MhafailError as exc:
                emit("refused", error=type(exc).__name__)
                time.sleep(0.05)
                continue
            emit("acked", id=mid, started=started)
            time.sleep(0.005)

    def deliver_loop(self) -> None:
        sink: socket.socket | None = None
        while True:
            if not self.delivering:
                time.sleep(0.05)
                continue
            due = self.spool.due(limit=200)
            if not due:
                time.sleep(0.05)
                continue
            for message in due:
                try:
                    self.spool.claim(message.id)  # immediately before the next hop
                except SpoolFenced:
                    emit("fenced", id=message.id)
                    time.sleep(0.05)
                    continue
                except UnknownMessage:
                    continue
                if sink is None:
                    host, port = self.args.sink.rsplit(":", 1)
                    sink = socket.create_connection((host, int(port)))
                    reader = sink.makefile("rb")
                sink.sendall(f"{message.id} {self.args.node}\n".encode())
                reader.readline()
                try:
                    self.spool.done(message.id)
                except MhafailError as exc:
                    emit("done_failed", id=message.id, error=type(exc).__name__)
                emit("delivered", id=message.id)

    def commands(self) -> None:
        for line in sys.stdin:
            words = line.split()
            if not words:
                continue
            if words[0] == "put":
                self.put(int(words[1]))
            elif words[0] == "produce":
                threading.Thread(target=self.produce, daemon=True).start()
            elif words[0] == "deliver":
                self.delivering = True
            elif words[0] == "file":
                emit("filed", segments=self.spool.checkpoint())


def main() -> None:
    """Run a node until killed."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--zk", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--sink", default="")
    parser.add_argument("--session-timeout", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=0.3)
    parser.add_argument("--step", type=float, default=0.3)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--deliver", action="store_true")
    args = parser.parse_args()
    node = Node(args)
    threading.Thread(target=node.deliver_loop, daemon=True).start()
    emit("ready", node=args.node, token=node.lock.token, messages=len(node.spool))
    node.commands()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    main()
