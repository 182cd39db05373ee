"""The ZooKeeper flags every command shares: hosts, cluster, credentials, TLS.

Every command that talks to ZooKeeper takes the same security flags, from
here, and builds its coordinator's keyword arguments with
:func:`zk_security`:

* ``--zk-auth FILE`` (or ``$MHAFAIL_ZK_AUTH``): the credentials file
  (``mhafail.coordination.Credentials.from_file``: mode 0600, ``credentials
  = USER:PASSWORD`` for digest auth or ``sasl = DIGEST-MD5 USER:PASSWORD`` /
  ``sasl = GSSAPI PRINCIPAL`` for SASL, plus the ``operators`` and ``nodes``
  ids);
* ``--zk-open`` (or ``MHAFAIL_ZK_OPEN=1``): run without ACLs, an explicit
  choice that logs a warning; without credentials or this, commands refuse;
* ``--zk-tls-ca FILE``, ``--zk-tls-cert FILE``, ``--zk-tls-key FILE``
  (or ``$MHAFAIL_ZK_TLS_CA`` etc.), ``--zk-tls``: TLS to ZooKeeper.

Flags win over the environment.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from mhafail.errors import InvalidArgument

AUTH_ENV = "MHAFAIL_ZK_AUTH"
OPEN_ENV = "MHAFAIL_ZK_OPEN"
TLS_ENV = "MHAFAIL_ZK_TLS"
TLS_CA_ENV = "MHAFAIL_ZK_TLS_CA"
TLS_CERT_ENV = "MHAFAIL_ZK_TLS_CERT"
TLS_KEY_ENV = "MHAFAIL_ZK_TLS_KEY"

_TRUE = ("1", "true", "yes", "on")


def add_zk_flags(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """``--zk``, ``--cluster``, ``--connect-timeout`` and the security flags.

    Args:
        parser: the subcommand's parser.
        required: whether ``--zk`` and ``--cluster`` are required (commands
            that also read them from a config file pass False).
    """
    parser.add_argument(
        "--zk", required=required, metavar="HOSTS", help="ZooKeeper host:port[,...]"
    )
    parser.add_argument("--cluster", required=required, help="cluster name")
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for a first ZooKeeper session (default 5)",
    )
    add_zk_security_flags(parser)


def add_zk_security_flags(parser: argparse.ArgumentParser) -> None:
    """Only the credential and TLS flags (for parsers that define ``--zk`` themselves)."""
    group = parser.add_argument_group("ZooKeeper security (docs/security.md)")
    group.add_argument(
        "--zk-auth",
        metavar="FILE",
        default=None,
        help=f"credentials file, mode 0600 (default ${AUTH_ENV})",
    )
    group.add_argument(
        "--zk-open",
        action="store_true",
        default=None,
        help=f"run WITHOUT ZooKeeper ACLs: anyone reaching ZooKeeper controls the cluster "
        f"(or {OPEN_ENV}=1)",
    )
    group.add_argument(
        "--zk-tls", action="store_true", default=None, help=f"TLS to ZooKeeper (or {TLS_ENV}=1)"
    )
    group.add_argument(
        "--zk-tls-ca", metavar="FILE", help=f"CA certificates (PEM) for TLS (${TLS_CA_ENV})"
    )
    group.add_argument(
        "--zk-tls-cert", metavar="FILE", help=f"client certificate (PEM) (${TLS_CERT_ENV})"
    )
    group.add_argument(
        "--zk-tls-key", metavar="FILE", help=f"client key (PEM, mode 0600) (${TLS_KEY_ENV})"
    )


def zk_security(
    args: argparse.Namespace, environ: dict[str, str] | os._Environ[str] | None = None
) -> dict[str, Any]:
    """The ``credentials``/``open_acl``/``tls`` keyword arguments for a Coordinator.

    Raises:
        InvalidArgument: neither credentials nor ``--zk-open`` (the message
            says how to give either), both flags, or a bad credentials or
            TLS file.
    """
    from mhafail.coordination import Credentials, TlsSettings

    env = os.environ if environ is None else environ
    auth = getattr(args, "zk_auth", None)
    open_flag = getattr(args, "zk_open", None)
    if auth is not None and open_flag:
        raise InvalidArgument("give --zk-auth FILE or --zk-open, not both")
    if auth is None and not open_flag:
        auth = env.get(AUTH_ENV) or None
        open_flag = env.get(OPEN_ENV, "").lower() in _TRUE and auth is None
    if auth is None and not open_flag:
        raise InvalidArgument(
            "no ZooKeeper credentials: give --zk-auth FILE (or set "
            f"{AUTH_ENV}=FILE); to run a cluster without ACLs, which lets anyone who "
            "reaches ZooKeeper control it, say so with --zk-open"
        )
    kwargs: dict[str, Any] = (
        {"credentials": Credentials.from_file(auth)} if auth is not None else {"open_acl": True}
    )
    ca = getattr(args, "zk_tls_ca", None) or env.get(TLS_CA_ENV) or None
    cert = getattr(args, "zk_tls_cert", None) or env.get(TLS_CERT_ENV) or None
    key = getattr(args, "zk_tls_key", None) or env.get(TLS_KEY_ENV) or None
    tls = getattr(args, "zk_tls", None) or env.get(TLS_ENV, "").lower() in _TRUE
    if tls or ca or cert or key:
        kwargs["tls"] = TlsSettings(ca=ca, certfile=cert, keyfile=key)
    return kwargs


def coordinator_for(args: argparse.Namespace, **extra: Any) -> Any:
    """A (not yet started) Coordinator for the ZooKeeper flags of ``args``.

    ``extra`` goes to the Coordinator as is (a session timeout, a close
    timeout). Raises what :func:`zk_security` raises.
    """
    from mhafail.coordination import Coordinator

    return Coordinator(
        hosts=args.zk,
        cluster=args.cluster,
        connect_timeout=args.connect_timeout,
        **zk_security(args),
        **extra,
    )
