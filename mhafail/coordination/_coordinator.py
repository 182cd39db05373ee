"""The Coordinator: one ZooKeeper session per process, with a fencing lease.

Concurrency: kazoo runs a connection thread and an event thread. The
coordinator adds two threads of its own:

* the *keeper* turns kazoo's state changes, the negotiated session timeout
  and heartbeat replies into the connection state, the session id and the
  lease, and notices when the lease runs out (it waits on a condition with
  the deadline as timeout);
* the *dispatcher* runs every listener, in order, so that no application
  code ever runs on kazoo's threads (docs/architecture.md, "Threads").

Listeners must not block: a slow listener delays the ones behind it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import attrs
from kazoo.client import KazooClient, KazooState
from kazoo.retry import KazooRetry

from mhafail.coordination._acl import AclPolicy
from mhafail.coordination._auth import (
    Credentials,
    Role,
    TlsSettings,
    client_options,
    coerce_credentials,
)
from mhafail.coordination._dispatch import Dispatcher
from mhafail.coordination._handshake import NegotiationHandler
from mhafail.coordination._lease import (
    HeartbeatRounds,
    Lease,
    ProofChain,
    default_margin,
    report_lag,
    round_interval,
)
from mhafail.coordination._names import check_name, format_hosts, parse_hosts
from mhafail.coordination._root import prepare_root, warn_open_once
from mhafail.coordination._state import ConnectionState, LeaseState
from mhafail.coordination._store import Znodes
from mhafail.errors import (
    AccessDenied,
    CoordinationError,
    CoordinationUnavailable,
    InvalidArgument,
)

logger = logging.getLogger(__name__)

ROOT = "/mhafail"


class _KazooWarnings(logging.Filter):
    """Demote kazoo's warnings to INFO; its errors stay errors.

    kazoo warns on every failed connection attempt (up to 14 lines while
    ``start()`` waits for an unreachable ZooKeeper). The coordinator reports
    each connection state itself and raises ``CoordinationUnavailable`` with
    one line, so an application without a logging configuration, where
    logging's last-resort handler prints warnings, should not see them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING:
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_KAZOO_LOG = logging.getLogger("mhafail.coordination.kazoo")
_KAZOO_LOG.addFilter(_KazooWarnings())


_KAZOO_STATES = {
    KazooState.CONNECTED: ConnectionState.CONNECTED,
    KazooState.SUSPENDED: ConnectionState.SUSPENDED,
    KazooState.LOST: ConnectionState.LOST,
}

Listener = Callable[[Any], None]


@attrs.frozen
class _Negotiated:
    """A connect response: the server's timeout (ms) and when the attempt began."""

    timeout_ms: int
    started: float


@attrs.frozen
class _Reply:
    """A heartbeat (``sync``) outcome, tagged with the connection it was sent on."""

    sent_at: float
    replied_at: float
    epoch: int
    session_id: int
    ok: bool


