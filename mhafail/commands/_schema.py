"""Command names, typed argument schemas, CLI arguments and node selectors.

Pure: no I/O. Everything here parses outside input (a manager's request,
an operator's command line), so each parser raises only
:class:`~mhafail.errors.CommandInvalidArgument` with a message that names
the argument and the rule.
"""

from __future__ import annotations

import enum
import fnmatch
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from mhafail.errors import CommandInvalidArgument

MAX_ARGS = 32
MAX_ARGS_BYTES = 16 * 1024
MAX_STRING = 4096
MAX_LIST = 64

_COMMAND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}")
_ARG_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_INT_RE = re.compile(r"-?[0-9]{1,18}")
_FLOAT_RE = re.compile(r"-?[0-9]{1,18}(\.[0-9]{1,18})?([eE][-+]?[0-9]{1,3})?")
_LABEL_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,62}")
_GLOB_RE = re.compile(r"[A-Za-z0-9_.*?\[\]!:/@-]{1,255}")


def check_command_name(name: str) -> str:
    """Return ``name`` if it is a valid command name (``ping``, ``vip.show``).

    Raises:
        CommandInvalidArgument: not 1-4 dot-separated lowercase words.
    """
    if not isinstance(name, str) or not _COMMAND_RE.fullmatch(name):
        raise CommandInvalidArgument(
            f"invalid command name {name!r}: use 1-4 dot-separated words of "
            "a-z 0-9 _ (starting with a letter), e.g. 'vip.show'"
        )
    return name


class ArgKind(enum.Enum):
    """The type of one argument."""

    STR = "str"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    STRS = "strs"
    """A list of strings."""


@attrs.frozen
class Arg:
    """One argument of a command.

    Args:
        name: the argument name (``a-z0-9_``, starting with a letter).
        kind: its type.
        required: refuse a request without it.
        default: the value when absent and not required.
        choices: the only allowed values (STR, INT).
        minimum: smallest allowed number (INT, FLOAT).
        maximum: largest allowed number (INT, FLOAT).
        max_length: longest string, or most list items.
        pattern: a regular expression a STR (or each STRS item) must match fully.
        help: one line for listings.

    Raises:
        CommandInvalidArgument: a bad name or an inconsistent definition.
    """

    name: str
    kind: ArgKind = ArgKind.STR
    required: bool = True
    default: Any = None
    choices: tuple[Any, ...] = attrs.field(default=(), converter=tuple)
    minimum: float | None = None
    maximum: float | None = None
    max_length: int = 255
    pattern: str | None = None
    help: str = ""

    def __attrs_post_init__(self) -> None:
        if not _ARG_RE.fullmatch(self.name):
            raise CommandInvalidArgument(
                f"invalid argument name {self.name!r}: use a-z 0-9 _ , starting with a letter"
            )
        if not 0 < self.max_length <= MAX_STRING:
            raise CommandInvalidArgument(f"argument {self.name}: max_length must be 1-{MAX_STRING}")
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise CommandInvalidArgument(f"argument {self.name}: bad pattern: {exc}") from exc

    def check(self, value: Any) -> Any:
        """Return ``value`` converted to this argument's type, or refuse it.

        Strings are converted to INT, FLOAT and BOOL when they spell one
        exactly (``"3"``, ``"0.5"``, ``"true"``), because command lines
        carry text; nothing else is converted.

        Raises:
            CommandInvalidArgument: wrong type, out of range, too long,
                not one of ``choices`` or not matching ``pattern``.
        """
        value = self._convert(value)
        where = f"argument {self.name}"
        if self.kind in (ArgKind.INT, ArgKind.FLOAT):
            if self.minimum is not None and value < self.minimum:
                raise CommandInvalidArgument(f"{where}: {value} is below {self.minimum:g}")
            if self.maximum is not None and value > self.maximum:
                raise CommandInvalidArgument(f"{where}: {value} is above {self.maximum:g}")
        if self.kind is ArgKind.STRS:
            if len(value) > min(self.max_length, MAX_LIST):
                raise CommandInvalidArgument(f"{where}: more than {self.max_length} items")
            for item in value:
                self._check_text(item)
        elif self.kind is ArgKind.STR:
            self._check_text(value)
        if self.choices and value not in self.choices:
            shown = ", ".join(str(c) for c in self.choices)
            raise CommandInvalidArgument(f"{where}: {value!r} is not one of {shown}")
        return value

    def _check_text(self, value: str) -> None:
        limit = MAX_STRING if self.kind is ArgKind.STRS else self.max_length
        if len(value) > limit:
            raise CommandInvalidArgument(
                f"argument {self.name}: longer than {limit} characters ({len(value)})"
            )
        if self.pattern is not None and not re.fullmatch(self.pattern, value):
            raise CommandInvalidArgument(
                f"argument {self.name}: {value[:60]!r} does not match {self.pattern}"
            )

    def _convert(self, value: Any) -> Any:
        converted = _CONVERTERS[self.kind](value)
        if converted is None:
            raise CommandInvalidArgument(
                f"argument {self.name}: expected {self.kind.value}, got {_shown(value)}"
            )
        return converted


