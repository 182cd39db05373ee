"""``mhafail zk serve|credentials`` and ``mhafail init``.

``zk serve`` runs a local standalone ZooKeeper for development and demos;
``zk credentials`` writes a pair of credentials files (operator, node);
``init`` creates (or vets) a cluster's root with its ACL policy.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mhafail.cli._output import add_json_flag, emit
from mhafail.cli._signals import stop_on_signals
from mhafail.cli._zkargs import add_zk_flags, zk_security
from mhafail.coordination._auth import Role
from mhafail.errors import InvalidArgument


def register(subparsers: Any) -> None:
    """Add ``zk serve``, ``zk credentials`` and ``init``."""
    _register_init(subparsers)
    zk = subparsers.add_parser("zk", help="run a local ZooKeeper; make credentials")
    sub = zk.add_subparsers(dest="zk_command", metavar="ACTION", required=True)
    creds = sub.add_parser(
        "credentials",
        help="write an operator and a node credentials file (random passwords)",
        description="Write DIR/operator.auth and DIR/node.auth (mode 0600, never "
        "overwritten) with random passwords; both list both roles' ids. Give "
        "operator.auth to operators and managers, node.auth to every node.",
    )
    creds.add_argument("--dir", required=True, type=Path, help="where to write the two files")
    creds.add_argument("--operator-user", default="mhafail-operator")
    creds.add_argument("--node-user", default="mhafail-node")
    creds.add_argument(
        "--sasl",
        action="store_true",
        help="SASL DIGEST-MD5 identities instead of digest ones; also writes "
        "DIR/zookeeper-jaas.conf, the JAAS Server section for the ZooKeeper servers",
    )
    add_json_flag(creds)
    creds.set_defaults(func=_credentials)
    serve = sub.add_parser(
        "serve",
        help="run a standalone ZooKeeper in the foreground until SIGTERM or Ctrl-C",
        description="Run a standalone ZooKeeper (Debian's zookeeper package) in the "
        "foreground. Prints its address, stops cleanly on SIGTERM or Ctrl-C.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    serve.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    serve.add_argument(
        "--tick-time", type=int, default=200, help="tickTime in ms; sessions may last 2-20 ticks"
    )
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from mhafail.testing import ZooKeeperServer, free_port

    if args.port is not None and not 0 < args.port < 65536:
        raise InvalidArgument(f"--port {args.port}: not in 1-65535")
    if not 2 <= args.tick_time <= 60000:
        raise InvalidArgument(f"--tick-time {args.tick_time}: use 2 to 60000 ms")
    stop = stop_on_signals()
    server = ZooKeeperServer(
        tick_time=args.tick_time, host=args.host, port=args.port or free_port(args.host)
    )
    try:
        server.start()
        print(f"zookeeper serving on {server.address} (tickTime {args.tick_time} ms)", flush=True)
        while not stop.wait(0.5):
            if not server.running:
                print(f"zookeeper exited:\n{server.log_tail()}", file=sys.stderr)
                return 1
    finally:
        server.cleanup()
    print("zookeeper stopped", flush=True)
    return 0


def _credentials(args: argparse.Namespace) -> int:
    from mhafail.coordination import Credentials, write_credentials_pair

    files = write_credentials_pair(
        args.dir, operator_user=args.operator_user, node_user=args.node_user, sasl=args.sasl
    )
    creds = Credentials.from_file(files[Role.OPERATOR])
    data = {
        "files": {role.value: str(path) for role, path in files.items()},
        "operators": list(creds.operators),
        "nodes": list(creds.nodes),
    }
    emit(args, data, lambda d: "\n".join(f"{r}: {p}" for r, p in d["files"].items()))
    return 0


def _register_init(subparsers: Any) -> None:
    init = subparsers.add_parser(
        "init",
        help="create or vet a cluster's root and ACLs (operator credentials)",
        description="Create the cluster root /mhafail/CLUSTER and its folders with the "
        "ACL policy of the credentials file (operators: everything; nodes: what nodes "
        "need), or, when it exists, check every znode's ACL against the policy. Exits "
        "1 when some ACL is outside the policy (listed); --repair-acls sets them.",
    )
    add_zk_flags(init)
    init.add_argument(
        "--config-repo",
        action="append",
        default=[],
        metavar="NAME",
        help="also create config/NAME for a config repository (repeatable)",
    )
    init.add_argument(
        "--repair-acls",
        action="store_true",
        help="give every znode exactly the policy's ACL (after changing the role lists)",
    )
    add_json_flag(init)
    init.set_defaults(func=_init)


def _init(args: argparse.Namespace) -> int:
    from mhafail.coordination import Coordinator, check_name

    security = zk_security(args)
    credentials = security.get("credentials")
    if credentials is not None and credentials.role is not Role.OPERATOR:
        raise InvalidArgument(
            f"init needs operator credentials; {args.zk_auth or 'the credentials file'} "
            "holds a node identity"
        )
    for repo in args.config_repo:
        check_name("config repository name", repo)
    with Coordinator(
        hosts=args.zk, cluster=args.cluster, connect_timeout=args.connect_timeout, **security
    ) as coordinator:
        z = coordinator.znodes
        for repo in args.config_repo:
            for folder in ("applied", "modes", "proposals"):
                z.ensure(f"config/{repo}/{folder}")
        repaired = z.repair_acls() if args.repair_acls else 0
        problems = [] if coordinator.credentials is None else z.acl_problems()
    data = {
        "cluster": args.cluster,
        "open": coordinator.credentials is None,
        "repaired": repaired,
        "problems": [{"path": p or "(root)", "problem": why} for p, why in problems],
    }
    emit(args, data, _init_text)
    return 1 if problems else 0


def _init_text(data: dict[str, Any]) -> str:
    lines = [
        f"cluster {data['cluster']}: "
        + ("OPEN (no ACLs)" if data["open"] else "ACL policy in place")
        + (f", {data['repaired']} ACLs repaired" if data["repaired"] else "")
    ]
    lines += [f"unsafe ACL on {p['path']}: {p['problem']}" for p in data["problems"]]
    return "\n".join(lines)
