"""``ClusterAudit``: cluster-wide audit series, moved between nodes over TCP.

Every node runs one ``ClusterAudit`` over its series (each created with
``export_increments=True``). Every ``interval`` seconds a sender thread
takes each series' new local increments as an :class:`IncrementBatch` and
one thread per *receiver* pushes them there. Receivers are the other
members of the :class:`~mhafail.coordination.Membership` view that publish
an ``"audit"`` endpoint: managers always do; an MTA node does when it
wants cluster-wide counts itself (peer sharing). A receiver merges what it
gets into its own series, so ``series.count()`` on a receiver is its own
counts plus everything the other nodes counted: the same ``AuditSeries``
call, at the same cost, as for a local series.

Why nothing double-counts (``docs/audit.md``):

* The receiver's series remembers per origin (node name + incarnation) the
  highest batch sequence merged and ignores anything at or below it, so a
  batch re-sent after a timeout or reconnect counts once.
* On every connection the sender first asks how far the receiver got
  (``hello``) and sends only the batches after that.
* A receiver that knows nothing from this origin (it just started, or the
  origin is new to it) gets the batches themselves if the sender still has
  its whole history, else a *snapshot*: the sender's local counts of the
  live windows up to a sequence (then the batches after it). The receiver
  applies a snapshot only while it still knows nothing from that origin,
  under the same lock as every merge; so a restarted manager is refilled
  with the counts of every live node, once. Snapshots stay out of the
  receiver's as_logger interval: they were logged before.
* A restarted node is a new origin, so its old and new increments never
  overlap at a receiver. Its first ``hello`` to each receiver asks for
  *history*: what the receiver merged from earlier incarnations of the same
  node name (``AuditSeries.origin_counts``). The node merges that into its
  own series (``AuditSeries.merge_history``, under the same lock as every
  merge), once however many receivers return it, and never exports it
  again; so it comes back with its pre-crash counts and nobody counts them
  twice.

Threads: one sender thread, one thread per receiver it pushes to, and, when
listening, one accept thread plus one thread per incoming connection.
Nothing here runs on the coordinator's dispatcher thread: the membership
listener only sets an event.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import ssl
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs

from mhafail.audit._batch import IncrementBatch, MergeOutcome, MergeStatus, Origin
from mhafail.audit._history import add_history, check_history, history_items, read_history
from mhafail.audit._outgoing import Outgoing
from mhafail.audit._series import AuditSeries
from mhafail.audit._wire import (
    DEFAULT_MAX_FRAME,
    PROTOCOL_VERSION,
    SERVICE,
    check_increments,
    decode_message,
    encode_message,
)
from mhafail.channel import (
    Channel,
    ChannelSecurity,
    Listener,
    connect,
    endpoints_in,
    format_endpoint,
)
from mhafail.channel import parse_endpoint as _parse_endpoint
from mhafail.errors import (
    AuditError,
    AuditInvalidArgument,
    AuditProtocolError,
    ChannelClosed,
    ChannelError,
    ChannelInvalidArgument,
)

if TYPE_CHECKING:
    from mhafail.coordination import ClusterView, Membership

__all__ = ["ClusterAudit", "ClusterStats", "PeerStatus", "ReceiverStats"]

log = logging.getLogger(__name__)

ENDPOINT = "audit"
"""The ``NodeInfo.endpoints`` key a receiver publishes its ``host:port`` under."""

Key = int | str

_MAX_BACKOFF = 5.0
_IDLE_WAKE = 10.0
# An idle sender says hello this often, well inside a receiver's idle timeout.
_KEEPALIVE = 15.0
# How long a receiver that left the view still holds the backlog for its return.
_REMEMBER_DEPARTED = 300.0
# Same rule as cluster node names (mhafail.coordination), without importing kazoo.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def parse_endpoint(text: object, *, what: str, listen: bool = False) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6) and check both parts.

    Raises:
        AuditInvalidArgument: not ``host:port``, or the port is out of range.
    """
    try:
        return _parse_endpoint(text, what=what, listen=listen)
    except ChannelInvalidArgument as exc:
        raise AuditInvalidArgument(str(exc)) from None


def _check_secret(value: object) -> bytes | None:
    try:
        return ChannelSecurity(secret=value).secret  # type: ignore[arg-type]
    except ChannelInvalidArgument as exc:
        raise AuditInvalidArgument(str(exc)) from None


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


@attrs.frozen
class PeerStatus:
    """How pushing to one receiver goes.

    Attributes:
        node: the receiver's node name.
        endpoint: its ``host:port``.
        connected: a connection is open and the receiver answered ``hello``.
        acked: per series, the highest sequence the receiver confirmed.
        refused: per series, why the receiver does not take it (it has no
            such series, or its window length or family differs).
        failures: connection or protocol failures so far (each is retried).
        last_error: the latest failure, or None.
        lost: batches the receiver never got because they had left the
            backlog before it reconnected (its counts are low by them).
    """

    node: str
    endpoint: str
    connected: bool
    acked: Mapping[str, int]
    refused: Mapping[str, str]
    failures: int
    last_error: str | None
    lost: int


