"""The exceptions mhafail raises.

Every error mhafail raises derives from :class:`MhafailError`; errors caused
by bad input also derive from :class:`ValueError` (as attrs does), so callers
that already catch ``ValueError`` keep working. No kazoo, pyroute2 or
GitPython exception ever reaches a caller: the adapters translate them.

::

    MhafailError
    ├── InvalidArgument (ValueError)        bad input: names, hosts strings, specs
    │   └── MalformedData                   shared data (a znode) failed its schema or caps
    ├── CoordinationError                   ZooKeeper-related
    │   ├── CoordinationUnavailable         cannot reach ZooKeeper: the answer is unknown
    │   │   ├── SessionLost                 the session is not live (expired or not yet new)
    │   │   └── PublishOutcomeUnknown       a config head CAS got no answer (also a ConfigError)
    │   ├── NodeNameTaken                   another live process holds this node name
    │   └── AccessDenied                    ZooKeeper ACLs refused the operation
    │       └── UnsafeAcl                   a znode on the cluster's path has a foreign ACL
    ├── VipError                            VIP ownership (mhafail.vip)
    │   ├── InvalidVipSpec (ValueError)     a VIP declaration or topology map is refused
    │   └── PlumbingError                   the kernel refused an address or announcement
    ├── TestingError                        the testing kit could not set something up
    │   └── ZooKeeperNotInstalled           no ZooKeeper jar found; says what to install
    ├── JlogError                           jlog journals (mhafail.jlog)
    │   ├── JlogInvalidArgument (ValueError)
    │   │   ├── JlogExists                  creating a jlog over an existing path
    │   │   ├── JlogSubscriberExists        adding a subscriber that already exists
    │   │   └── JlogUnknownSubscriber       naming a subscriber that does not exist
    │   ├── JlogClosed                      using a writer or reader after close()
    │   └── JlogCorrupt                     on-disk data does not parse; run repair()
    ├── AuditError                          audit series and CIDR queries (mhafail.audit)
    │   ├── AuditInvalidArgument (ValueError)
    │   ├── QuerySyntaxError (ValueError)   names the position and what was expected
    │   ├── UnknownSeries (LookupError)
    │   ├── SnapshotCorrupt             a snapshot file does not verify (magic, version, size, CRC)
    │   └── AuditProtocolError          a cluster-series peer sent a malformed or refused message
    ├── ConfigError                         git-backed cluster configuration (mhafail.config)
    │   ├── InvalidChange (ValueError)      a change set, path, sha or option is refused
    │   ├── ValidationFailed (ValueError)   validators rejected a tree; ``problems`` lists why
    │   ├── HeadConflict                    the published head moved; pull (or rebase) and retry
    │   ├── FetchFailed                     no peer could provide a published commit
    │   ├── NotReplicated                   too few nodes fetched a commit: not published
    │   └── RepositoryError                 the local git repository failed (git's message inside)
    ├── LogsError                           log aggregation (mhafail.logs)
    │   ├── LogsInvalidArgument (ValueError) a log name, pattern, address or option is refused
    │   ├── ProtocolError                   a peer sent a malformed, oversized or unexpected frame
    │   ├── AuthenticationFailed            the shared-secret challenge failed (either side)
    │   ├── StreamRefused                   the node refused a request; ``reason`` says why
    │   └── ManagerNameTaken                another live manager is registered under this name
    ├── ChannelError                        the authenticated channel (mhafail.channel)
    │   ├── ChannelInvalidArgument (ValueError) a secret, secret file, endpoint or TLS setting
    │   ├── ChannelClosed                   the peer closed, reset or went silent too long
    │   ├── ChannelProtocolError            a malformed, oversized, forged or replayed frame
    │   └── ChannelAuthFailed               the handshake failed: wrong or missing secret
    ├── CommandError                        command delegation (mhafail.commands)
    │   ├── CommandInvalidArgument (ValueError) a command name, argument, schema or selector
    │   └── UnknownRequest (LookupError)    no request with that id (never sent, or collected)
    ├── SpoolError                          per-node spools (mhafail.spool); has ``smtp_reply``
    │   ├── SpoolInvalidArgument (ValueError) a bad envelope, id, name or option (501)
    │   │   └── MessageTooLarge             over the spool's size cap (552)
    │   ├── UnknownMessage (LookupError)    no message with that id in this spool
    │   ├── SpoolWriteFailed                disk full, unwritable, I/O: nothing written (451/452)
    │   ├── SpoolFenced                     the lease ran out or the token is stale (421)
    │   └── SpoolPathConflict               the root is another cluster's, or the name is bound
    └── ConsoleError                        the cluster console (mhafail.console)
        └── ConsoleInvalidArgument (ValueError) a listen address, users file, TLS or option

Components that arrive later add their own subtree here, next to the
others, and extend this drawing.
"""

