"""Helper run by the jlog tests as a separate process (``python jlog_proc.py MODE ...``).

Modes:
  write PATH WRITER COUNT [BATCH]  append COUNT payloads ``WRITER:i:<pad>``;
                                   BATCH>1 uses write_many
  loop PATH WRITER                 append until killed; prints "started" after
                                   the first batch
  read PATH SUBSCRIBER TOTAL       read and checkpoint until TOTAL messages
                                   arrived; print them as JSON
  spin PATH WRITER                 write() one record at a time until killed;
                                   prints "started" after the first 100
  hold PATH sleep|busy             write() one record, print "written", then
                                   sleep or keep the GIL busy for 30 s
  fork PATH COUNT                  write() once, fork; parent ("parent") and
                                   child ("child") each write() COUNT records
                                   at once; the child checks it holds no lock
  fork-spin PATH WRITER            write() once, fork a child that sleeps (and
                                   prints its pid), then spin like ``spin``
"""

from __future__ import annotations

import json
import os
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


def _spin(jlog: Jlog, writer_id: str, *, fork: bool) -> int:
    w = jlog.writer()
    if fork:
        w.write(payload(writer_id, -1))
        child = os.fork()
        if child == 0:
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
    i = 0
    while True:
        w.write(payload(writer_id, i))
        i += 1
        if i == 100:
            print("started", flush=True)


def _hold(jlog: Jlog, *, busy: bool) -> int:
    w = jlog.writer()
    w.write(b"held")
    print("written", flush=True)
    end = time.monotonic() + 30
    if busy:
        while time.monotonic() < end:  # pure Python: the releaser must win the GIL
            pass
    time.sleep(max(0.0, end - time.monotonic()))
    return 0


def _fork(jlog: Jlog, count: int) -> int:
    with jlog.writer() as w:
        w.write(b"before fork")
        child = os.fork()
        if child == 0:
            code = 1
            try:
                if w._held:  # what this mode checks
                    raise SystemExit("the child believes it holds the parent's lock")
                for i in range(count):
                    w.write(payload("child", i))
                w.close()
                code = 0
            finally:
                os._exit(code)
        for i in range(count):
            w.write(payload("parent", i))
        _, status = os.waitpid(child, 0)
        return os.waitstatus_to_exitcode(status)


def _burst_modes(mode: str, jlog: Jlog, argv: list[str]) -> int | None:
    """The modes of the write() burst tests (None: not one of them)."""
    if mode in ("spin", "fork-spin"):
        return _spin(jlog, argv[2], fork=mode == "fork-spin")
    if mode == "hold":
        return _hold(jlog, busy=argv[2] == "busy")
    if mode == "fork":
        return _fork(jlog, int(argv[2]))
    return None


def main(argv: list[str]) -> int:
    mode, path = argv[0], argv[1]
    jlog = Jlog.open(path)
    code = _burst_modes(mode, jlog, argv)
    if code is not None:
        return code
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