@attrs.frozen
class ReceiverStats:
    """What this node, as a receiver, did with incoming batches.

    Attributes:
        connections: connections accepted so far.
        applied: batches merged (snapshots included).
        duplicates: batches ignored because their sequence was already merged.
        snapshots: snapshots merged (a sender refilling this receiver).
        snapshots_skipped: snapshots ignored because the origin was known.
        histories_sent: batches of earlier incarnations' counts handed back
            to a restarted sender in a hello reply.
        histories_merged: history batches a sender pushed (its earlier
            incarnations' counts) that added something here.
        gaps: merged batches whose sequence jumped (counts are low).
        stale: increments dropped because their window had aged out here.
        too_new: increments dropped because their window lies too far ahead.
        refused: batches refused (unknown series, mismatched or malformed).
        bad_messages: connections closed because a frame or message was invalid.
    """

    connections: int = 0
    applied: int = 0
    duplicates: int = 0
    snapshots: int = 0
    snapshots_skipped: int = 0
    histories_sent: int = 0
    histories_merged: int = 0
    gaps: int = 0
    stale: int = 0
    too_new: int = 0
    refused: int = 0
    bad_messages: int = 0


@attrs.frozen
class ClusterStats:
    """A snapshot of a :class:`ClusterAudit`'s state, for monitoring.

    Attributes:
        origin: this process's origin (node name and incarnation).
        endpoint: the published receiver endpoint, or None when not receiving.
        sequences: per series, the latest batch sequence taken.
        backlog: per series, batches kept for receivers that fall behind.
        peers: one entry per receiver currently pushed to.
        received: what incoming batches did.
        restored: per series, increments of this node's earlier
            incarnations that receivers handed back after a restart.
    """

    origin: Origin
    endpoint: str | None
    sequences: Mapping[str, int]
    backlog: Mapping[str, int]
    peers: tuple[PeerStatus, ...]
    received: ReceiverStats
    restored: Mapping[str, int] = attrs.field(factory=dict)