@attrs.define(kw_only=True, eq=False)
class Coordinator:
    """One ZooKeeper session for this process, rooted at ``/mhafail/<cluster>``.

    Start it with :meth:`start` (or ``with Coordinator(...) as c:``) before
    handing it to components; stop it last.

    Args:
        hosts: ZooKeeper connection string ``host:port[,host:port...]``.
        cluster: cluster name; everything lives under ``/mhafail/<cluster>``.
        session_timeout: requested session timeout in seconds. The server
            may negotiate it into ``[2, 20] x tickTime``; the lease uses the
            smallest of the requested and every negotiated value of the
            session (read from the server's connect responses).
        credentials: the ZooKeeper identity (:class:`Credentials`, usually
            ``Credentials.from_file(path)``): the session authenticates with
            digest auth, or with SASL (DIGEST-MD5 or GSSAPI, on every
            connection, before any request) when ``credentials.sasl`` says
            so; every znode it creates carries the cluster's ACL
            policy for its path (operators: everything; nodes: what the node
            role needs, see ``mhafail.coordination._acl``), and :meth:`start`
            refuses a cluster root whose ACLs are not the policy's. A
            ``(user, password)`` pair is a single-identity cluster.
        open_acl: run without credentials and ACLs: anyone who can reach
            ZooKeeper controls the cluster. Must be chosen explicitly
            (exactly one of ``credentials`` and ``open_acl``); logs a
            warning once per process.
        tls: connect with TLS (the servers' ``secureClientPort``).
        lease_margin: safety margin subtracted from the lease (seconds);
            default :func:`~mhafail.coordination._lease.default_margin`.
        connect_timeout: how long :meth:`start` waits for a first session.
        server_tick: the servers' ``tickTime`` in seconds, if known. The
            lease allows ``tickTime / 2`` for a follower to report session
            activity to the leader; unknown, it assumes the largest tick the
            negotiated timeout allows (``T / 2``, so ``T / 4``).
        request_timeout: the longest a znode operation waits for an answer
            before it raises ``CoordinationUnavailable``.
        close_timeout: the longest :meth:`stop` waits for ZooKeeper to
            acknowledge the session's close.
        monotonic: the clock for the lease (injectable for tests).

    The lease rests only on facts the ZooKeeper leader vouches for (safety
    rule 6): heartbeats are ``sync`` requests, which a follower answers only
    after the leader did, chained as :class:`ProofChain` explains, and
    connect responses, which a server sends only after the leader created or
    revalidated the session.

    Raises:
        InvalidArgument: malformed hosts, cluster name, timeouts or
            credentials, or neither (or both) of credentials and open_acl.

    Raises (from :meth:`start`):
        CoordinationUnavailable: no session within ``connect_timeout``.
        AccessDenied: the cluster root exists with other credentials, or
            ZooKeeper refused the SASL login (wrong user or password, or
            the servers have no SASL configured).
        UnsafeAcl: a znode on the cluster's path carries an ACL outside the
            policy (someone else created it, or it is open).
        CoordinationError: with node credentials, the cluster root does not
            exist yet (an operator creates it: ``mhafail init``).
    """

    hosts: str
    cluster: str
    session_timeout: float = 10.0
    credentials: Credentials | None = attrs.field(default=None, converter=coerce_credentials)
    open_acl: bool = False
    tls: TlsSettings | None = None
    lease_margin: float | None = None
    connect_timeout: float = 15.0
    server_tick: float | None = None
    request_timeout: float = 15.0
    close_timeout: float = 2.0
    monotonic: Callable[[], float] = time.monotonic

    _hosts_parsed: tuple[tuple[str, int], ...] = attrs.field(init=False)
    _client: Any = attrs.field(init=False, default=None)
    _znodes: Znodes | None = attrs.field(init=False, default=None)
    _dispatcher: Dispatcher | None = attrs.field(init=False, default=None)
    _lease_dispatcher: Dispatcher | None = attrs.field(init=False, default=None)
    _keeper: threading.Thread | None = attrs.field(init=False, default=None)
    _cond: threading.Condition = attrs.field(init=False, factory=threading.Condition)
    _lease: Lease = attrs.field(init=False)
    _lease_announced: LeaseState = attrs.field(init=False, default=LeaseState.EXPIRED)
    _state: ConnectionState = attrs.field(init=False, default=ConnectionState.LOST)
    _session_id: int | None = attrs.field(init=False, default=None)
    _kazoo_events: list[ConnectionState | _Negotiated] = attrs.field(init=False, factory=list)
    _replies: list[_Reply] = attrs.field(init=False, factory=list)
    _chain: ProofChain = attrs.field(init=False)
    _epoch: int = attrs.field(init=False, default=0)
    _connect_proof: _Negotiated | None = attrs.field(init=False, default=None)
    _session_timeout_ms: int | None = attrs.field(init=False, default=None)
    _login_refused: bool = attrs.field(init=False, default=False)
    _stopping: bool = attrs.field(init=False, default=False)
    _had_session: bool = attrs.field(init=False, default=False)
    _state_listeners: list[Listener] = attrs.field(init=False, factory=list)
    _lease_listeners: list[Listener] = attrs.field(init=False, factory=list)
    _session_listeners: list[Listener] = attrs.field(init=False, factory=list)

    def __attrs_post_init__(self) -> None:
        self._hosts_parsed = parse_hosts(self.hosts)
        check_name("cluster name", self.cluster)
        if not 0.2 <= self.session_timeout <= 600:
            raise InvalidArgument(
                f"invalid session_timeout {self.session_timeout!r}: use 0.2 to 600 seconds"
            )
        if self.request_timeout <= 0:
            raise InvalidArgument(f"invalid request_timeout {self.request_timeout!r}: must be > 0")
        if self.connect_timeout <= 0:
            raise InvalidArgument(f"invalid connect_timeout {self.connect_timeout!r}: must be > 0")
        margin = self.lease_margin
        if margin is None:
            margin = default_margin(self.session_timeout)
        elif not 0 <= margin < self.session_timeout / 2:
            raise InvalidArgument(
                f"invalid lease_margin {margin!r}: use 0 to half the session timeout"
            )
        self._lease = Lease(timeout=self.session_timeout, margin=margin)
        if self.server_tick is not None and not 0 < self.server_tick <= self.session_timeout:
            raise InvalidArgument(
                f"invalid server_tick {self.server_tick!r}: use a positive tickTime in seconds"
            )
        self._chain = ProofChain(report_lag=self._report_lag(self.session_timeout))
        if (self.credentials is None) == (not self.open_acl):
            raise InvalidArgument(
                "ZooKeeper credentials: give credentials (the CLI's --zk-auth FILE or "
                "$MHAFAIL_ZK_AUTH) or choose an open cluster explicitly with open_acl=True "
                "(--zk-open)"
                if self.credentials is None
                else "ZooKeeper credentials: give credentials or open_acl=True, not both"
            )

    # --- life cycle ---------------------------------------------------------

    def start(self) -> Coordinator:
        """Connect, create the cluster root and establish the lease.

        Returns self, so ``c = Coordinator(...).start()`` reads naturally.
        When it returns, the state is CONNECTED and the lease is VALID.
        """
        if self._client is not None:
            raise CoordinationError("coordinator already started")
        self._dispatcher = Dispatcher(f"mhafail-dispatch-{self.cluster}")
        # Lease events get a thread of their own so that no slow state or
        # watch listener can delay a release (safety rule 1).
        self._lease_dispatcher = Dispatcher(f"mhafail-lease-events-{self.cluster}")
        self._client = self._make_client()
        self._client.add_listener(self._on_kazoo_state)
        # Not kazoo's start(timeout): on a timeout it stops the client itself
        # and waits up to 10 s for a silent server, so `--connect-timeout 3`
        # took 10 s; the teardown here is bounded by close_timeout.
        if not self._client.start_async().wait(self.connect_timeout) or not self._client.connected:
            refusal = self._sasl_refusal()
            self._teardown_client(wait=False)  # no session yet: nothing to close
            if refusal is not None:
                raise refusal
            raise CoordinationUnavailable(
                f"cannot reach ZooKeeper at {format_hosts(self._hosts_parsed)} "
                f"within {self.connect_timeout:g} s"
            )
        try:
            self._ensure_root()
        except Exception:
            self._teardown_client()
            raise
        self._znodes = Znodes(
            self._client,
            f"{ROOT}/{self.cluster}",
            self._dispatcher,
            self.acl_policy,
            timeout=self.request_timeout,
        )
        self._keeper = threading.Thread(
            target=self._keep, name=f"mhafail-lease-{self.cluster}", daemon=True
        )
        self._keeper.start()
        if not self.wait_for_lease(self.connect_timeout):
            self.stop()
            raise CoordinationUnavailable("connected, but no heartbeat was answered in time")
        return self

    def stop(self) -> None:
        """Close the session (its ephemeral znodes vanish at once) and end threads.

        Lease listeners hear EXPIRED first if the lease was valid. Idempotent.
        """
        with self._cond:
            if self._stopping or self._client is None:
                return
            # From here lease_valid() is False: nothing may be plumbed or
            # announced on the strength of a session we are closing.
            self._stopping = True
            if self._lease_announced is LeaseState.VALID:
                self._announce_lease(LeaseState.EXPIRED)
            self._cond.notify_all()
        if self._keeper is not None:
            self._keeper.join()
        self._teardown_client()

    def __enter__(self) -> Coordinator:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- what components read -----------------------------------------------

    @property
    def role(self) -> Role | None:
        """This process's role in a credentialed cluster; None for an open one."""
        return None if self.credentials is None else self.credentials.role

    @property
    def acl_policy(self) -> AclPolicy:
        """The ACL every znode created through this coordinator gets, by path."""
        if self.credentials is None:
            return AclPolicy(open=True)
        return AclPolicy(operators=self.credentials.operators, nodes=self.credentials.nodes)

    @property
    def znodes(self) -> Znodes:
        """Znode operations under the cluster root (started coordinator only)."""
        if self._znodes is None:
            raise CoordinationError("coordinator not started")
        return self._znodes

    @property
    def state(self) -> ConnectionState:
        """The current connection state."""
        with self._cond:
            return self._state

    @property
    def session_id(self) -> int | None:
        """The current session id, or None between sessions."""
        with self._cond:
            return self._session_id

    @property
    def effective_timeout(self) -> float:
        """The session timeout the lease is computed with (seconds)."""
        with self._cond:
            return self._lease.timeout

    def lease_deadline(self) -> float | None:
        """Monotonic time the lease runs out, or None when there is no lease."""
        with self._cond:
            if self._stopping or self._session_id is None:
                return None
            return self._lease.deadline

    def lease_remaining(self) -> float:
        """Seconds before the lease runs out (0 when expired)."""
        with self._cond:
            return 0.0 if self._stopping else self._lease.remaining(self.monotonic())

    def lease_valid(self) -> bool:
        """True when the session provably has not expired on the server.

        Check it immediately before any action that is safe only while the
        session lives (a gratuitous ARP, a write to a fenced spool).
        """
        with self._cond:
            return not self._stopping and self._lease.valid(self.monotonic())

    def wait_for_lease(self, timeout: float) -> bool:
        """Block until the lease is valid; False if ``timeout`` passed first."""
        end = self.monotonic() + timeout
        with self._cond:
            while not self._lease.valid(self.monotonic()):
                left = end - self.monotonic()
                if left <= 0 or self._stopping:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def client_id(self) -> tuple[int, bytes] | None:
        """The (session id, password) pair; for fault injection in tests."""
        cid = self._client.client_id if self._client is not None else None
        return None if cid is None else (int(cid[0]), bytes(cid[1]))

    # --- listeners ------------------------------------------------------------

    def add_state_listener(self, listener: Callable[[ConnectionState], None]) -> None:
        """Call ``listener(state)`` on every connection state change (dispatcher thread)."""
        self._state_listeners.append(listener)

    def add_lease_listener(self, listener: Callable[[LeaseState], None]) -> None:
        """Call ``listener(LeaseState)`` when the lease expires or becomes valid again.

        EXPIRED is delivered when the deadline passes (or the session is
        lost or closed), before the server can have expired the session.
        """
        self._lease_listeners.append(listener)

    def add_session_listener(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(session_id)`` each time a *new* session starts after the first.

        Ephemeral znodes of the old session are gone: re-create them.
        """
        self._session_listeners.append(listener)

    # --- internals --------------------------------------------------------------

    def _make_client(self) -> Any:
        login = client_options(self.credentials, self.tls)
        retry = KazooRetry(max_tries=-1, delay=0.05, backoff=2, max_delay=1.0, max_jitter=0.2)
        client = KazooClient(
            hosts=format_hosts(self._hosts_parsed),
            handler=NegotiationHandler(self._on_negotiated),
            timeout=self.session_timeout,
            connection_retry=retry,
            # Only for kazoo recipes: Znodes passes each path's ACL itself.
            default_acl=self.acl_policy.acl_for(""),
            logger=_KAZOO_LOG,
            **login,
        )
        if login.get("sasl_options") is not None:

            def note_refusal(_: str) -> None:
                # kazoo's client state says AUTH_FAILED only while it reports
                # LOST (it moves on to CLOSED), so remember it here.
                if client.client_state == "AUTH_FAILED":
                    self._login_refused = True

            client.add_listener(note_refusal)
        return client

    def _ensure_root(self) -> None:
        # /mhafail is shared by all clusters on an ensemble; the cluster root
        # and its folders carry the policy's ACLs, checked before any use.
        if self.open_acl:
            warn_open_once(self.cluster)
        try:
            prepare_root(self._client, self.cluster, self.acl_policy, self.role)
        except AccessDenied as exc:
            refusal = self._sasl_refusal()
            if refusal is None:
                raise
            raise refusal from exc

    def _sasl_refusal(self) -> AccessDenied | None:
        """The error to raise when ZooKeeper refused our SASL login, else None."""
        # kazoo reports CONNECTED before the SASL exchange; a refused login
        # then closes the client (AUTH_FAILED), failing start() or the first
        # request depending on which comes first.
        creds = self.credentials
        if creds is None or creds.sasl is None or not self._login_refused:
            return None
        return AccessDenied(
            f"ZooKeeper at {format_hosts(self._hosts_parsed)} refused the SASL "
            f"{creds.sasl} login of {creds.user!r}: wrong password, a user the servers' "
            "JAAS 'Server' section does not list, or servers without SASL "
            "(docs/security.md)"
        )

    def _teardown_client(self, *, wait: bool = True) -> None:
        client, self._client = self._client, None
        if client is not None:

            def close() -> None:
                try:
                    client.stop()
                    client.close()
                except Exception:  # closing a broken client must not mask the real error
                    logger.debug("error while closing kazoo client", exc_info=True)

            # kazoo's stop() waits up to 10 s for an unreachable or hung server
            # to acknowledge the close; the session ends on its own anyway
            # (the lease ended first), so stop is bounded here.
            closer = threading.Thread(target=close, name="mhafail-zk-close", daemon=True)
            closer.start()
            closer.join(self.close_timeout if wait else 0.0)
            if closer.is_alive() and wait:
                logger.warning(
                    "cluster %s: ZooKeeper did not acknowledge the close in %.1f s; "
                    "the session will expire on its own",
                    self.cluster,
                    self.close_timeout,
                )
        for dispatcher in (self._dispatcher, self._lease_dispatcher):
            if dispatcher is not None:
                dispatcher.stop()

    def _on_kazoo_state(self, kstate: str) -> None:
        # Runs on kazoo's thread: record and wake the keeper, nothing more.
        with self._cond:
            self._kazoo_events.append(_KAZOO_STATES[kstate])
            self._cond.notify_all()

    def _on_negotiated(self, timeout_ms: int, started: float) -> None:
        # Runs on kazoo's connection thread, before it reports CONNECTED.
        with self._cond:
            self._kazoo_events.append(_Negotiated(timeout_ms, started))
            self._cond.notify_all()

    def _on_reply(self, sent_at: float, epoch: int, session_id: int, result: Any) -> None:
        # Runs on kazoo's completion thread: record and wake the keeper.
        replied_at = self.monotonic()
        with self._cond:
            ok = result.exception is None
            self._replies.append(_Reply(sent_at, replied_at, epoch, session_id, ok))
            self._cond.notify_all()

    def _report_lag(self, timeout: float) -> float:
        """Upper bound on the leader's ping interval (``tickTime / 2``), with slack."""
        return report_lag(timeout, self.server_tick)

    def _keep(self) -> None:
        """The keeper thread: state, session id, heartbeats and lease expiry.

        Heartbeats go out in rounds of three ``sync`` requests, one in
        flight at a time: ``a`` at the start of the round, ``b`` once
        ``report_lag`` has passed since ``a`` was answered, ``c`` as soon as
        ``b`` is answered. The answer to ``c`` proves ``a``'s send time
        (:class:`ProofChain`), so a fresh proof is only ``report_lag`` plus
        three round trips old. A chain of evenly spaced heartbeats proved a
        send time two periods back, and a cut-off owner gave its VIPs up
        about a second before its session expired (T = 3 s).
        """
        rounds = HeartbeatRounds()
        round_epoch = self._epoch
        with self._cond:
            while not self._stopping:
                now = self.monotonic()
                for event in self._drain(self._kazoo_events):
                    if isinstance(event, _Negotiated):
                        # A connect response comes just before its CONNECTED.
                        self._connect_proof = event
                    else:
                        self._apply_state(event)
                # As sparse as kazoo's own pings allow (round_interval): a
                # crashed session expires T after its last request.
                interval = round_interval(
                    self._lease.timeout, self._lease.margin, self._chain.report_lag
                )
                if round_epoch != self._epoch:
                    round_epoch = self._epoch
                    rounds.restart(now)
                for reply in self._drain(self._replies):
                    usable = self._apply_reply(reply)
                    rounds.answered(usable, reply.replied_at, now, self._chain.report_lag, interval)
                if self._lease.valid(now):
                    if self._lease_announced is LeaseState.EXPIRED:
                        self._announce_lease(LeaseState.VALID)
                elif self._lease_announced is LeaseState.VALID:
                    self._announce_lease(LeaseState.EXPIRED)
                # A heartbeat lost in a dropped connection is failed by kazoo;
                # giving up after T only guards against a reply that never comes.
                connected = self._state is ConnectionState.CONNECTED
                if connected and rounds.due(now, give_up=self._lease.timeout):
                    rounds.sent(now)
                    self._send_heartbeat(now)
                waits = [interval]
                if connected and rounds.in_flight_since is None:
                    waits.append(rounds.next_send - now)
                deadline = self._lease.deadline
                if self._lease_announced is LeaseState.VALID and deadline is not None:
                    waits.append(deadline - now)
                self._cond.wait(max(0.0, min(waits)))

    @staticmethod
    def _drain(items: list[Any]) -> list[Any]:
        taken = list(items)
        items.clear()
        return taken

    def _apply_reply(self, reply: _Reply) -> bool:
        """Turn an answered heartbeat into a proof (keeper thread, lock held).

        Returns False when the reply cannot join the chain (failed, or sent
        on an earlier connection or session).
        """
        if not reply.ok or reply.epoch != self._epoch or reply.session_id != self._session_id:
            return False  # failed, or sent on an earlier connection: proves nothing now
        if self._session_timeout_ms is None:
            return True  # no negotiated timeout, no lease (safety rule 6)
        proof = self._chain.answered(reply.sent_at, reply.replied_at)
        if proof is not None:
            self._lease.confirm(proof)
        return True

    def _apply_state(self, state: ConnectionState) -> None:
        """Handle one kazoo state change (keeper thread, lock held)."""
        # Every change of connection starts a new proof chain: a report from
        # one follower says nothing about requests sent through another.
        self._epoch += 1
        self._chain.reset()
        negotiated, self._connect_proof = self._connect_proof, None
        if state is ConnectionState.LOST:
            self._session_id = None
            self._lease.reset()
            if self._lease_announced is LeaseState.VALID:
                self._announce_lease(LeaseState.EXPIRED)
        elif state is ConnectionState.CONNECTED:
            cid = self._client.client_id if self._client is not None else None
            session_id = None if cid is None else int(cid[0])
            if session_id != self._session_id:
                if self._session_id is not None:
                    # The old session ended without a LOST we saw: its proof
                    # says nothing about the new one.
                    self._lease.reset()
                    if self._lease_announced is LeaseState.VALID:
                        self._announce_lease(LeaseState.EXPIRED)
                first = self._session_id is None and not self._had_session
                self._session_id = session_id
                self._session_timeout_ms = None
                self._had_session = True
                if not first and session_id is not None:
                    logger.warning(
                        "cluster %s: new ZooKeeper session %#x", self.cluster, session_id
                    )
                    self._post(self._session_listeners, session_id)
            self._apply_negotiated(negotiated)
        self._state = state
        logger.info(
            "cluster %s session %s: connection %s",
            self.cluster,
            _hex(self._session_id),
            state.value,
        )
        self._post(self._state_listeners, state)

    def _apply_negotiated(self, negotiated: _Negotiated | None) -> None:
        """Use a connect response: the timeout, and the proof it carries."""
        if negotiated is None or negotiated.timeout_ms <= 0:
            logger.error(
                "cluster %s: no negotiated session timeout seen for this connection; "
                "no lease until a connect response is read",
                self.cluster,
            )
            return
        ms = negotiated.timeout_ms
        if self._session_timeout_ms is None or ms < self._session_timeout_ms:
            self._session_timeout_ms = ms
        # The smallest timeout any server granted this session, and never more
        # than we asked for: a server that negotiated *up* still expires us
        # by its own value, which is larger, so ours stays on the safe side.
        timeout = min(self.session_timeout, self._session_timeout_ms / 1000.0)
        if timeout < self._lease.timeout:
            logger.warning(
                "cluster %s: the server granted a %.3f s session timeout (asked %.3f s)",
                self.cluster,
                timeout,
                self.session_timeout,
            )
            self._lease.shorten(timeout)
            if self.lease_margin is None:  # the default follows the timeout in force
                self._lease.margin = default_margin(timeout)
        self._chain.report_lag = self._report_lag(self._lease.timeout)
        # A server answers a connect only after the leader created the session
        # (a committed proposal) or revalidated it (the leader touches it),
        # both after the attempt began: the session lives until then + T.
        self._lease.confirm(negotiated.started)

    def _send_heartbeat(self, sent_at: float) -> None:
        session_id = self._session_id
        if self._client is None or session_id is None:
            return
        epoch = self._epoch
        try:
            # sync, not a read: a follower answers it only after the leader.
            result = self._client.sync_async("/")
        except Exception:  # the client is closing; the lease simply is not renewed
            logger.debug("heartbeat not sent", exc_info=True)
            return
        result.rawlink(lambda r: self._on_reply(sent_at, epoch, session_id, r))

    def _announce_lease(self, state: LeaseState) -> None:
        self._lease_announced = state
        logger.info(
            "cluster %s session %s: lease %s", self.cluster, _hex(self._session_id), state.value
        )
        self._post(self._lease_listeners, state, self._lease_dispatcher)

    def _post(
        self, listeners: list[Listener], value: object, dispatcher: Dispatcher | None = None
    ) -> None:
        dispatcher = dispatcher or self._dispatcher
        if dispatcher is not None:
            for listener in list(listeners):
                dispatcher.post(listener, value)


def _hex(session_id: int | None) -> str:
    return "-" if session_id is None else f"{session_id:#x}"
