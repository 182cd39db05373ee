"""The ``mhafail`` command.

Each area has one module here that adds its subcommands to the parser
through ``register(subparsers)``; each subcommand stores a handler in
``func`` that takes the parsed arguments and returns the exit status.
Errors derived from :class:`mhafail.errors.MhafailError` are printed as one
line on stderr with exit status 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
from collections.abc import Sequence

from mhafail.errors import MhafailError

# Modules that add subcommands, in the order their commands are listed.
_COMMAND_MODULES = (
    "mhafail.cli._zk",
    "mhafail.cli._members",
    "mhafail.cli._vip",
    "mhafail.cli._cidr",
    "mhafail.cli._audit",
    "mhafail.cli._jlog",
    "mhafail.cli._config",
    "mhafail.cli._logs",
    "mhafail.cli._commands",
    "mhafail.cli._spool",
    "mhafail.cli._console",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``mhafail`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="mhafail",
        description="High availability for Python MTAs: operate a mhafail cluster.",
    )
    parser.add_argument("--verbose", "-v", action="count", default=0, help="log more (repeatable)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mhafail`` command line and return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose:
        import logging

        logging.basicConfig(
            level=logging.DEBUG if args.verbose > 1 else logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    try:
        status: int = args.func(args)
    except MhafailError as exc:
        print(f"mhafail: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if threading.current_thread() is threading.main_thread():
            from mhafail.cli._signals import restore

            restore()
    return status