from __future__ import annotations


class MhafailError(Exception):
    """Root of every exception mhafail raises."""


class InvalidArgument(MhafailError, ValueError):
    """An argument was refused; the message names the argument and the rule."""


class MalformedData(InvalidArgument):
    """Data another process wrote (a znode, a document) failed its schema or size caps.

    Readers skip and log such an entry; it is never fatal to a component.
    """


# --- coordination -----------------------------------------------------------


class CoordinationError(MhafailError):
    """Something went wrong talking to ZooKeeper."""


class CoordinationUnavailable(CoordinationError):
    """ZooKeeper cannot be reached now, so the answer is not known.

    "No" answers are never expressed with this exception: a method that can
    say no returns ``False`` (docs/coordination.md).
    """


class SessionLost(CoordinationUnavailable):
    """The ZooKeeper session expired; ephemeral state held in it is gone."""


class NodeNameTaken(CoordinationError):
    """Another live process is registered under the same node name."""


class AccessDenied(CoordinationError):
    """ZooKeeper's ACLs refused the operation (wrong or missing credentials)."""


class UnsafeAcl(AccessDenied):
    """A znode on the cluster's path carries an ACL outside the cluster's policy.

    Raised at start instead of joining a cluster root that someone else
    created (squatting) or that is open to everyone; the message names the
    znode, the ACL found and the one expected.
    """


# --- vip --------------------------------------------------------------------


class VipError(MhafailError):
    """A VIP ownership operation failed."""


class InvalidVipSpec(VipError, ValueError):
    """A VIP declaration, topology map or operation is refused; the message says why."""


class PlumbingError(VipError):
    """The kernel refused to add or remove an address, or to send an announcement."""


# --- testing kit ------------------------------------------------------------


class TestingError(MhafailError):
    """The testing kit could not set up a server, host or fault."""

    __test__ = False  # not a pytest test class, despite the name


class ZooKeeperNotInstalled(TestingError):
    """No ZooKeeper jar was found; the message says what to install."""


# --- jlog -------------------------------------------------------------------


class JlogError(MhafailError):
    """A jlog journal operation failed."""


class JlogInvalidArgument(JlogError, ValueError):
    """A jlog argument was refused (bad subscriber name, existing jlog, ...)."""


class JlogCorrupt(JlogError):
    """A jlog's on-disk data does not parse; ``repair()`` can fix it."""


class JlogExists(JlogInvalidArgument):
    """``create()`` was pointed at a path that already exists (it never resets one)."""


class JlogSubscriberExists(JlogInvalidArgument):
    """A subscriber of that name already has a checkpoint in this jlog."""


class JlogUnknownSubscriber(JlogInvalidArgument):
    """No subscriber of that name exists in this jlog."""


class JlogClosed(JlogError):
    """A jlog writer or reader was used after ``close()``."""


# --- audit ------------------------------------------------------------------


class AuditError(MhafailError):
    """An audit series or CIDR query operation failed."""


class AuditInvalidArgument(AuditError, ValueError):
    """An audit argument was refused (malformed CIDR, bad window, ...)."""


class QuerySyntaxError(AuditError, ValueError):
    """A CIDR query does not parse.

    Attributes:
        position: 0-based character offset where parsing failed.
        expected: what the parser expected there.
    """

    def __init__(self, message: str, *, position: int, expected: str) -> None:
        super().__init__(f"{message} at position {position}: expected {expected}")
        self.position = position
        self.expected = expected


class UnknownSeries(AuditError, LookupError):
    """A query named an audit series that does not exist."""


class SnapshotCorrupt(AuditError):
    """An audit snapshot file does not verify: bad magic, version, size or checksum."""


class AuditProtocolError(AuditError):
    """A cluster-series peer sent a malformed frame or message, or refused ours."""


# --- config -----------------------------------------------------------------


class ConfigError(MhafailError):
    """A config repository operation failed (mhafail.config)."""


class InvalidChange(ConfigError, ValueError):
    """A change set, path, sha or option was refused; the message names the rule."""


