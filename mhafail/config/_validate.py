"""Validators: pluggable checks a config tree must pass before it goes anywhere.

A validator is any callable ``validator(tree, changed) -> Iterable[str]``
that returns (or yields) one line per problem; no problems means the tree
is accepted. ``tree`` is a directory holding the whole staged tree,
``changed`` the repository paths the commit touches (empty set: check
everything). A validator that raises counts as a problem, with the
exception's message; it never publishes a half-checked commit.

Built in: :func:`syntax_check` (TOML, JSON, and YAML when PyYAML is
installed), :class:`CheckCommand` (an external command that receives the
staged tree, like confd's ``check_cmd``) and :func:`cluster_check`, the
check the repository itself declares in ``.mhafail/check.toml``, which
every committer and every node runs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import attrs

from mhafail.errors import InvalidChange, ValidationFailed

logger = logging.getLogger(__name__)


class Validator(Protocol):
    """Checks a staged config tree; returns one line per problem (none: accepted)."""

    def __call__(self, tree: Path, changed: frozenset[str]) -> Iterable[str]:
        """Check ``tree``; ``changed`` names the paths the commit touches (empty: all)."""
        ...


def _yaml_loader() -> Any:
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return None
    return yaml


def syntax_check(tree: Path, changed: frozenset[str]) -> list[str]:
    """Parse ``*.toml``, ``*.json`` and (with PyYAML) ``*.yaml``/``*.yml`` files.

    Only the changed files are parsed when ``changed`` is not empty: the
    others were parsed when they were committed.
    """
    if changed:
        paths = [p for p in sorted(changed) if (tree / p).is_file()]
    else:
        paths = sorted(str(p.relative_to(tree)) for p in tree.rglob("*") if p.is_file())
    problems: list[str] = []
    yaml = None
    for path in paths:
        suffix = Path(path).suffix.lower()
        if suffix not in (".toml", ".json", ".yaml", ".yml"):
            continue
        data = (tree / path).read_bytes()
        try:
            if suffix == ".toml":
                tomllib.loads(data.decode("utf-8"))
            elif suffix == ".json":
                json.loads(data)
            else:
                yaml = yaml or _yaml_loader()
                if yaml is not None:
                    yaml.safe_load(data)
        except UnicodeDecodeError as exc:
            problems.append(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})")
        except Exception as exc:  # each parser has its own error types
            problems.append(f"{path}: invalid {suffix[1:].upper()}: {exc}")
    return problems


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class CheckCommand:
    """Run an external command on the staged tree; a non-zero exit rejects it.

    Each ``{tree}`` in ``argv`` is replaced with the tree's directory; the
    command also runs with the tree as its working directory and gets it in
    ``$MHAFAIL_CONFIG_TREE``. Its stderr (or stdout) tail is the problem text.

    Args:
        argv: the command and its arguments (no shell).
        timeout: seconds before the command is killed and the tree rejected.
    """

    argv: tuple[str, ...] = attrs.field(converter=_str_tuple)
    timeout: float = 30.0

    def __attrs_post_init__(self) -> None:
        if not self.argv or not all(isinstance(a, str) for a in self.argv):
            raise InvalidChange("check command: need a non-empty list of strings")
        if self.timeout <= 0:
            raise InvalidChange(f"check command: invalid timeout {self.timeout!r}")

    def __call__(self, tree: Path, changed: frozenset[str]) -> list[str]:
        """Run the command; return its complaint, or nothing when it exits 0."""
        argv = [a.replace("{tree}", str(tree)) for a in self.argv]
        env = {**os.environ, "MHAFAIL_CONFIG_TREE": str(tree)}
        try:
            proc = subprocess.run(
                argv, cwd=tree, env=env, capture_output=True, timeout=self.timeout, check=False
            )
        except subprocess.TimeoutExpired:
            return [f"check command {argv[0]} timed out after {self.timeout:g} s"]
        except OSError as exc:
            return [f"check command {argv[0]} could not run: {exc}"]
        if proc.returncode == 0:
            return []
        text = (proc.stderr or proc.stdout).decode(errors="replace").strip()
        tail = " | ".join(text.splitlines()[-5:]) or "no output"
        return [f"check command {argv[0]} exited {proc.returncode}: {tail}"]


def run_validators(
    validators: Sequence[Validator], tree: Path, changed: Iterable[str] = ()
) -> tuple[str, ...]:
    """Run every validator on ``tree`` and collect their problems.

    Returns:
        All problems, in validator order (empty: accepted).
    """
    changed_set = frozenset(changed)
    problems: list[str] = []
    for validator in validators:
        try:
            problems.extend(str(p) for p in validator(tree, changed_set))
        except Exception as exc:
            logger.debug("validator %r raised", validator, exc_info=True)
            name = getattr(validator, "__name__", type(validator).__name__)
            problems.append(f"validator {name} failed: {exc}")
    return tuple(problems)


def require_valid(
    validators: Sequence[Validator], tree: Path, changed: Iterable[str], what: str
) -> None:
    """Run the validators and raise when any complains.

    Raises:
        ValidationFailed: with every problem found.
    """
    problems = run_validators(validators, tree, changed)
    if problems:
        raise ValidationFailed(f"{what} rejected", problems)


CHECK_FILE = ".mhafail/check.toml"
"""Where a repository declares the cluster's check (part of the replicated tree)."""
_MAX_ARGS = 64
_MAX_ARG_BYTES = 4096
_MAX_CHECK_TIMEOUT = 600.0


def load_check(tree: Path) -> CheckCommand | None:
    """The check declared by the tree's ``.mhafail/check.toml``, or None when there is none.

    The file holds ``command`` (a list of 1 to 64 strings, no NUL, no
    shell; ``{tree}`` is replaced with the tree's directory; a relative
    program path such as ``checks/run.sh`` names a file of the tree, as
    the command runs with the tree as its working directory) and an
    optional ``timeout`` in seconds (default 30, at most 600).

    Raises:
        InvalidChange: the file is not such a document (the message says why).
    """
    path = tree / CHECK_FILE
    if not path.is_file() or path.is_symlink():
        return None
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidChange(f"{CHECK_FILE}: invalid TOML: {exc}") from None
    command, timeout = raw.get("command"), raw.get("timeout", 30)
    if (
        not isinstance(command, list)
        or not 1 <= len(command) <= _MAX_ARGS
        or not all(
            isinstance(a, str) and a and "\0" not in a and len(a.encode()) <= _MAX_ARG_BYTES
            for a in command
        )
    ):
        raise InvalidChange(
            f"{CHECK_FILE}: command must be a list of 1 to {_MAX_ARGS} non-empty strings"
        )
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= _MAX_CHECK_TIMEOUT
    ):
        raise InvalidChange(f"{CHECK_FILE}: timeout must be a number in (0, 600]")
    unknown = sorted(set(raw) - {"command", "timeout"})
    if unknown:
        raise InvalidChange(f"{CHECK_FILE}: unknown keys {', '.join(unknown)}")
    return CheckCommand(tuple(command), timeout=float(timeout))


def cluster_check(tree: Path, changed: frozenset[str]) -> list[str]:
    """Run the check the tree declares in ``.mhafail/check.toml`` (none: accepted).

    It runs on the whole tree whatever changed: the check may look at any
    file. A malformed declaration is a problem, so a broken check file can
    never be published.
    """
    try:
        check = load_check(tree)
    except InvalidChange as exc:
        return [str(exc)]
    return [] if check is None else check(tree, changed)
