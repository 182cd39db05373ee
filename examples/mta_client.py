"""SMTP clients and the exactly-once tally shared by the demo, the tests and the benchmark.

* :func:`stream` sends numbered messages through one VIP with smtplib, one
  at a time, retrying each until it gets a ``250`` (reconnecting after any
  failure), and records every attempt;
* :func:`greeting` reads a server's ``220`` (or ``421``) line;
* :func:`tally` joins the attempts with the sink's record
  (``examples/sink.py``) into the numbers the demo prints and the tests
  assert: accepted, delivered, lost, duplicated, and how long the client
  saw failures.

Each attempt carries ``X-Attempt: <message>.<try>``; the sink records it,
so a delivered message is matched to the attempt the client was told
``250`` for.
"""

from __future__ import annotations

import collections
import json
import smtplib
import socket
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs


@attrs.define
class Attempt:
    """One try at sending one message."""

    message: int
    attempt: int
    ok: bool
    t: float  # time.monotonic() when the try began
    reply: str = ""
    tag: str = ""  # tells concurrent clients apart

    @property
    def key(self) -> str:
        """The ``X-Attempt`` value."""
        return f"{self.tag}{self.message}.{self.attempt}"


@attrs.define(eq=False)
class Stream:
    """The state of a running :func:`stream` (read it from another thread)."""

    tag: str = ""  # prefix of this client's attempt ids
    attempts: list[Attempt] = attrs.field(factory=list)
    sent: int = 0  # messages acknowledged so far
    stop: threading.Event = attrs.field(factory=threading.Event)


def message_bytes(key: str) -> bytes:
    """The message of attempt ``key`` (``<tag><message>.<try>``)."""
    return (
        f"From: client@example.org\r\nTo: user@example.net\r\nSubject: message {key}\r\n"
        f"Message-ID: <{key}@client.example.org>\r\nX-Attempt: {key}\r\n\r\n"
        f"Message {key}.\r\n"
    ).encode()


def stream(
    vip: str,
    port: int,
    count: int,
    state: Stream | None = None,
    *,
    source: str | None = None,
    pause: float = 0.0,
    timeout: float = 5.0,
) -> Stream:
    """Send ``count`` messages to ``vip:port``, each retried until it gets a 250.

    Returns ``state`` (or a new :class:`Stream`), filled in as it goes.
    """
    state = state or Stream()
    conn: smtplib.SMTP | None = None
    for n in range(1, count + 1):
        if state.stop.is_set():
            break
        k = 0
        while not state.stop.is_set():
            k += 1
            began = time.monotonic()
            try:
                if conn is None:
                    address = (source, 0) if source else None
                    conn = smtplib.SMTP(vip, port, timeout=timeout, source_address=address)
                data = message_bytes(f"{state.tag}{n}.{k}")
                conn.sendmail("client@example.org", ["user@example.net"], data)
            except (smtplib.SMTPException, OSError) as exc:
                state.attempts.append(Attempt(n, k, False, began, str(exc)[:200], state.tag))
                conn = _close(conn)
                time.sleep(0.02)
                continue
            state.attempts.append(Attempt(n, k, True, began, tag=state.tag))
            state.sent = n
            break
        if pause:
            time.sleep(pause)
    _close(conn)
    return state


def _close(conn: smtplib.SMTP | None) -> None:
    if conn is not None:
        try:
            conn.quit()
        except (smtplib.SMTPException, OSError):
            conn.close()


def greeting(address: str, port: int, *, source: str | None = None) -> str:
    """The first line a server at ``address:port`` says (``220 ...`` or ``421 ...``)."""
    bind = (source, 0) if source else None
    with socket.create_connection((address, port), timeout=5, source_address=bind) as sock:
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(512)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def read_sink(path: Path) -> list[dict[str, Any]]:
    """The sink's records (``examples/sink.py``)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@attrs.frozen
class Tally:
    """What happened to every message the client sent."""

    accepted: int  # attempts the client was told 250 for
    delivered: int  # of those, stored by the sink
    lost: list[str]  # accepted attempts the sink never stored
    duplicated: list[str]  # accepted attempts the sink stored more than once
    resent: int  # deliveries the sink recognised as resends of a queue id
    unacknowledged_delivered: int  # failed attempts that arrived anyway (allowed)
    failure_seconds: float  # total time the client spent between a failure and a success
    longest_failure: float
    failed_attempts: int
    from_: dict[str, int]  # "address (node)" -> stored deliveries

    def lines(self) -> list[str]:
        """The summary, for people."""
        origin = ", ".join(f"{k}: {v}" for k, v in sorted(self.from_.items()))
        return [
            f"accepted (250)        {self.accepted}",
            f"delivered             {self.delivered}",
            f"lost                  {len(self.lost)}",
            f"duplicated            {len(self.duplicated)}",
            f"client saw failures   {self.failure_seconds:.2f} s in all, longest "
            f"{self.longest_failure:.2f} s ({self.failed_attempts} failed attempts, retried)",
            f"delivered from        {origin}",
            f"resends recognised    {self.resent} (a delivery in flight when its node died)",
            f"unacknowledged tries that arrived anyway: {self.unacknowledged_delivered}",
        ]


def tally(attempts: Iterable[Attempt], records: Iterable[dict[str, Any]]) -> Tally:
    """Match the client's attempts with what the sink stored."""
    attempts = sorted(attempts, key=lambda a: a.t)
    stored = collections.Counter(r["attempt"] for r in records if not r["repeat"])
    resent = sum(1 for r in records if r["repeat"])
    origin = collections.Counter(f"{r['peer']} ({r['node']})" for r in records if not r["repeat"])
    accepted = [a.key for a in attempts if a.ok]
    failed = [a for a in attempts if not a.ok]
    spans, since = [], None
    for a in attempts:
        if not a.ok and since is None:
            since = a.t
        elif a.ok and since is not None:
            spans.append(a.t - since)
            since = None
    return Tally(
        accepted=len(accepted),
        delivered=sum(1 for k in accepted if stored[k]),
        lost=[k for k in accepted if not stored[k]],
        duplicated=[k for k in accepted if stored[k] > 1],
        resent=resent,
        unacknowledged_delivered=sum(1 for a in failed if stored[a.key]),
        failure_seconds=sum(spans),
        longest_failure=max(spans, default=0.0),
        failed_attempts=len(failed),
        from_=dict(origin),
    )


def wait_delivered(
    sink_record: Path, attempts: Iterable[Attempt], timeout: float
) -> list[dict[str, Any]]:
    """Wait until the sink stored every accepted attempt (or ``timeout``); return its records."""
    want = {a.key for a in attempts if a.ok}
    end = time.monotonic() + timeout
    while True:
        records = read_sink(sink_record)
        if want <= {r["attempt"] for r in records} or time.monotonic() > end:
            return records
        time.sleep(0.1)