class _Peer:
    """Pushes to one receiver on its own thread, reconnecting as needed."""

    def __init__(self, audit: ClusterAudit, node: str, endpoint: str) -> None:
        self.audit = audit
        self.node = node
        self.endpoint = endpoint
        self.host, self.port = parse_endpoint(endpoint, what=f"endpoint of {node}")
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.chan: Channel | None = None
        self.last_request = 0.0
        self.acked: dict[str, int] = {}
        self.floor: dict[str, int] = {}
        self.refused: dict[str, str] = {}
        self.failures = 0
        self.lost = 0
        # Per series, on this connection: earlier incarnations of this node the
        # receiver reported (origin -> sequence), and the restored-history
        # generation pushed to it.
        self.known: dict[str, dict[Origin, int]] = {}
        self.history_sent: dict[str, int] = {}
        self.last_error: str | None = None
        self.connected = False
        self.thread = threading.Thread(
            target=self._run, name=f"mhafail-audit-push-{node}", daemon=True
        )

    def start(self) -> None:
        self.wake.set()
        self.thread.start()

    def stop(self) -> None:
        """Ask the thread to end; it closes its own connection."""
        self.stopped.set()
        self.wake.set()
        chan = self.chan
        if chan is not None:
            chan.shutdown()

    def status(self) -> PeerStatus:
        with self.audit._acks:
            return PeerStatus(
                node=self.node,
                endpoint=self.endpoint,
                connected=self.connected,
                acked=dict(self.acked),
                refused=dict(self.refused),
                failures=self.failures,
                last_error=self.last_error,
                lost=self.lost,
            )

    def caught_up(self, targets: Mapping[str, int]) -> bool:
        """True when the receiver confirmed every target sequence (audit._acks held)."""
        for name, seq in targets.items():
            if seq == 0 or name in self.refused:
                continue
            if not self.connected or self.acked.get(name, 0) < seq:
                return False
        return True

    def _run(self) -> None:
        backoff = 0.0
        try:
            while not self.stopped.is_set():
                if backoff:
                    self.stopped.wait(backoff)
                else:
                    self.wake.wait(_IDLE_WAKE)
                if self.stopped.is_set():
                    break
                self.wake.clear()
                try:
                    self._sync()
                    backoff = 0.0
                except Exception as exc:  # OSError, AuditError expected; anything else too
                    self._close()
                    with self.audit._acks:
                        self.failures += 1
                        first = self.last_error is None
                        self.last_error = f"{type(exc).__name__}: {exc}"
                    level = logging.WARNING if first or backoff == 0 else logging.DEBUG
                    if not self.stopped.is_set():
                        log.log(
                            level, "pushing to %s (%s) failed: %s", self.node, self.endpoint, exc
                        )
                    backoff = min(max(self.audit.interval, backoff * 2), _MAX_BACKOFF)
        finally:
            self._close()

    def _close(self) -> None:
        chan, self.chan = self.chan, None
        with self.audit._acks:
            self.connected = False
            self.acked = {}
            self.audit._acks.notify_all()
        if chan is not None:
            chan.close()

    def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.chan is not None
        timeout = self.audit.timeout
        message = {"v": PROTOCOL_VERSION, "origin": _origin_json(self.audit.origin), **message}
        payload = encode_message(message)
        if len(payload) > self.audit.max_frame:
            raise AuditProtocolError(
                f"message of {len(payload)} bytes exceeds the {self.audit.max_frame}-byte limit"
            )
        self.last_request = time.monotonic()
        self.chan.send(payload, timeout)
        try:
            reply = decode_message(self.chan.recv_one(timeout))
        except ChannelClosed as exc:
            raise AuditProtocolError(f"{self.node} did not answer: {exc}") from None
        if reply.get("ok") is not True:
            raise AuditProtocolError(f"{self.node} refused: {reply.get('error')!r}")
        return reply

    def _sync(self) -> None:
        audit = self.audit
        if self.chan is None:
            self.chan = connect(
                self.endpoint,
                SERVICE,
                audit._client_security,
                timeout=audit.timeout,
                max_frame=audit.max_frame,
            )
            if self.stopped.is_set():  # stop() may have missed the connection
                raise AuditError("stopping")
            # The first hello also asks for what earlier incarnations of this node sent.
            hello = {"type": "hello", "series": self._asked(), "history": audit.max_frame}
            reply = self._request(hello)
            self.known = {}
            self.history_sent = {}
            with audit._acks:
                self.refused = {}
                self.connected = True
            self._absorb(reply)
            self._restore(reply)
        while not self.stopped.is_set():
            self._push_history()
            items: list[tuple[bool, IncrementBatch]] = []
            losses: dict[str, int] = {}
            for name, out in audit._outgoing.items():
                if name in self.refused:
                    continue
                with audit._acks:
                    delivered = audit._delivered.get(self.node, {}).get(name, 0)
                wanted, lost = out.items_after(self.acked.get(name, 0), delivered)
                if lost:
                    losses[name] = lost
                items.extend(wanted)
            if not items:
                if time.monotonic() - self.last_request >= _KEEPALIVE:
                    # Idle: prove we are alive before the receiver's idle timeout.
                    self._absorb(self._request({"type": "hello", "series": self._asked()}))
                return
            before = dict(self.acked)
            reply = self._request(
                {
                    "type": "push",
                    "items": [{"snapshot": snap, "batch": b.to_json()} for snap, b in items],
                }
            )
            for name, lost in losses.items():  # counted once the receiver has the gap
                log.warning(
                    "series %s: %d batch(es) for %s left the backlog before it caught up",
                    name,
                    lost,
                    self.node,
                )
                with audit._acks:
                    self.lost += lost
            self._absorb(reply)
            if self.acked == before:
                return  # no progress (the receiver refused something); wait for the next wake

    def _asked(self) -> list[str]:
        return sorted(self.audit._outgoing)

    def _absorb(self, reply: Mapping[str, Any]) -> None:
        series = reply.get("series")
        if not isinstance(series, dict):
            raise AuditProtocolError(f"{self.node} answered without series states")
        with self.audit._acks:
            for name, entry in series.items():
                if name not in self.audit._outgoing or not isinstance(entry, dict):
                    continue
                seq = entry.get("last_seq")
                if type(seq) is not int or seq < 0:
                    raise AuditProtocolError(f"{self.node} sent a bad sequence {seq!r} for {name}")
                self.acked[name] = seq
                self.floor[name] = seq
                delivered = self.audit._delivered.setdefault(self.node, {})
                delivered[name] = max(delivered.get(name, 0), seq)
                error = entry.get("error")
                if error is not None and name not in self.refused:
                    self.refused[name] = str(error)
                    log.warning("%s does not take series %s: %s", self.node, name, error)
                out = self.audit._outgoing[name]
                if seq > out.last_seq:
                    log.error(
                        "%s has merged batch %d of %s from origin %s, which only sent %d: "
                        "two processes share one origin",
                        self.node,
                        seq,
                        name,
                        self.audit.origin,
                        out.last_seq,
                    )
            self.audit._acks.notify_all()

    def _restore(self, reply: Mapping[str, Any]) -> None:
        """Merge the history in a hello reply: counts of this node's earlier incarnations."""
        audit = self.audit
        restored = False
        for name, entry in reply["series"].items():
            if name not in audit._outgoing or not isinstance(entry, dict):
                continue
            series = audit._outgoing[name].series
            for batch in read_history(entry, name, audit.origin, self.node):
                self.known.setdefault(name, {})[batch.origin] = batch.seq
                try:
                    with audit._merge_lock:
                        outcome = series.merge_history(batch)
                        audit._restored[name] = audit._restored.get(name, 0) + outcome.applied
                        if outcome.applied:
                            audit._history_gen[name] = audit._history_gen.get(name, 0) + 1
                except AuditInvalidArgument as exc:
                    log.warning("ignored a history of %s from %s: %s", name, self.node, exc)
                    continue
                if outcome.applied:
                    restored = True
                    log.info(
                        "restored %d increments of %s from %s (counted by %s up to batch %d)",
                        outcome.applied,
                        name,
                        self.node,
                        batch.origin,
                        batch.seq,
                    )
        if restored:
            audit._wake_peers()  # receivers that restarted since need it pushed

    def _push_history(self) -> None:
        """Push restored history this receiver did not report (once per restore, per connection)."""
        audit = self.audit
        with audit._merge_lock:
            generations = dict(audit._history_gen)
        if generations == self.history_sent:
            return
        items: list[dict[str, Any]] = []
        for name, generation in generations.items():
            if name in self.refused or generation <= self.history_sent.get(name, 0):
                continue
            series = audit._outgoing[name].series
            known = self.known.get(name, {})
            # 256 bytes: the request around the items (version, origin, type).
            left = audit.max_frame - 256 - len(encode_message({"items": items}))
            items += history_items(series, audit.origin, known, left)
        if items:
            self._absorb(self._request({"type": "push", "items": items}))
        self.history_sent = generations


