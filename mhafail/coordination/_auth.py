"""ZooKeeper credentials and TLS settings: values, and reading them from files.

A process authenticates with one identity, ZooKeeper digest auth
(``user:password``) or SASL (DIGEST-MD5 or GSSAPI), and knows the identities
of both roles, so that every znode it creates carries the cluster's ACL
policy and so that it can tell a genuine cluster root from a squatted one
(docs/security.md). The credentials file::

    # /etc/mhafail/zk.auth  (mode 0600: refused when group or others can read it)
    credentials = mta:correct-horse-battery-staple
    operators = ops:2ZkyWbLHXRVx6t0P3Km91gB6zy0=
    nodes = mta:9xWjzz7EhZBFuVU5vfjYSl6CSKI=

or, with SASL (the ZooKeeper servers' JAAS ``Server`` section knows the
users; exactly one of ``credentials`` and ``sasl``)::

    sasl = DIGEST-MD5 mta:correct-horse-battery-staple
    operators = sasl:ops:2ZkyWbLHXRVx6t0P3Km91gB6zy0=
    nodes = sasl:mta:9xWjzz7EhZBFuVU5vfjYSl6CSKI=

    sasl = GSSAPI mta/host1.example.com@EXAMPLE.COM   # Kerberos: no password

``operators`` and ``nodes`` list role ids, printed by ``mhafail zk
credentials``; they are not secret, and a list may mix both kinds:

* a digest id, ``user:base64(sha1(user:password))``: ACL id ``digest:<it>``;
* a SASL id, ``sasl:NAME[:KEY]``: ACL id ``sasl:NAME`` (what ZooKeeper's
  SASLAuthenticationProvider sees: the DIGEST-MD5 user, or the Kerberos
  principal as the servers' ``kerberos.remove*FromPrincipal`` settings
  leave it). KEY never reaches ZooKeeper: it keys the cluster root's proof
  (``_root``), so nodes can tell their operators' root from a squatter's
  who knows only the public name. A DIGEST-MD5 identity's KEY is required
  and is ``base64(sha1(NAME:password))``, so a wrong password is caught
  before connecting; a GSSAPI id's KEY is optional (any random value of
  that form, the same in every file).

The process's role is the list its own identity is in. A file with
``credentials`` (or ``sasl``) alone is a single-identity cluster: that
identity is both operator and node.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import importlib.util
import os
import re
import secrets
import stat
from pathlib import Path
from typing import Any

import attrs

from mhafail.errors import InvalidArgument

AUTH_ENV = "MHAFAIL_ZK_AUTH"
"""Environment variable naming the credentials file (``--zk-auth`` wins)."""

MAX_FILE_BYTES = 64 * 1024

_USER_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_ID_RE = re.compile(r"([A-Za-z0-9_.@-]{1,64}):([A-Za-z0-9+/]{27}=)")
# Kerberos principals add "/" (service/host@REALM).
_PRINCIPAL_RE = re.compile(r"[A-Za-z0-9_.@/-]{1,255}")
_SASL_ID_RE = re.compile(r"sasl:([A-Za-z0-9_.@/-]{1,255})(?::([A-Za-z0-9+/]{27}=))?")

# JAAS option names (user_<name>) are tokens of the login-config grammar.
_JAAS_USER_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")

SASL_MECHANISMS = ("DIGEST-MD5", "GSSAPI")
"""The SASL mechanisms kazoo (through pure-sasl) speaks to ZooKeeper."""


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


def sasl_id(user: str, password: str) -> str:
    """The role id of a SASL DIGEST-MD5 identity: ``sasl:user:base64(sha1(user:password))``."""
    return f"sasl:{digest_id(user, password)}"


def sasl_name(ident: str) -> str | None:
    """The SASL name of a role id (``sasl:NAME[:KEY]``), or None for a digest id."""
    if not ident.startswith("sasl:"):
        return None
    return ident[len("sasl:") :].partition(":")[0]


def _ids(value: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(value))


@attrs.frozen
class Credentials:
    """One identity (digest or SASL) and the identities of both roles.

    Attributes:
        user: the digest or SASL DIGEST-MD5 user name (no ``:``), or the
            Kerberos principal for GSSAPI.
        password: the password (never shown in ``repr``); empty for GSSAPI,
            whose ticket cache or keytab proves the identity.
        operators: role ids of the operator role (digest or SASL ids, see
            the module docstring); empty (with empty ``nodes``) means a
            single-identity cluster where this identity is both operator
            and node.
        nodes: role ids of the node role.
        sasl: None for ZooKeeper digest auth, else the SASL mechanism
            (``"DIGEST-MD5"`` or ``"GSSAPI"``; needs the ``sasl`` extra,
            pure-sasl, and for GSSAPI a Kerberos ticket).

    Raises:
        InvalidArgument: a malformed user, password, id or mechanism, or an
            identity that is in neither role.
    """

    user: str
    password: str = attrs.field(default="", repr=False)
    operators: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    nodes: tuple[str, ...] = attrs.field(default=(), converter=_ids)
    sasl: str | None = None

    def __attrs_post_init__(self) -> None:
        self._check_identity()
        for role, ids in (("operators", self.operators), ("nodes", self.nodes)):
            for ident in ids:
                if not (_ID_RE.fullmatch(ident) or _SASL_ID_RE.fullmatch(ident)):
                    raise InvalidArgument(
                        f"invalid {role} id {ident!r}: expected user:BASE64 or "
                        "sasl:NAME[:BASE64] (as printed by `mhafail zk credentials`)"
                    )
        if not self.operators and not self.nodes:
            object.__setattr__(self, "operators", (self.identity,))
            object.__setattr__(self, "nodes", (self.identity,))
        elif self.identity not in self.operators and self.identity not in self.nodes:
            raise InvalidArgument(
                f"ZooKeeper user {self.user!r}: its id ({self._shown_identity}) is neither "
                "in 'operators' nor in 'nodes' (wrong password, or the role lists are out "
                "of date)"
            )

    def _check_identity(self) -> None:
        if self.sasl not in (None, *SASL_MECHANISMS):
            raise InvalidArgument(
                f"unknown SASL mechanism {self.sasl!r}: use {' or '.join(SASL_MECHANISMS)}"
            )
        if self.sasl == "GSSAPI":
            if not _PRINCIPAL_RE.fullmatch(self.user):
                raise InvalidArgument(
                    f"invalid Kerberos principal {self.user!r}: use 1-255 characters from "
                    "A-Z a-z 0-9 _ . @ / -"
                )
            if self.password:
                raise InvalidArgument(
                    "GSSAPI takes no password: the Kerberos ticket cache or keytab "
                    "proves the identity"
                )
            return
        if not _USER_RE.fullmatch(self.user):
            raise InvalidArgument(
                f"invalid ZooKeeper user {self.user!r}: use 1-64 characters from "
                "A-Z a-z 0-9 _ . @ -"
            )
        if not self.password or "\n" in self.password:
            raise InvalidArgument("invalid ZooKeeper credentials: the password is empty")

    @property
    def identity(self) -> str:
        """This identity's role id (digest id, or ``sasl:NAME[:KEY]``)."""
        if self.sasl is None:
            return digest_id(self.user, self.password)
        if self.sasl == "DIGEST-MD5":
            return sasl_id(self.user, self.password)
        # GSSAPI: no password to derive a KEY from; the listed id of our
        # principal (with whatever KEY it carries) is ours.
        for ident in (*self.operators, *self.nodes):
            if sasl_name(ident) == self.user:
                return ident
        return f"sasl:{self.user}"

    @property
    def _shown_identity(self) -> str:
        # The KEY is derived from the password: show only its start.
        ident = self.identity
        return ident if self.sasl == "GSSAPI" else f"{ident[: ident.rindex(':') + 5]}…"

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
            if not sep or key not in ("credentials", "sasl", "operators", "nodes"):
                raise InvalidArgument(
                    f"credentials file {path}, line {number}: expected "
                    "'credentials = USER:PASSWORD', 'sasl = MECHANISM ...', 'operators = IDS' "
                    "or 'nodes = IDS'"
                )
            if key in fields:
                raise InvalidArgument(f"credentials file {path}, line {number}: {key} twice")
            fields[key] = value
        if "credentials" in fields and "sasl" in fields:
            raise InvalidArgument(
                f"credentials file {path}: give 'credentials' (digest) or 'sasl', not both"
            )
        if "sasl" in fields:
            mechanism, user, password = _parse_sasl(path, fields["sasl"])
        else:
            mechanism = None
            user, sep, password = fields.get("credentials", "").partition(":")
            if not sep:
                raise InvalidArgument(
                    f"credentials file {path}: no 'credentials = USER:PASSWORD' "
                    "(or 'sasl = DIGEST-MD5 USER:PASSWORD', 'sasl = GSSAPI PRINCIPAL')"
                )
        try:
            return cls(
                user=user,
                password=password,
                operators=_split(fields.get("operators", "")),
                nodes=_split(fields.get("nodes", "")),
                sasl=mechanism,
            )
        except InvalidArgument as exc:
            raise InvalidArgument(f"credentials file {path}: {exc}") from exc

    def to_file_text(self) -> str:
        """The file form of these credentials (what :meth:`from_file` reads)."""
        if self.sasl is None:
            login = f"credentials = {self.user}:{self.password}"
        elif self.sasl == "GSSAPI":
            login = f"sasl = GSSAPI {self.user}"
        else:
            login = f"sasl = {self.sasl} {self.user}:{self.password}"
        return (
            "# mhafail ZooKeeper credentials: keep this file mode 0600\n"
            f"{login}\n"
            f"operators = {', '.join(self.operators)}\n"
            f"nodes = {', '.join(self.nodes)}\n"
        )


