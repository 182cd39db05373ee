"""Helper run by the jlog tests as a separate process (``python jlog_proc.py MODE ...``).

Modes:
  write PATH WRITER COUNT [BATCH]  append COUNT payloads ``WRITER:i:<pad>``;
                                   BATCH>1 uses write_many
  loop PATH WRITER                 append until killed; prints "started" after
                                   the first batch
  read PATH SUBSCRIBER TOTAL       read and checkpoint until TOTAL messages
                                   arrived; print them as JSON
"""

from __future__ import annotations

import json
import sys
import time

from mhafail.jlog import Jlog


def payload(writer: str, i: int) -> bytes:
    """A self-checking payload: its padding length and byte depend on (writer, i)."""
    pad = bytes([65 + i % 26]) * (i % 97 + 20)
    return b"%s:%d:%s" % (writer.encode(), i, pad)


def check(data: bytes) -> tuple[str, int]:
    """Return (writer, i) of a payload, or raise if it is not exactly what payload() wrote."""
    writer, i, _ = data.split(b":", 2)
    if payload(writer.decode(), int(i)) != data:
        raise ValueError(f"damaged payload {data[:40]!r}")
    return writer.decode(), int(i)


def main(argv: list[str]) -> int:
    mode, path = argv[0], argv[1]
    jlog = Jlog.open(path)
    if mode == "write":
        writer_id, count = argv[2], int(argv[3])
        batch = int(argv[4]) if len(argv) > 4 else 1
        with jlog.writer() as w:
            for start in range(0, count, batch):
                items = [payload(writer_id, i) for i in range(start, min(count, start + batch))]
                if batch == 1:
                    w.write(items[0])
                else:
                    w.write_many(items)
        return 0
    if mode == "loop":
        writer_id = argv[2]
        w = jlog.writer()
        i = 0
        while True:
            w.write_many([payload(writer_id, k) for k in range(i, i + 50)])
            if i == 0:
                print("started", flush=True)
            i += 50
    if mode == "read":
        subscriber, total = argv[2], int(argv[3])
        seen: list[list[object]] = []
        deadline = time.monotonic() + 60
        with jlog.reader(subscriber) as r:
            while len(seen) < total and time.monotonic() < deadline:
                batch = r.read_batch(500)
                if not batch:
                    time.sleep(0.005)
                    continue
                for m in batch:
                    writer, i = check(m.payload)
                    seen.append([writer, i])
                r.checkpoint(batch[-1].id)
        json.dump(seen, sys.stdout)
        return 0
    raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
