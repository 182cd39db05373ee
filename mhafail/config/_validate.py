"""Validators: pluggable checks a config tree must pass before it goes anywhere.

A validator is any callable ``validator(tree, changed) -> Iterable[str]``
that returns (or yields) one line per problem; no problems means the tree
is accepted. ``tree`` is a directory holding the whole staged tree,
``changed`` the repository paths the commit touches (empty set: check
everything). A validator that raises counts as a problem, with the
exception's message; it never publishes a half-checked commit.

Built in: :func:`syntax_check` (TOML, JSON, and YAML when PyYAML is
installed) and :class:`CheckCommand` (an external command that receives the
staged tree, like confd's ``check_cmd``).
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