def _origin_json(origin: Origin) -> dict[str, Any]:
    return {"node": origin.node, "incarnation": origin.incarnation}


def _parse_origin(value: object) -> Origin:
    if not isinstance(value, dict):
        raise AuditProtocolError("message has no origin object")
    node = value.get("node")
    incarnation = value.get("incarnation")
    if not isinstance(node, str) or not node or type(incarnation) is not int:
        raise AuditProtocolError(f"malformed origin {value!r}")
    return Origin(node, incarnation)


def _check_series(value: object) -> tuple[AuditSeries, ...]:
    if isinstance(value, AuditSeries | str | bytes) or not isinstance(value, Iterable):
        raise AuditInvalidArgument("series must be a list of AuditSeries")
    return tuple(value)


def _within(low: float, high: float, *, integer: bool = False) -> Any:
    def check(_inst: object, attr: attrs.Attribute[float], value: object) -> None:
        kinds = int if integer else int | float
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "an integer" if integer else "a number"
            raise AuditInvalidArgument(f"{attr.name} must be {kind}, not {value!r}")
        if not low <= value <= high:
            raise AuditInvalidArgument(f"{attr.name}={value!r} is outside {low:g}..{high:g}")

    return check


@attrs.define(kw_only=True, eq=False)
class ClusterAudit:
    """Makes audit series cluster-wide: pushes local increments, merges remote ones.

    Typical wiring (see docs/audit.md, "Cluster-wide series")::

        audit = ClusterAudit(
            node="mta1", series=[conn], listen="127.0.0.1:0", secret=read_secret_file(path)
        ).start()
        info = NodeInfo(name="mta1", roles=("manager",), endpoints=audit.endpoints())
        membership = Membership(coordinator=coordinator, info=info).start()
        audit.follow(membership)

    Args:
        node: this node's name (as in its ``NodeInfo``).
        series: the series to share; each needs ``export_increments=True``
            and a distinct name. Do not call their ``take_batch`` elsewhere.
        listen: ``host:port`` to receive on (port 0 picks one); None: this
            node only sends, and its series count only its own increments.
        advertise: the ``host:port`` other nodes connect to; defaults to the
            bound address (required when listening on a wildcard address).
        interval: seconds between batches (the propagation delay is at most
            about this plus one round trip).
        timeout: seconds a connect or a request may take before the
            connection is dropped and retried.
        max_backlog: batches kept per series for a receiver that was away
            briefly; one that falls further behind loses the oldest (see
            :class:`PeerStatus` ``lost``).
        max_frame: the largest message sent or accepted, in bytes (only
            from a peer that passed the handshake; before it, 4 KiB).
        incarnation: this process's incarnation; default: the start time in
            nanoseconds (must differ for every start of the node).
        secret: the cluster's shared secret (``docs/channel.md``): senders
            and receivers prove it to each other and every frame carries a
            MAC. Never shown in ``repr``.
        ssl_context: server-side TLS context for the receiver; without a
            secret it must require client certificates.
        client_ssl_context: client-side TLS context for pushing.
        allow_unauthenticated: receive without secret or mutual TLS, on a
            loopback ``listen`` address only (logged as a warning). Without
            a secret or TLS, pushes go to loopback receivers only.
        max_connections: incoming connections open at once.
        handshake_timeout: seconds an incoming connection has to authenticate.
        idle_timeout: seconds an incoming connection may stay silent (an
            idle sender says hello every 15 s).

    Raises:
        AuditInvalidArgument: any argument above is malformed.
    """

    node: str
    series: tuple[AuditSeries, ...] = attrs.field(converter=_check_series)
    listen: str | None = None
    advertise: str | None = None
    interval: float = attrs.field(default=0.5, validator=_within(0.01, 60.0))
    timeout: float = attrs.field(default=5.0, validator=_within(0.05, 600.0))
    max_backlog: int = attrs.field(default=600, validator=_within(1, 1 << 20, integer=True))
    max_frame: int = attrs.field(
        default=DEFAULT_MAX_FRAME, validator=_within(4096, 1 << 31, integer=True)
    )
    incarnation: int = attrs.field(factory=time.time_ns)
    secret: bytes | None = attrs.field(default=None, converter=_check_secret, repr=False)
    ssl_context: ssl.SSLContext | None = None
    client_ssl_context: ssl.SSLContext | None = None
    allow_unauthenticated: bool = False
    max_connections: int = attrs.field(default=64, validator=_within(1, 1 << 16, integer=True))
    handshake_timeout: float = attrs.field(default=5.0, validator=_within(0.05, 600.0))
    idle_timeout: float = attrs.field(default=60.0, validator=_within(_KEEPALIVE * 2, 86400.0))

    _by_name: dict[str, AuditSeries] = attrs.field(init=False, factory=dict)
    _outgoing: dict[str, Outgoing] = attrs.field(init=False, factory=dict)
    _listen_addr: tuple[str, int] | None = attrs.field(init=False, default=None)
    _listener: Listener | None = attrs.field(init=False, default=None)
    _server_security: ChannelSecurity = attrs.field(init=False, factory=ChannelSecurity)
    _client_security: ChannelSecurity = attrs.field(init=False, factory=ChannelSecurity)
    _endpoint: str | None = attrs.field(init=False, default=None)
    _membership: Membership | None = attrs.field(init=False, default=None)
    _peers: dict[tuple[str, str], _Peer] = attrs.field(init=False, factory=dict)
    _retired: list[_Peer] = attrs.field(init=False, factory=list)
    _peers_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _acks: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    _merge_lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)
    _wake: threading.Event = attrs.field(init=False, factory=threading.Event)
    _stopping: threading.Event = attrs.field(init=False, factory=threading.Event)
    _threads: list[threading.Thread] = attrs.field(init=False, factory=list)
    _received: dict[str, int] = attrs.field(init=False, factory=dict)
    # Per series: increments of earlier incarnations restored, and how many
    # restores added something (peers push history when it grows); _merge_lock.
    _restored: dict[str, int] = attrs.field(init=False, factory=dict)
    _history_gen: dict[str, int] = attrs.field(init=False, factory=dict)
    # Per receiver node name and series: the highest sequence any incarnation confirmed.
    _delivered: dict[str, dict[str, int]] = attrs.field(init=False, factory=dict)
    # Receiver names that left the view, and when (time.monotonic()).
    _departed: dict[str, float] = attrs.field(init=False, factory=dict)
    _started: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.node, str) or not _NODE_NAME.fullmatch(self.node):
            raise AuditInvalidArgument(
                f"invalid node name {self.node!r}: use 1-63 characters from A-Z a-z 0-9 . _ -, "
                "starting with a letter or digit"
            )
        if not self.series:
            raise AuditInvalidArgument("a ClusterAudit needs at least one series")
        for series in self.series:
            if not isinstance(series, AuditSeries):
                raise AuditInvalidArgument(f"{series!r} is not an AuditSeries")
            if not series.export_increments:
                raise AuditInvalidArgument(
                    f"series {series.name!r} was created without export_increments=True"
                )
            if series.name in self._by_name:
                raise AuditInvalidArgument(f"two series are named {series.name!r}")
            self._by_name[series.name] = series
        if type(self.incarnation) is not int:
            raise AuditInvalidArgument(f"incarnation must be an int, not {self.incarnation!r}")
        if self.listen is not None:
            self._listen_addr = parse_endpoint(self.listen, what="listen", listen=True)
            if self.advertise is None and _is_wildcard(self._listen_addr[0]):
                raise AuditInvalidArgument(
                    f"listening on {self.listen} needs advertise= (an address others can reach)"
                )
        if self.advertise is not None:
            if self.listen is None:
                raise AuditInvalidArgument("advertise= needs listen=")
            parse_endpoint(self.advertise, what="advertise")
        self._check_security()
        origin = self.origin
        self._outgoing = {s.name: Outgoing(s, origin, self.max_backlog) for s in self.series}
        self._received = dict.fromkeys(attrs.fields_dict(ReceiverStats), 0)

    def _check_security(self) -> None:
        self._server_security = ChannelSecurity(
            secret=self.secret,
            ssl_context=self.ssl_context,
            allow_unauthenticated=self.allow_unauthenticated,
        )
        self._client_security = ChannelSecurity(
            secret=self.secret, ssl_context=self.client_ssl_context
        )
        if self._listen_addr is not None:
            try:
                self._server_security.check_listen(SERVICE, self._listen_addr[0])
            except ChannelInvalidArgument as exc:
                raise AuditInvalidArgument(str(exc)) from None

    # --- life cycle -------------------------------------------------------------

    @property
    def origin(self) -> Origin:
        """This process's origin: the node name and its incarnation."""
        return Origin(self.node, self.incarnation)

    def start(self) -> ClusterAudit:
        """Listen (if ``listen`` was given) and start sending.

        Returns:
            self.

        Raises:
            AuditError: the listen address cannot be bound, or already started.
        """
        if self._started:
            raise AuditError("this ClusterAudit was already started")
        self._started = True
        if self._listen_addr is not None:
            host, port = self._listen_addr
            listener = Listener(
                service=SERVICE,
                host=host,
                port=port,
                security=self._server_security,
                handler=self._serve,
                max_connections=self.max_connections,
                handshake_timeout=self.handshake_timeout,
                idle_timeout=self.idle_timeout,
                max_frame=self.max_frame,
                name=f"mhafail-audit-{self.node}",
            )
            try:
                self._listener = listener.start()
            except ChannelError as exc:
                raise AuditError(f"cannot listen on {self.listen}: {exc}") from exc
            self._endpoint = self.advertise or format_endpoint(
                host, int(listener.endpoint.rsplit(":", 1)[1])
            )
        self._spawn(self._send_loop, f"mhafail-audit-send-{self.node}")
        log.info("cluster series %s started as %s", ", ".join(self._by_name), self.origin)
        return self

    def endpoints(self) -> dict[str, str]:
        """``{"audit": "host:port"}`` to merge into ``NodeInfo.endpoints``; ``{}`` if not receiving.

        Raises:
            AuditError: listening was asked for but :meth:`start` was not called yet.
        """
        if self._listen_addr is None:
            return {}
        if self._endpoint is None:
            raise AuditError("start() the ClusterAudit before publishing its endpoint")
        return {ENDPOINT: self._endpoint}

    def follow(self, membership: Membership) -> None:
        """Push to every other member of ``membership``'s view that publishes an endpoint.

        Raises:
            AuditError: already following a membership.
        """
        if self._membership is not None:
            raise AuditError("this ClusterAudit already follows a membership")
        self._membership = membership
        membership.add_listener(self._on_view)
        self._wake.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what was counted so far now, and wait until every receiver confirmed it.

        Receivers that refused a series do not count. Useful before a clean
        shutdown and in tests.

        Args:
            timeout: seconds to wait.

        Returns:
            True when every current receiver confirmed; False on timeout.

        Raises:
            AuditError: not started, or stopped.
        """
        if not self._started or self._stopping.is_set():
            raise AuditError("flush() needs a started ClusterAudit")
        self._take_all()
        peers = self._reconcile()
        targets = {name: out.last_seq for name, out in self._outgoing.items()}
        for peer in peers:
            peer.wake.set()
        with self._acks:
            return self._acks.wait_for(
                lambda: all(peer.caught_up(targets) for peer in peers), timeout
            )

    def stop(self, flush_timeout: float = 1.0) -> None:
        """Flush (best effort, up to ``flush_timeout`` s), close every connection, end threads.

        Idempotent. Counts already in the series stay.
        """
        if not self._started or self._stopping.is_set():
            return
        if flush_timeout > 0:
            try:
                self.flush(flush_timeout)
            except Exception:  # stopping must go on whatever the last flush did
                log.exception("final flush failed")
        self._stopping.set()
        self._wake.set()
        with self._peers_lock:
            peers = [*self._peers.values(), *self._retired]
            self._peers.clear()
            self._retired.clear()
        for peer in peers:
            peer.stop()
        for peer in peers:
            if peer.thread.is_alive():
                peer.thread.join()
        for thread in self._threads:
            thread.join()
        if self._listener is not None:
            self._listener.stop()
        log.info("cluster series of %s stopped", self.origin)

    def __enter__(self) -> ClusterAudit:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> ClusterStats:
        """Return sequences, backlogs, per-receiver and received-batch figures."""
        with self._peers_lock:
            peers = sorted(self._peers.values(), key=lambda p: (p.node, p.endpoint))
        sequences: dict[str, int] = {}
        backlog: dict[str, int] = {}
        for name, out in self._outgoing.items():
            with out.lock:
                sequences[name] = out.last_seq
                backlog[name] = len(out.backlog)
        with self._merge_lock:
            received = ReceiverStats(**self._received)
            restored = dict(self._restored)
        return ClusterStats(
            origin=self.origin,
            endpoint=self._endpoint,
            sequences=sequences,
            backlog=backlog,
            peers=tuple(peer.status() for peer in peers),
            received=received,
            restored=restored,
        )

    # --- sending ----------------------------------------------------------------

    def _wake_peers(self) -> None:
        with self._peers_lock:
            peers = list(self._peers.values())
        for peer in peers:
            peer.wake.set()

    def _spawn(self, target: Any, name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _on_view(self, _view: ClusterView) -> None:
        # Membership's thread: only wake the sender.
        self._wake.set()

    def _send_loop(self) -> None:
        next_take = time.monotonic()
        while not self._stopping.is_set():
            self._wake.wait(max(0.0, next_take - time.monotonic()))
            if self._stopping.is_set():
                break
            self._wake.clear()
            try:
                if time.monotonic() >= next_take:
                    next_take = time.monotonic() + self.interval
                    took = self._take_all()
                else:
                    took = False  # a view change: reconcile receivers now, take on time
                peers = self._reconcile()
                if took:
                    for peer in peers:
                        peer.wake.set()
                self._trim(peers)
            except Exception:
                log.exception("cluster series sender pass failed")

    def _take_all(self) -> bool:
        took = False
        for out in self._outgoing.values():
            took = out.take() or took
        return took

    def _targets(self) -> dict[tuple[str, str], str]:
        membership = self._membership
        if membership is None:
            return {}
        found = endpoints_in(membership.view, ENDPOINT, exclude=self.node)
        return {(name, endpoint): name for name, endpoint in found.items()}

    def _reconcile(self) -> list[_Peer]:
        """Start pushers for new receivers and stop those that left the view."""
        wanted = self._targets()
        with self._peers_lock:
            if self._stopping.is_set():
                return []
            for key in [k for k in self._peers if k not in wanted]:
                peer = self._peers.pop(key)
                log.info("no longer pushing to %s (%s)", peer.node, peer.endpoint)
                peer.stop()
                self._retired.append(peer)
                self._departed[peer.node] = time.monotonic()
            for key, name in wanted.items():
                if key not in self._peers:
                    self._departed.pop(name, None)
                    peer = _Peer(self, name, key[1])
                    self._peers[key] = peer
                    log.info("pushing cluster series to %s (%s)", name, key[1])
                    peer.start()
            self._retired = [p for p in self._retired if p.thread.is_alive()]
            return list(self._peers.values())

    def _trim(self, peers: list[_Peer]) -> None:
        """Drop batches that every receiver confirmed, or may come back for."""
        if not peers:
            return  # keep the backlog for receivers that come back
        now = time.monotonic()
        with self._peers_lock:
            for name in [n for n, t in self._departed.items() if now - t > _REMEMBER_DEPARTED]:
                del self._departed[name]
            departed = list(self._departed)
        with self._acks:
            for name in self._outgoing:
                # A receiver that left the view briefly (a ZooKeeper blip) comes back
                # knowing what it confirmed; keep what follows for it.
                floors = [p.floor.get(name, 0) for p in peers if name not in p.refused]
                floors += [
                    self._delivered[d][name] for d in departed if name in self._delivered.get(d, {})
                ]
                if floors:
                    self._outgoing[name].trim(min(floors))

    # --- receiving --------------------------------------------------------------

    def _serve(self, chan: Channel) -> None:
        """Answer one authenticated sender's requests until it leaves or goes quiet."""
        with self._merge_lock:
            self._received["connections"] += 1
        try:
            while not self._stopping.is_set():
                try:
                    payload = chan.recv_one(self.idle_timeout)
                    reply = self._answer(decode_message(payload))
                except (AuditProtocolError, ChannelError) as exc:
                    if isinstance(exc, ChannelClosed):
                        log.debug("cluster series connection ended: %s", exc)
                        return
                    with self._merge_lock:
                        self._received["bad_messages"] += 1
                    log.warning("closing a cluster series connection from %s: %s", chan.peer, exc)
                    if isinstance(exc, AuditProtocolError):
                        reply = {"ok": False, "error": str(exc)}
                        with contextlib.suppress(ChannelError):
                            chan.send(encode_message(reply), self.timeout)
                    return
                chan.send(encode_message(reply), self.timeout)
        except ChannelError as exc:
            if not self._stopping.is_set():
                log.debug("cluster series connection ended: %s", exc)

    def _answer(self, message: Mapping[str, Any]) -> dict[str, Any]:
        version = message.get("v")
        if version != PROTOCOL_VERSION:
            raise AuditProtocolError(
                f"protocol version {version!r} is not supported (this node speaks "
                f"{PROTOCOL_VERSION})"
            )
        origin = _parse_origin(message.get("origin"))
        if origin == self.origin:
            raise AuditProtocolError(f"{origin} is this process; a node never sends to itself")
        kind = message.get("type")
        states: dict[str, dict[str, Any]] = {}
        if kind == "hello":
            names = message.get("series")
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise AuditProtocolError("hello must list series names")
            for name in names:
                states[name] = self._state(name, origin)
            limit = message.get("history")
            if limit is not None:
                if type(limit) is not int or limit < 0:
                    raise AuditProtocolError(f"hello history limit {limit!r} is not a byte count")
                reply = {"ok": True, "receiver": _origin_json(self.origin), "series": states}
                added = add_history(reply, self._by_name, origin, min(limit, self.max_frame))
                with self._merge_lock:
                    self._received["histories_sent"] += added
                return reply
        elif kind == "push":
            items = message.get("items")
            if not isinstance(items, list):
                raise AuditProtocolError("push must carry a list of items")
            for item in items:
                self._merge_item(item, origin, states)
        else:
            raise AuditProtocolError(f"unknown message type {kind!r}")
        return {
            "ok": True,
            "receiver": _origin_json(self.origin),
            "series": states,
        }

    def _state(self, name: str, origin: Origin, error: str | None = None) -> dict[str, Any]:
        series = self._by_name.get(name)
        if series is None:
            return {"last_seq": 0, "error": f"{self.node} has no series {name!r}"}
        state: dict[str, Any] = {"last_seq": series.last_seq(origin)}
        if error is not None:
            state["error"] = error
        return state

    def _merge_item(self, item: object, origin: Origin, states: dict[str, dict[str, Any]]) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("batch"), dict):
            raise AuditProtocolError("push item must hold a batch object")
        snapshot = item.get("snapshot", False)
        history = item.get("history", False)
        for flag, value in (("snapshot", snapshot), ("history", history)):
            if not isinstance(value, bool):
                raise AuditProtocolError(f"push item {flag!r} must be true or false")
        if snapshot and history:
            raise AuditProtocolError("a push item is a snapshot or a history, not both")
        name = item["batch"].get("series")
        if not isinstance(name, str):
            raise AuditProtocolError("batch without a series name")
        series = self._by_name.get(name)
        if series is None:
            with self._merge_lock:
                self._received["refused"] += 1
            states[name] = self._state(name, origin)
            return
        try:
            if history:
                self._merge_history(check_history(item["batch"], name, origin), series)
                states[name] = self._state(name, origin)
                return
            check_increments(item["batch"])
            batch = IncrementBatch.from_json(item["batch"])
            if batch.origin != origin:
                raise AuditInvalidArgument(
                    f"batch from {batch.origin} arrived on {origin}'s connection"
                )
            with self._merge_lock:
                if snapshot and series.last_seq(origin) != 0:
                    # The origin's increments are here already: applying its
                    # whole counts again would double them.
                    self._received["snapshots_skipped"] += 1
                else:
                    # A snapshot refills a restarted receiver: keep it out of the
                    # as_logger interval, or those counts would be logged twice.
                    outcome = series.merge(batch, track_interval=not snapshot)
                    self._count(snapshot, outcome)
        except AuditInvalidArgument as exc:
            with self._merge_lock:
                self._received["refused"] += 1
            log.warning("refused a batch of %s from %s: %s", name, origin, exc)
            states[name] = self._state(name, origin, str(exc))
            return
        if "error" not in states.get(name, {}):
            states[name] = self._state(name, origin)

    def _merge_history(self, batch: IncrementBatch, series: AuditSeries) -> None:
        with self._merge_lock:
            outcome = series.merge_history(batch)
            self._received["histories_merged"] += outcome.applied > 0
            self._received["stale"] += outcome.stale
            self._received["too_new"] += outcome.too_new

    def _count(self, snapshot: bool, outcome: MergeOutcome) -> None:
        # _merge_lock held.
        received = self._received
        if outcome.status is MergeStatus.DUPLICATE:
            received["duplicates"] += 1
            return
        received["applied"] += 1
        received["snapshots"] += snapshot
        received["gaps"] += outcome.gap
        received["stale"] += outcome.stale
        received["too_new"] += outcome.too_new