def write_credentials_pair(
    directory: str | os.PathLike[str],
    *,
    operator_user: str = "mhafail-operator",
    node_user: str = "mhafail-node",
    sasl: bool = False,
) -> dict[Role, Path]:
    """Write ``operator.auth`` and ``node.auth`` with random passwords into ``directory``.

    Both files list both roles' ids; each holds its own role's password.
    With ``sasl``, the identities are SASL DIGEST-MD5 ones and
    ``zookeeper-jaas.conf`` (the ``Server`` section every ZooKeeper server
    needs, see :func:`jaas_server_section`) is written too. Files are
    created mode 0600 and never overwritten.

    Returns:
        The path of each role's file.

    Raises:
        InvalidArgument: equal user names, bad names, or a file exists.
    """
    if operator_user == node_user:
        raise InvalidArgument("the operator and node users must differ")
    users = {Role.OPERATOR: operator_user, Role.NODE: node_user}
    passwords = {role: secrets.token_urlsafe(24) for role in users}
    make_id = sasl_id if sasl else digest_id
    ids = {role: make_id(users[role], passwords[role]) for role in users}
    files = {
        f"{role.value}.auth": Credentials(
            user=users[role],
            password=passwords[role],
            operators=(ids[Role.OPERATOR],),
            nodes=(ids[Role.NODE],),
            sasl="DIGEST-MD5" if sasl else None,
        ).to_file_text()
        for role in (Role.OPERATOR, Role.NODE)
    }
    if sasl:
        files["zookeeper-jaas.conf"] = jaas_server_section(
            {users[role]: passwords[role] for role in users}
        )
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in files:
        if (folder / name).exists():
            raise InvalidArgument(f"{folder / name} exists; not overwriting credentials")
    for name, text in files.items():
        path = folder / name
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError as exc:
            raise InvalidArgument(f"{path} exists; not overwriting credentials") from exc
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    return {role: folder / f"{role.value}.auth" for role in (Role.OPERATOR, Role.NODE)}


