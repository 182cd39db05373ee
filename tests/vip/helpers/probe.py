"""The client prober: connects to each target every 10 ms and prints who answered.

Usage: probe.py PORT TARGET [TARGET...]; runs until killed. Prints JSON
lines {"t", "target", "node"} for answers ("node": null for failures) and
{"t", "arp_request": target} for every ARP who-has this host sends. It never
touches the neighbour cache.
"""

import json
import socket
import struct
import sys
import threading
import time

port = int(sys.argv[1])
targets = sys.argv[2:]
out_lock = threading.Lock()


def emit(**fields: object) -> None:
    with out_lock:
        sys.stdout.write(json.dumps({"t": time.monotonic(), **fields}) + "\n")
        sys.stdout.flush()


def probe(target: str) -> None:
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    while True:
        start = time.monotonic()
        node = None
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(0.2)
                s.connect((target, port))
                data = s.recv(64).decode()
                node = data.split()[1] if data.startswith("220 ") else None
        except OSError:
            pass
        emit(target=target, node=node, start=start)
        time.sleep(max(0.0, 0.01 - (time.monotonic() - start)))


def arp_watch() -> None:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    sock.bind(("eth0", 0))
    mac = sock.getsockname()[4]
    while True:
        frame = sock.recv(128)
        op, sha, _, _, tpa = struct.unpack("!6xH6s4s6s4s", frame[14:42])
        if op == 1 and sha == mac:
            emit(arp_request=socket.inet_ntoa(tpa))


for target in targets:
    threading.Thread(target=probe, args=(target,), daemon=True).start()
threading.Thread(target=arp_watch, daemon=True).start()
threading.Event().wait()
