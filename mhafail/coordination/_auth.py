"""ZooKeeper credentials and TLS settings: values, and reading them from files.

A process authenticates with one digest identity (``user:password``) and
knows the identities of both roles, so that every znode it creates carries
the cluster's ACL policy and so that it can tell a genuine cluster root
from a squatted one (docs/security.md). The credentials file::

    # /etc/mhafail/zk.auth  (mode 0600: refused when group or others can read it)
    credentials = mta:correct-horse-battery-staple
    operators = ops:2ZkyWbLHXRVx6t0P3Km91gB6zy0=
    nodes = mta:9xWjzz7EhZBFuVU5vfjYSl6CSKI=

``operators`` and ``nodes`` list digest ids (``user:base64(sha1(user:password))``,
printed by ``mhafail zk credentials``); they are not secret. The process's
role is the list its own identity is in. A file with ``credentials`` alone
is a single-identity cluster: that identity is both operator and node.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import os
import re
import secrets
import stat
from pathlib import Path

import attrs

from mhafail.errors import InvalidArgument

AUTH_ENV = "MHAFAIL_ZK_AUTH"
"""Environment variable naming the credentials file (``--zk-auth`` wins)."""

MAX_FILE_BYTES = 64 * 1024

_USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_ID_RE = re.compile(r"([A-Za-z0-9_.@-]{1,64}):([A-Za-z0-9+/]{27}=)")


class Role(enum.Enum):
    """What a process may do in a credentialed cluster.

    * ``NODE``: register, declare and claim VIPs, report config state; read
      everything else.
    * ``OPERATOR``: everything, including what only operators may do: move
      and drain VIPs, publish config, set config modes, run managers.
    """

    NODE = "node"
    OPERATOR = "operator"


def digest_id(user: str, password: str) -> str:
    """ZooKeeper's digest id for ``user:password``: ``user:base64(sha1(user:password))``."""
    # SHA-1 is ZooKeeper's digest scheme, not our choice.
    sha = hashlib.sha1(f"{user}:{password}".encode(), usedforsecurity=False).digest()
    return f"{user}:{base64.b64encode(sha).decode()}"


def _ids(value: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value))


@attrs.frozen
class Credentials:
    """One digest identity and the identities of both roles.

    Attributes:
        user: the digest user name (no ``:``).
        password: the password (never shown in ``repr``).
        operators: digest ids of the operator role; empty (with empty
            ``nodes``) means a single-identity cluster where this identity
            is both operator and node.
        nodes: digest ids of the node role.

    Raises:
        InvalidArgument: a malformed user, password or id, or an identity
            that is in neither role.
    """

    user: str
    password: str = attrs.field(repr=False)
    operators: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    nodes: tuple[str, ...] = attrs.field(default=(), converter=_ids)

    def __attrs_post_init__(self) -> None:
        if not _USER_RE.fullmatch(self.user):
            raise InvalidArgument(
                f"invalid ZooKeeper user {self.user!r}: use 1-64 characters from "
                "A-Z a-z 0-9 _ . @ -"
            )
        if not self.password or "\n" in self.password:
            raise InvalidArgument("invalid ZooKeeper credentials: the password is empty")
        for role, ids in (("operators", self.operators), ("nodes", self.nodes)):
            for ident in ids:
                if not _ID_RE.fullmatch(ident):
                    raise InvalidArgument(
                        f"invalid {role} id {ident!r}: expected user:BASE64 "
                        "(as printed by `mhafail zk credentials`)"
                    )
        if not self.operators and not self.nodes:
            object.__setattr__(self, "operators", (self.identity,))
            object.__setattr__(self, "nodes", (self.identity,))
        elif self.identity not in self.operators and self.identity not in self.nodes:
            raise InvalidArgument(
                f"ZooKeeper user {self.user!r}: its digest id is neither in 'operators' "
                "nor in 'nodes' (wrong password, or the role lists are out of date)"
            )

    @property
    def identity(self) -> str:
        """This identity's digest id."""
        return digest_id(self.user, self.password)

    @property
    def role(self) -> Role:
        """OPERATOR when this identity is an operator, else NODE."""
        return Role.OPERATOR if self.identity in self.operators else Role.NODE

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Credentials:
        """Read a credentials file (format in the module docstring).

        Raises:
            InvalidArgument: the file is missing, unreadable, group- or
                world-accessible, owned by another user, too large, or malformed.
        """
        text = read_private_file(path, "credentials file")
        fields: dict[str, str] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            key, sep, value = (part.strip() for part in line.partition("="))
            if not sep or key not in ("credentials", "operators", "nodes"):
                raise InvalidArgument(
                    f"credentials file {path}, line {number}: expected "
                    "'credentials = USER:PASSWORD', 'operators = IDS' or 'nodes = IDS'"
                )
            if key in fields:
                raise InvalidArgument(f"credentials file {path}, line {number}: {key} twice")
            fields[key] = value
        user, sep, password = fields.get("credentials", "").partition(":")
        if not sep:
            raise InvalidArgument(f"credentials file {path}: no 'credentials = USER:PASSWORD'")
        try:
            return cls(
                user=user,
                password=password,
                operators=_split(fields.get("operators", "")),
                nodes=_split(fields.get("nodes", "")),
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"credentials file {path}: {exc}") from exc

    def to_file_text(self) -> str:
        """The file form of these credentials (what :meth:`from_file` reads)."""
        return (
            "# mhafail ZooKeeper credentials: keep this file mode 0600\n"
            f"credentials = {self.user}:{self.password}\n"
            f"operators = {', '.join(self.operators)}\n"
            f"nodes = {', '.join(self.nodes)}\n"
        )