def jaas_server_section(users: dict[str, str]) -> str:
    """The JAAS ``Server`` section that lets ZooKeeper check SASL DIGEST-MD5 logins.

    Each server reads it through ``-Djava.security.auth.login.config=FILE``
    (and needs ``authProvider.1=org.apache.zookeeper.server.auth.SASLAuthenticationProvider``
    in ``zoo.cfg``). It holds the passwords in clear: keep it mode 0600.

    Args:
        users: user name -> password.

    Raises:
        InvalidArgument: a user name or password JAAS cannot carry.
    """
    lines = ["Server {", "    org.apache.zookeeper.server.auth.DigestLoginModule required"]
    for user, password in users.items():
        if not _JAAS_USER_RE.fullmatch(user) or any(c in password for c in '"\\\n'):
            raise InvalidArgument(f"JAAS cannot carry the user {user!r} or its password")
        lines.append(f'    user_{user}="{password}"')
    return "\n".join(lines) + ";\n};\n"


def _parse_sasl(path: str | os.PathLike[str], value: str) -> tuple[str, str, str]:
    """``MECHANISM USER:PASSWORD`` (DIGEST-MD5) or ``GSSAPI PRINCIPAL``."""
    mechanism, _, rest = value.partition(" ")
    rest = rest.strip()
    if mechanism == "GSSAPI" and rest:
        return mechanism, rest, ""
    user, sep, password = rest.partition(":")
    if mechanism == "DIGEST-MD5" and sep:
        return mechanism, user, password
    raise InvalidArgument(
        f"credentials file {path}: expected 'sasl = DIGEST-MD5 USER:PASSWORD' or "
        f"'sasl = GSSAPI PRINCIPAL', not 'sasl = {mechanism} …'"
    )


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


