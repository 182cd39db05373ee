"""Who may use the console: users, roles, sessions, CSRF tokens and login throttling.

Users log in with a ZooKeeper digest identity (``user`` and ``password``),
the same identities and roles as the cluster (docs/security.md): the
console computes ``digest_id(user, password)`` and looks it up. An id in
the ``operators`` list gets the **operator** role (every page, every
action); an id in ``nodes`` or ``readers`` gets the **reader** role (every
page, no action). The console never stores a password.

Sessions live in the memory of one console process: a 256-bit random
token in a cookie (``HttpOnly``, ``SameSite=Strict``, ``Secure``), idle
after 30 minutes, expired after 12 hours, and a separate random CSRF
token that every state-changing request must echo in ``X-CSRF-Token``.
A console that dies takes its sessions with it: log in again on the
console beside another manager.
"""

from __future__ import annotations

import enum
import hmac
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import attrs

from mhafail.coordination import Credentials
from mhafail.coordination._auth import digest_id, read_private_file
from mhafail.errors import ConsoleInvalidArgument, InvalidArgument

IDLE_TIMEOUT = 30 * 60.0
MAX_AGE = 12 * 3600.0
MAX_SESSIONS = 1000
MAX_FAILURES = 5
"""Failed logins from one client address within FAILURE_WINDOW before it must wait."""
FAILURE_WINDOW = 60.0