class ValidationFailed(ConfigError, ValueError):
    """Validators rejected a config tree; nothing was published or applied.

    Attributes:
        problems: one line per problem, ``path: what is wrong`` where a path is known.
    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        detail = "; ".join(problems)
        super().__init__(f"{message}: {detail}" if detail else message)
        self.problems = problems


class HeadConflict(ConfigError):
    """The published head is not the commit this change was based on.

    Attributes:
        head: the sha currently published (None when nothing is).
        paths: files changed on both sides, when a rebase was attempted.
    """

    def __init__(self, message: str, *, head: str | None, paths: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.head = head
        self.paths = paths


class FetchFailed(ConfigError):
    """No peer could provide a published commit; the message lists each attempt."""


class NotReplicated(ConfigError):
    """Too few other nodes held a commit in time; it was not published.

    Attributes:
        sha: the commit that was not published.
        holders: the nodes that did hold it.
    """

    def __init__(self, message: str, *, sha: str, holders: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.sha = sha
        self.holders = holders


class PublishOutcomeUnknown(CoordinationUnavailable, ConfigError):
    """A head compare-and-set got no answer and ZooKeeper stayed away: published or not?

    Raised only when the request reached the connection and no read could
    settle the outcome within the call's bound; the message names the sha
    and what ``config status`` shows in either case.

    Attributes:
        sha: the commit whose publication is unknown.
    """

    def __init__(self, message: str, *, sha: str) -> None:
        super().__init__(message)
        self.sha = sha


class RepositoryError(ConfigError):
    """The local git repository could not do what was asked (git's message inside)."""


# --- logs -------------------------------------------------------------------


class LogsError(MhafailError):
    """A log aggregation operation failed (mhafail.logs)."""


class LogsInvalidArgument(LogsError, ValueError):
    """A log aggregation argument was refused; the message names it and the rule."""


class ProtocolError(LogsError):
    """A peer broke the log protocol: malformed, oversized or unexpected frame."""


class AuthenticationFailed(LogsError):
    """The shared-secret challenge failed, or one side required auth the other lacks."""


class StreamRefused(LogsError):
    """A node refused a request (unknown log or subscriber, bad position, ...).

    Attributes:
        reason: the node's reason, as sent in its ERROR frame.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"node refused: {reason}")
        self.reason = reason


class ManagerNameTaken(LogsError):
    """Another live process is registered under ``managers/<name>``."""


# --- channel ----------------------------------------------------------------


class ChannelError(MhafailError):
    """The authenticated channel (mhafail.channel) failed; the connection is closed."""


class ChannelInvalidArgument(ChannelError, ValueError):
    """A channel setting was refused: secret, secret file, endpoint, TLS or limits."""


class ChannelClosed(ChannelError):
    """The peer closed or reset the connection, or sent nothing within a timeout."""


class ChannelProtocolError(ChannelError):
    """The peer sent a malformed, oversized, forged, replayed or reordered frame."""


class ChannelAuthFailed(ChannelError):
    """The handshake failed: wrong secret, one side lacks one, or the peer refused us."""


# --- commands ---------------------------------------------------------------


class CommandError(MhafailError):
    """A command delegation operation failed (mhafail.commands)."""


class CommandInvalidArgument(CommandError, ValueError):
    """A command name, argument, schema, target or selector was refused; the message says why."""


class UnknownRequest(CommandError, LookupError):
    """No command request with that id exists (never sent, collected, or expired)."""


# --- spool ------------------------------------------------------------------


class SpoolError(MhafailError):
    """A per-node spool operation failed (mhafail.spool).

    ``smtp_reply`` is the SMTP reply an MTA should give its client for this
    failure: 4xx when the client should retry later, 5xx when it should not.
    """

    smtp_reply = "451 4.3.0 Temporary spool failure, try again later"


class SpoolInvalidArgument(SpoolError, ValueError):
    """A bad envelope, message id, node name or option; retrying will not help."""

    smtp_reply = "501 5.5.4 Invalid envelope"


class MessageTooLarge(SpoolInvalidArgument):
    """The message is larger than the spool accepts."""

    smtp_reply = "552 5.3.4 Message too big for system"


class UnknownMessage(SpoolError, LookupError):
    """No message with that id is in this spool (delivered, taken over, or never there)."""


class SpoolWriteFailed(SpoolError):
    """The spool could not write durably (disk full, unwritable, I/O error).

    Nothing was half-written and nothing was acknowledged: the client retries.
    """


class SpoolFenced(SpoolError):
    """This process no longer holds its spool: the lease ran out or the token is stale.

    Stop accepting mail (answer 421) and stop delivering; nothing is changed.
    """

    smtp_reply = "421 4.3.0 Service not available, closing transmission channel"


class SpoolPathConflict(SpoolError):
    """The shared root belongs to another cluster, or the node name is bound elsewhere."""


# --- console ----------------------------------------------------------------


class ConsoleError(MhafailError):
    """The cluster console (mhafail.console) could not start or serve."""


class ConsoleInvalidArgument(ConsoleError, ValueError):
    """A console setting was refused: listen address, users file, TLS files or an option."""