def coerce_credentials(value: Credentials | tuple[str, str] | None) -> Credentials | None:
    """A Coordinator's ``credentials``: a ``(user, password)`` pair is a single-identity cluster.

    Raises:
        InvalidArgument: malformed credentials, or SASL ones without pure-sasl.
    """
    if isinstance(value, Credentials):
        if value.sasl is not None and importlib.util.find_spec("puresasl") is None:
            raise InvalidArgument(
                f"SASL ({value.sasl}) credentials need the pure-sasl package: "
                "pip install 'mhafail[sasl]'"
            )
        return value
    if value is None:
        return value
    user, password = value
    try:
        return Credentials(user=user, password=password)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid credentials: {exc}") from exc


def client_options(credentials: Credentials | None, tls: TlsSettings | None) -> dict[str, Any]:
    """The login and TLS keyword arguments of ``kazoo.client.KazooClient``.

    Digest credentials go in ``auth_data`` (sent after every connect), SASL
    ones in ``sasl_options`` (pure-sasl runs the exchange on every connect,
    before any request); ``tls`` sets ``use_ssl`` and the certificate files.
    """
    options: dict[str, Any] = {"auth_data": None, "sasl_options": None}
    if credentials is not None and credentials.sasl == "GSSAPI":
        options["sasl_options"] = {"mechanism": "GSSAPI", "principal": credentials.user}
    elif credentials is not None and credentials.sasl is not None:
        options["sasl_options"] = {
            "mechanism": credentials.sasl,
            "username": credentials.user,
            "password": credentials.password,
        }
    elif credentials is not None:
        options["auth_data"] = [("digest", f"{credentials.user}:{credentials.password}")]
    if tls is not None:
        options.update(
            use_ssl=True,
            verify_certs=tls.verify,
            ca=tls.ca,
            certfile=tls.certfile,
            keyfile=tls.keyfile,
        )
    return options
