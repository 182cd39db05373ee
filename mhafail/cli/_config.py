"""``mhafail config``: eccfg-like commands for git-backed cluster configuration.

Local commands (``init``, ``log``, ``diff``) work on a node's repository
directory alone; the others also talk to ZooKeeper (``--zk``, ``--cluster``).
``agent`` runs a node's replication (git daemon, membership, apply loop) in
the foreground until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import attrs

from mhafail.cli._output import add_json_flag, emit
from mhafail.cli._signals import STOP_CLOSE, stop_on_signals
from mhafail.cli._zkargs import add_zk_security_flags, coordinator_for

KAZOO_LOGGER = "mhafail.coordination.kazoo"

#: Seconds ``config agent`` waits for its node to stop before closing the session.
_STOP_NODE = 1.5


def register(subparsers: Any) -> None:
    """Add ``config`` and its actions."""
    config = subparsers.add_parser("config", help="git-backed cluster configuration")
    sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)

    def action(name: str, help_text: str, *, zk: bool, func: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=help_text
        )
        parser.add_argument("--dir", required=True, help="the node's config directory")
        parser.add_argument("--repo", default="config", help="repository name (default: config)")
        parser.add_argument("--node", default=socket.gethostname(), help="this node's name")
        parser.add_argument("--zk", required=zk, metavar="HOSTS", help="ZooKeeper host:port[,...]")
        parser.add_argument("--cluster", required=zk, help="cluster name")
        add_zk_security_flags(parser)
        parser.add_argument("--connect-timeout", type=float, default=10.0)
        add_json_flag(parser)
        parser.set_defaults(func=func)
        return parser

    action(
        "init", "create the node's repository (and pull the head with --zk)", zk=False, func=_init
    )
    commit = action(
        "commit", "validate, commit and publish working-copy edits", zk=True, func=_commit
    )
    commit.add_argument("-m", "--message", required=True)
    commit.add_argument("--author", default=None, help="Name <email> (default: $USER@node)")
    commit.add_argument("--rebase", action="store_true", help="rebase over a newer head")
    _replica_flags(commit)
    commit.add_argument("paths", nargs="*", metavar="PATH", help="limit to these paths")
    log = action("log", "show the local history", zk=False, func=_log)
    log.add_argument("--limit", type=int, default=20)
    diff = action("diff", "diff A..B (default: branch..working copy)", zk=False, func=_diff)
    diff.add_argument("revs", nargs="*", metavar="REV")
    action("status", "every node's applied version; flags drift", zk=True, func=_status)
    rollback = action("rollback", "publish a commit restoring SHA's tree", zk=True, func=_rollback)
    rollback.add_argument("sha")
    rollback.add_argument("--author", default=None)
    _replica_flags(rollback)
    pull = action("pull", "fetch the head and update the working copy", zk=True, func=_pull)
    pull.add_argument("--force", action="store_true", help="stash conflicting edits")
    freeze = action("freeze", "stop applying on NODE", zk=True, func=_freeze)
    freeze.add_argument("--force", action="store_true", help="also for a node never seen yet")
    action("thaw", "resume applying on NODE", zk=True, func=_thaw)
    agent = action("agent", "run this node's replication agent", zk=True, func=_agent)
    agent.add_argument("--listen", default="127.0.0.1", help="address for the git daemon")
    agent.add_argument("--port", type=int, default=0, help="git daemon port (0: free)")
    agent.add_argument("--mode", choices=["always", "if_unchanged", "frozen"], default="always")
    agent.add_argument("--check-cmd", default=None, help="node-local check; {tree} = checkout")
    agent.add_argument(
        "--no-cluster-check",
        action="store_true",
        help="do not run the check the repository declares in .mhafail/check.toml",
    )
    agent.add_argument("--session-timeout", type=float, default=10.0)
    agent.add_argument("--debounce", type=float, default=0.005)


def _replica_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="K",
        help="publish once K other nodes hold the commit (default: a majority of the live "
        "nodes, at least 1; 0: publish at once, with no copy anywhere else)",
    )
    parser.add_argument(
        "--replicate-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds to wait for them (default 10)",
    )


@contextmanager
def _repository(args: argparse.Namespace, *, zk: bool) -> Iterator[Any]:
    from mhafail.config import ConfigRepository

    if not zk or not args.zk:
        yield ConfigRepository(name=args.repo, base=args.dir, node=args.node)
        return
    if not getattr(args, "verbose", 0):
        # kazoo logs every failed connection attempt (up to 14 lines before
        # the one-line error); a short command's error says it all.
        logging.getLogger(KAZOO_LOGGER).setLevel(logging.CRITICAL)
    with coordinator_for(args) as coordinator:
        yield ConfigRepository(
            name=args.repo,
            base=args.dir,
            node=args.node,
            coordinator=coordinator,
            replicas=getattr(args, "replicas", None),
            replicate_timeout=getattr(args, "replicate_timeout", 10.0),
        )


def _author(args: argparse.Namespace) -> str:
    import getpass

    return args.author or f"{getpass.getuser()} <{getpass.getuser()}@{args.node}>"


def _opened(repo: Any) -> Any:
    from mhafail.config._repo import GitStore

    GitStore.open(repo.worktree)
    return repo


def _init(args: argparse.Namespace) -> int:
    with _repository(args, zk=True) as repo:
        repo.init()
        head = repo.pull() if repo.coordinator is not None else None
        data = {"repo": args.repo, "worktree": str(repo.worktree), "head": head}
    emit(
        args,
        data,
        lambda d: f"initialized {d['worktree']}" + (f" at {d['head']}" if d["head"] else ""),
    )
    return 0


def _commit(args: argparse.Namespace) -> int:
    from mhafail.errors import InvalidChange

    with _repository(args, zk=True) as repo:
        store = _opened(repo).store
        changes = store.worktree_changes(args.paths, max_file_bytes=repo.limits.max_file_bytes)
        if not changes:
            raise InvalidChange(
                "nothing to commit: the working copy has no edits"
                + (" under " + " ".join(args.paths) if args.paths else "")
            )
        result = repo.commit(
            changes, message=args.message, author=_author(args), rebase=args.rebase
        )
    data = attrs.asdict(result)
    emit(args, data, lambda d: f"published {d['sha']} ({len(d['paths'])} paths)")
    return 0


def _log(args: argparse.Namespace) -> int:
    with _repository(args, zk=False) as repo:
        entries = [attrs.asdict(e) for e in _opened(repo).log(args.limit)]

    def text(items: list[dict[str, Any]]) -> str:
        return "\n".join(
            f"{e['sha'][:12]} {time.strftime('%Y-%m-%d %H:%M', time.gmtime(e['time']))} "
            f"{e['author']}  {e['message'].splitlines()[0] if e['message'] else ''}"
            for e in items
        )

    emit(args, entries, text)
    return 0


def _diff(args: argparse.Namespace) -> int:
    from mhafail.errors import InvalidChange

    if len(args.revs) > 2:
        raise InvalidChange("diff takes at most two revisions")
    with _repository(args, zk=False) as repo:
        revs = [*args.revs, None, None]
        patch = _opened(repo).diff(revs[0], revs[1])
    emit(args, {"diff": patch}, lambda d: d["diff"])
    return 0


def _status(args: argparse.Namespace) -> int:
    with _repository(args, zk=True) as repo:
        status = repo.status()
    data = {
        "head": None if status.head is None else attrs.asdict(status.head),
        "nodes": {
            name: {**attrs.asdict(r), "state": r.state.value, "mode": r.mode.value}
            for name, r in status.nodes.items()
        },
        "drift": list(status.drift),
    }
    emit(args, data, _status_text)
    return 0


def _status_text(data: dict[str, Any]) -> str:
    head = data["head"]
    lines = [
        f"head: {head['sha'][:12]} {head['message']!r} by {head['author']}"
        if head
        else "head: none"
    ]
    lines.append(f"{'NODE':<16} {'APPLIED':<12} {'STATE':<9} {'MODE':<13} ERROR")
    for name, r in data["nodes"].items():
        mark = " *" if name in data["drift"] else ""
        lines.append(
            f"{name:<16} {(r['sha'] or '-')[:12]:<12} {r['state']:<9} {r['mode']:<13} "
            f"{r['error']}{mark}"
        )
    if data["drift"]:
        lines.append(f"drift (*): {', '.join(data['drift'])}")
    return "\n".join(lines)


def _rollback(args: argparse.Namespace) -> int:
    from mhafail.errors import FetchFailed, InvalidChange

    with _repository(args, zk=True) as repo:
        store = _opened(repo).store
        head = repo.head()
        if head is not None:
            # Fetched for its history; a head nobody can provide is replaced.
            with suppress(FetchFailed):
                repo.ensure_commit(head.sha, origin=head.origin)
        sha = store.resolve(args.sha)
        if sha is None:
            raise InvalidChange(f"unknown commit {args.sha!r}")
        result = repo.rollback(sha, author=_author(args))
    emit(args, attrs.asdict(result), lambda d: f"published {d['sha']} (rollback)")
    return 0


def _pull(args: argparse.Namespace) -> int:
    with _repository(args, zk=True) as repo:
        _opened(repo)
        sha = repo.pull(force=args.force)
    emit(args, {"head": sha}, lambda d: f"at {d['head']}" if d["head"] else "nothing published")
    return 0


def _set_mode(args: argparse.Namespace, frozen: bool) -> int:
    from mhafail.config import UpdateMode

    with _repository(args, zk=True) as repo:
        repo.set_mode(
            args.node, UpdateMode.FROZEN if frozen else None, force=getattr(args, "force", False)
        )
    state = "frozen" if frozen else "thawed"
    emit(args, {"node": args.node, "state": state}, lambda d: f"{d['node']}: {d['state']}")
    return 0


def _freeze(args: argparse.Namespace) -> int:
    return _set_mode(args, True)


def _thaw(args: argparse.Namespace) -> int:
    return _set_mode(args, False)


def _agent(args: argparse.Namespace) -> int:
    from mhafail.config import CheckCommand, ConfigNode, UpdateMode, syntax_check
    from mhafail.config._validate import Validator
    from mhafail.errors import InvalidArgument

    if not args.listen.startswith("127.") and args.listen != "::1" and args.port == 0:
        raise InvalidArgument("--listen on a non-loopback address needs an explicit --port")
    validators: list[Validator] = [syntax_check]
    if args.check_cmd:
        validators.append(CheckCommand(shlex.split(args.check_cmd)))
    stop = stop_on_signals()
    coordinator = coordinator_for(
        args, session_timeout=args.session_timeout, close_timeout=STOP_CLOSE
    ).start()
    try:
        node = ConfigNode(
            coordinator=coordinator,
            node=args.node,
            base=args.dir,
            repos=[args.repo],
            host=args.listen,
            port=args.port,
            mode=UpdateMode(args.mode),
            validators=validators,
            debounce=args.debounce,
            cluster_check=not args.no_cluster_check,
        ).start()
        try:
            assert node.daemon is not None
            ready = {"event": "ready", "node": args.node, "git": node.daemon.endpoint}
            sys.stdout.write(json.dumps(ready) + "\n")
            sys.stdout.flush()
            stop.wait()
        finally:
            # Bounded (issue 19): a pass stuck on ZooKeeper or a peer must not
            # hold the stop. Its thread is a daemon, a checkout goes live
            # atomically, and git daemon dies with this process.
            stopper = threading.Thread(target=node.stop, name="mhafail-config-stop", daemon=True)
            stopper.start()
            stopper.join(_STOP_NODE)
    finally:
        coordinator.stop()
    return 0