def _ids(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


class ConsoleRole(enum.Enum):
    """What a logged-in user may do.

    * ``OPERATOR``: see everything and act (move, drain, pull, roll back, send).
    * ``READER``: see everything; every action is refused (403) and the
      pages show no action buttons.
    """

    OPERATOR = "operator"
    READER = "reader"


@attrs.frozen
class Users:
    """The digest ids allowed to log in, with their roles.

    Attributes:
        operators: digest ids (``user:BASE64``) with the operator role.
        readers: digest ids with the read-only role.
    """

    operators: frozenset[str] = attrs.field(default=frozenset(), converter=_ids)
    readers: frozenset[str] = attrs.field(default=frozenset(), converter=_ids)

    @classmethod
    def from_credentials(cls, credentials: Credentials) -> Users:
        """The cluster's roles: ZooKeeper operators are operators, nodes are readers."""
        return cls(operators=credentials.operators, readers=credentials.nodes)

    @classmethod
    def from_passwords(
        cls, operators: Mapping[str, str] = {}, readers: Mapping[str, str] = {}
    ) -> Users:
        """Users from ``user -> password`` maps (tests and embedded use)."""
        return cls(
            operators=[digest_id(u, p) for u, p in operators.items()],
            readers=[digest_id(u, p) for u, p in readers.items()],
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Users:
        """Read a users file: ``operators = IDS`` and ``readers = IDS`` lines (mode 0600).

        A ZooKeeper credentials file is accepted too: its ``operators`` are
        operators and its ``nodes`` are readers; ``credentials`` is ignored.

        Raises:
            ConsoleInvalidArgument: unreadable, group- or world-accessible,
                malformed, or without any id.
        """
        try:
            text = read_private_file(path, "console users file")
        except InvalidArgument as exc:
            raise ConsoleInvalidArgument(str(exc)) from None
        fields: dict[str, list[str]] = {"operators": [], "readers": []}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = (part.strip() for part in line.partition("="))
            if key == "nodes":
                key = "readers"
            if key in ("credentials", "sasl"):
                continue
            if not sep or key not in fields:
                raise ConsoleInvalidArgument(
                    f"console users file {path}, line {number}: expected "
                    "'operators = IDS' or 'readers = IDS'"
                )
            fields[key] += [part.strip() for part in value.split(",") if part.strip()]
        for ident in fields["operators"] + fields["readers"]:
            _check_id(ident, f"console users file {path}")
        if not fields["operators"] and not fields["readers"]:
            raise ConsoleInvalidArgument(f"console users file {path}: no operators or readers")
        return cls(operators=fields["operators"], readers=fields["readers"])

    def __or__(self, other: Users) -> Users:
        return Users(
            operators=self.operators | other.operators, readers=self.readers | other.readers
        )

    def role_of(self, user: str, password: str) -> ConsoleRole | None:
        """The role of ``user`` with ``password``, or None when they do not match.

        Compares in constant time against every known id, so the time taken
        does not tell which ids exist.
        """
        if not user or not password or len(user) > 64 or len(password) > 256 or ":" in user:
            return None
        ident = digest_id(user, password)
        # A SASL DIGEST-MD5 identity's id is the same digest behind "sasl:".
        candidates = (ident.encode(), f"sasl:{ident}".encode())
        found: ConsoleRole | None = None
        for role, ids in (
            (ConsoleRole.READER, self.readers),
            (ConsoleRole.OPERATOR, self.operators),
        ):
            for known in ids:
                for candidate in candidates:
                    if hmac.compare_digest(known.encode(), candidate):
                        found = role  # operator wins when an id is in both lists
        return found


def _check_id(ident: str, where: str) -> None:
    user, sep, digest = ident.removeprefix("sasl:").partition(":")
    if not sep or not user or len(digest) != 28 or not digest.endswith("="):
        raise ConsoleInvalidArgument(
            f"{where}: invalid id {ident!r}: expected user:BASE64 "
            "(as printed by `mhafail zk credentials`)"
        )


@attrs.frozen
class Session:
    """One logged-in browser.

    Attributes:
        token: the cookie value (secret).
        csrf: the token state-changing requests must echo (secret).
        user: the user name.
        role: the user's role.
        created: monotonic time of login.
    """

    token: str = attrs.field(repr=False)
    csrf: str = attrs.field(repr=False)
    user: str
    role: ConsoleRole
    created: float

    def check_csrf(self, value: str | None) -> bool:
        """True when ``value`` is this session's CSRF token (constant-time)."""
        return value is not None and hmac.compare_digest(value.encode(), self.csrf.encode())


@attrs.define(kw_only=True, eq=False)
class Sessions:
    """The live sessions of one console, and the login throttle.

    Args:
        idle_timeout: seconds without a request after which a session ends.
        max_age: seconds after login after which a session ends.
        clock: monotonic clock.

    Thread safety: every method may be called from any thread.
    """

    idle_timeout: float = IDLE_TIMEOUT
    max_age: float = MAX_AGE
    clock: Callable[[], float] = time.monotonic
    _sessions: dict[str, tuple[Session, float]] = attrs.field(init=False, factory=dict)
    _failures: dict[str, list[float]] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def create(self, user: str, role: ConsoleRole) -> Session:
        """Start a session for a user who just proved their password."""
        now = self.clock()
        session = Session(
            token=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            user=user,
            role=role,
            created=now,
        )
        with self._lock:
            self._expire(now)
            if len(self._sessions) >= MAX_SESSIONS:
                # Drop the least recently used rather than refuse the newest login.
                oldest = min(self._sessions, key=lambda t: self._sessions[t][1])
                del self._sessions[oldest]
            self._sessions[session.token] = (session, now)
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session for ``token`` (and mark it used), or None."""
        if not token:
            return None
        now = self.clock()
        with self._lock:
            self._expire(now)
            entry = self._sessions.get(token)
            if entry is None:
                return None
            self._sessions[token] = (entry[0], now)
            return entry[0]

    def end(self, token: str | None) -> None:
        """End the session (logout); unknown tokens are ignored."""
        with self._lock:
            self._sessions.pop(token or "", None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expire(self, now: float) -> None:
        dead = [
            token
            for token, (session, used) in self._sessions.items()
            if now - used > self.idle_timeout or now - session.created > self.max_age
        ]
        for token in dead:
            del self._sessions[token]

    # --- login throttle --------------------------------------------------------

    def throttled(self, client: str) -> float:
        """Seconds ``client`` must wait before trying to log in again (0: may try)."""
        now = self.clock()
        with self._lock:
            recent = [t for t in self._failures.get(client, []) if now - t < FAILURE_WINDOW]
            self._failures[client] = recent
            if len(recent) < MAX_FAILURES:
                return 0.0
            return FAILURE_WINDOW - (now - recent[-MAX_FAILURES])

    def failed(self, client: str) -> None:
        """Count a failed login from ``client``."""
        with self._lock:
            if len(self._failures) > 10000:
                self._failures.clear()  # bounded memory under a spray of addresses
            self._failures.setdefault(client, []).append(self.clock())

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s failures."""
        with self._lock:
            self._failures.pop(client, None)


def users_for(credentials: Credentials | None, extra: Iterable[Users] = ()) -> Users:
    """The cluster's roles (when credentialed) plus any extra users."""
    users = Users() if credentials is None else Users.from_credentials(credentials)
    for more in extra:
        users = users | more
    return users