def _to_str(value: Any) -> Any:
    return value if isinstance(value, str) else None


def _to_bool(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    return {"true": True, "false": False}.get(value) if isinstance(value, str) else None


def _to_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**63:
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(value):
        return int(value)
    return None


def _to_float(value: Any) -> Any:
    if isinstance(value, str) and _FLOAT_RE.fullmatch(value):
        value = float(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:
            return None
        return number if math.isfinite(number) else None
    return None


def _to_strs(value: Any) -> Any:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, str):  # one string for a list: a comma-separated list
        return [part for part in value.split(",") if part]
    return None


_CONVERTERS = {
    ArgKind.STR: _to_str,
    ArgKind.BOOL: _to_bool,
    ArgKind.INT: _to_int,
    ArgKind.FLOAT: _to_float,
    ArgKind.STRS: _to_strs,
}


def _arg_tuple(value: Iterable[Arg]) -> tuple[Arg, ...]:
    return tuple(value)


@attrs.frozen
class Schema:
    """The arguments of a command; a request with any other argument is refused."""

    args: tuple[Arg, ...] = attrs.field(default=(), converter=_arg_tuple)

    def __attrs_post_init__(self) -> None:
        names = [a.name for a in self.args]
        if len(set(names)) != len(names):
            raise CommandInvalidArgument(f"schema names an argument twice: {names}")
        if len(names) > MAX_ARGS:
            raise CommandInvalidArgument(f"a schema has at most {MAX_ARGS} arguments")

    def validate(self, args: Mapping[str, Any]) -> dict[str, Any]:
        """Return the arguments, converted and with defaults, or refuse them.

        Raises:
            CommandInvalidArgument: an unknown or missing argument, or one
                that its :class:`Arg` refuses.
        """
        known = {a.name: a for a in self.args}
        unknown = sorted(set(args) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise CommandInvalidArgument(
                f"unknown argument {unknown[0][:40]!r} (this command takes: {allowed})"
            )
        result: dict[str, Any] = {}
        for name, arg in known.items():
            if name in args:
                result[name] = arg.check(args[name])
            elif arg.required:
                raise CommandInvalidArgument(f"missing argument {name}")
            else:
                result[name] = arg.default
        return result

    def describe(self) -> list[dict[str, Any]]:
        """The schema as JSON-ready dicts (for listings)."""
        return [
            {"name": a.name, "kind": a.kind.value, "required": a.required, "help": a.help}
            for a in self.args
        ]


def check_plain_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """Check arguments before any schema: names, value types and total size.

    Values are strings, numbers, booleans, null or lists of strings.

    Raises:
        CommandInvalidArgument: too many, a bad name, a nested value, or
            more than 16 KiB of JSON.
    """
    if not isinstance(args, Mapping):
        raise CommandInvalidArgument("arguments must be a mapping of names to values")
    if len(args) > MAX_ARGS:
        raise CommandInvalidArgument(f"at most {MAX_ARGS} arguments ({len(args)} given)")
    for name, value in args.items():
        if not isinstance(name, str) or not _ARG_RE.fullmatch(name):
            raise CommandInvalidArgument(
                f"invalid argument name {str(name)[:40]!r}: use a-z 0-9 _ , starting with a letter"
            )
        plain = value is None or isinstance(value, str | int | float | bool)
        if isinstance(value, list):
            plain = len(value) <= MAX_LIST and all(isinstance(v, str) for v in value)
        if not plain:
            raise CommandInvalidArgument(
                f"argument {name}: {_shown(value)} is not a string, number, boolean, "
                "null or list of strings"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise CommandInvalidArgument(f"argument {name}: numbers must be finite")
    size = len(json.dumps(dict(args), separators=(",", ":")).encode())
    if size > MAX_ARGS_BYTES:
        raise CommandInvalidArgument(
            f"arguments are {size} bytes of JSON, over the {MAX_ARGS_BYTES} byte cap"
        )
    return dict(args)


def parse_cli_args(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``KEY=VALUE`` (text) and ``KEY:=JSON`` (typed) command-line arguments.

    Raises:
        CommandInvalidArgument: an item without ``=``, a repeated key, bad
            JSON, or arguments that :func:`check_plain_args` refuses.
    """
    args: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        typed = key.endswith(":")
        if typed:
            key = key[:-1]
        if not sep or not key:
            raise CommandInvalidArgument(
                f"invalid argument {item[:60]!r}: expected KEY=VALUE or KEY:=JSON"
            )
        if key in args:
            raise CommandInvalidArgument(f"argument {key[:40]!r} given twice")
        if typed:
            try:
                args[key] = json.loads(value, parse_constant=_no_constant)
            except (ValueError, RecursionError) as exc:
                raise CommandInvalidArgument(f"argument {key[:40]!r}: bad JSON: {exc}") from None
        else:
            args[key] = value
    return check_plain_args(args)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


@attrs.frozen
class Selector:
    """Which nodes a subcluster request goes to: every term must match.

    A term is ``KEY=GLOB`` or a bare ``GLOB`` over node names. Keys:
    ``name``, ``host``, ``role`` (any of the node's roles), ``version``,
    or a label: a role written ``KEY=VALUE`` in the node's
    :class:`~mhafail.coordination.NodeInfo` ``roles`` is the label ``KEY``
    with that value (``NodeInfo(roles=("mta", "dc=east"))``).

    Build with :meth:`parse` (``"role=mta,dc=east"``, ``"mta-*"``).
    """

    terms: tuple[tuple[str, str], ...]

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse comma-separated terms.

        Raises:
            CommandInvalidArgument: empty, a bad key or a bad glob.
        """
        if not isinstance(text, str) or not text.strip():
            raise CommandInvalidArgument("empty node selector: give NAME-GLOB or LABEL=VALUE")
        if len(text) > 1024:
            raise CommandInvalidArgument("node selector longer than 1024 characters")
        terms = []
        for raw in text.split(","):
            part = raw.strip()
            key, sep, value = part.partition("=")
            if not sep:
                key, value = "name", part
            if not _LABEL_RE.fullmatch(key):
                raise CommandInvalidArgument(f"invalid selector key {key[:40]!r} in {part[:60]!r}")
            if not _GLOB_RE.fullmatch(value):
                raise CommandInvalidArgument(
                    f"invalid selector value {value[:40]!r} in {part[:60]!r}: use 1-255 of "
                    "A-Z a-z 0-9 _ . - : / @ and the globs * ? [ ] !"
                )
            terms.append((key, value))
        return cls(terms=tuple(terms))

    def matches(self, labels: Mapping[str, Sequence[str]]) -> bool:
        """True when every term matches one of the node's values for its key."""
        return all(
            any(fnmatch.fnmatchcase(v, glob) for v in labels.get(key, ()))
            for key, glob in self.terms
        )

    def __str__(self) -> str:
        return ",".join(f"{k}={v}" for k, v in self.terms)


def node_labels(name: str, host: str, roles: Sequence[str], version: str) -> dict[str, list[str]]:
    """The values a :class:`Selector` matches for one node."""
    labels: dict[str, list[str]] = {"name": [name], "host": [host], "version": [version]}
    labels["role"] = [r for r in roles if "=" not in r]
    for role in roles:
        key, sep, value = role.partition("=")
        if sep and key not in ("name", "host", "version", "role"):
            labels.setdefault(key, []).append(value)
    return labels


def _shown(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"
