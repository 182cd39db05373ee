"""Registered commands: name, handler, argument schema, who may run it.

Nothing runs on a node that was not registered here: a request naming any
other command is refused before anything else happens.
"""

from __future__ import annotations

import fnmatch
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from mhafail.commands._model import Request
from mhafail.commands._schema import Schema, check_command_name
from mhafail.errors import CommandInvalidArgument


@attrs.define(eq=False)
class CommandContext:
    """What a handler gets besides its arguments.

    Handlers run on a thread of their own. Python cannot stop a thread, so
    a long handler polls :meth:`should_stop` (or waits on ``cancelled``)
    and returns early: the node stops waiting at the deadline and on
    cancellation either way, and answers TIMEOUT or CANCELLED.

    Attributes:
        request: the request being run.
        node: this node's name.
        deadline: ``time.monotonic()`` value by which the handler must be done.
        cancelled: set on cancellation, deadline, lost coordination or stop.
    """

    request: Request
    node: str
    deadline: float
    cancelled: threading.Event = attrs.field(factory=threading.Event)

    def remaining(self) -> float:
        """Seconds left before the deadline (0 when passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def should_stop(self) -> bool:
        """True once the handler should give up (cancelled or past the deadline)."""
        return self.cancelled.is_set() or time.monotonic() >= self.deadline


Handler = Callable[[CommandContext, dict[str, Any]], Any]
"""``handler(ctx, args) -> JSON value``; raising makes an ERROR reply."""


def _roles(value: Iterable[str]) -> frozenset[str]:
    return frozenset(value)


@attrs.frozen
class Command:
    """One registered command.

    Attributes:
        name: the command name.
        handler: the function run for it.
        schema: its arguments.
        roles: requester roles allowed to run it (``operator``).
        help: one line for listings.
    """

    name: str = attrs.field(validator=lambda _, __, v: check_command_name(v))
    handler: Handler
    schema: Schema = attrs.field(factory=Schema)
    roles: frozenset[str] = attrs.field(default=frozenset({"operator"}), converter=_roles)
    help: str = ""


def _allow(value: Mapping[str, Iterable[str]]) -> dict[str, tuple[str, ...]]:
    return {str(k): tuple(v) for k, v in value.items()}


@attrs.define(eq=False)
class Registry:
    """Commands by name, and the allow-list that says who may run which.

    ``allow`` maps a requester role (``operator``) or a user
    (``user:NAME``) to command-name globs; a request runs only when the
    command allows its role *and* the allow-list has a matching glob for
    its role or its user. Default: operators may run everything.
    """

    allow: Mapping[str, tuple[str, ...]] = attrs.field(
        factory=lambda: {"operator": ("*",)}, converter=_allow
    )
    _commands: dict[str, Command] = attrs.field(init=False, factory=dict)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock)

    def add(self, command: Command) -> None:
        """Register ``command``.

        Raises:
            CommandInvalidArgument: the name is taken.
        """
        with self._lock:
            if command.name in self._commands:
                raise CommandInvalidArgument(f"command {command.name!r} is already registered")
            self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        """The command called ``name``, or None."""
        with self._lock:
            return self._commands.get(name)

    def names(self) -> list[str]:
        """Registered command names, sorted."""
        with self._lock:
            return sorted(self._commands)

    def commands(self) -> Iterable[Command]:
        """Registered commands, sorted by name."""
        with self._lock:
            return [self._commands[n] for n in sorted(self._commands)]

    def check(self, request: Request) -> tuple[Command, dict[str, Any]]:
        """Return the command and validated arguments, or refuse the request.

        Raises:
            CommandInvalidArgument: unknown command, requester not allowed,
                or arguments the schema refuses (nothing has run).
        """
        command = self.get(request.command)
        if command is None:
            raise CommandInvalidArgument(f"unknown command {request.command!r}")
        who = request.requester
        globs = self.allow.get(who.role, ()) + self.allow.get(f"user:{who.user}", ())
        if who.role not in command.roles or not any(
            fnmatch.fnmatchcase(command.name, g) for g in globs
        ):
            raise CommandInvalidArgument(
                f"{who.user or '?'} (role {who.role or '?'}) may not run {command.name!r} here"
            )
        return command, command.schema.validate(request.args)