def write_credentials_pair(
    directory: str | os.PathLike[str],
    *,
    operator_user: str = "mhafail-operator",
    node_user: str = "mhafail-node",
) -> dict[Role, Path]:
    """Write ``operator.auth`` and ``node.auth`` with random passwords into ``directory``.

    Both files list both roles' ids; each holds its own role's password.
    Files are created mode 0600 and never overwritten.

    Returns:
        The path of each role's file.

    Raises:
        InvalidArgument: equal user names, bad names, or a file exists.
    """
    if operator_user == node_user:
        raise InvalidArgument("the operator and node users must differ")
    users = {Role.OPERATOR: operator_user, Role.NODE: node_user}
    passwords = {role: secrets.token_urlsafe(24) for role in users}
    ids = {role: digest_id(users[role], passwords[role]) for role in users}
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    written: dict[Role, Path] = {}
    for role in (Role.OPERATOR, Role.NODE):
        creds = Credentials(
            user=users[role],
            password=passwords[role],
            operators=(ids[Role.OPERATOR],),
            nodes=(ids[Role.NODE],),
        )
        path = folder / f"{role.value}.auth"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError as exc:
            raise InvalidArgument(f"{path} exists; not overwriting credentials") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(creds.to_file_text())
        written[role] = path
    return written


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def read_private_file(path: str | os.PathLike[str], what: str) -> str:
    """Read a small secret file that only its owner may read.

    Raises:
        InvalidArgument: missing or unreadable, not a regular file, readable
            or writable by group or others, owned by a user other than us or
            root, or larger than 64 KiB.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InvalidArgument(f"{what} {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"{what} {path}: not a regular file")
        if info.st_mode & 0o077:
            raise InvalidArgument(
                f"{what} {path}: mode {stat.S_IMODE(info.st_mode):04o} lets group or others "
                f"access it; run `chmod 600 {path}`"
            )
        if info.st_uid not in (os.geteuid(), 0):
            raise InvalidArgument(
                f"{what} {path}: owned by uid {info.st_uid}, not by us ({os.geteuid()}) or root"
            )
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgument(f"{what} {path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"{what} {path}: not UTF-8 text") from exc


@attrs.frozen
class TlsSettings:
    """TLS to ZooKeeper (the server's ``secureClientPort``).

    Attributes:
        ca: PEM file of the CA(s) that sign the servers' certificates; None
            uses the system's trust store.
        certfile: PEM client certificate, when the servers want one (mutual TLS).
        keyfile: PEM private key of ``certfile`` (must be mode 0600 or stricter).
        verify: check the servers' certificates (only tests turn this off).

    Raises:
        InvalidArgument: a file is missing, only one of certfile/keyfile is
            given, or the key file is readable by group or others.
    """

    ca: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    verify: bool = True

    def __attrs_post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise InvalidArgument("TLS to ZooKeeper: give both a client certificate and its key")
        for what, name in (("CA file", self.ca), ("certificate", self.certfile)):
            if name is not None and not Path(name).is_file():
                raise InvalidArgument(f"TLS to ZooKeeper: {what} {name} does not exist")
        if self.keyfile is not None:
            read_private_file(self.keyfile, "TLS key file")
