"""Shared fixtures for the jlog tests: copies of the C-written jlogs, fresh jlogs."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture
def manifest() -> dict[str, Any]:
    """The fixtures' manifest: what each subscriber of each C-written jlog must read."""
    data: dict[str, Any] = json.loads((FIXTURES / "manifest.json").read_text())
    return data


@pytest.fixture
def c_jlog(tmp_path: Path) -> Callable[[str], Path]:
    """Return a function copying a C-written fixture jlog into tmp_path (never read in place)."""

    def copy(name: str) -> Path:
        dest = tmp_path / name
        shutil.copytree(FIXTURES / name, dest)
        for f in dest.iterdir():
            f.chmod(0o640)
        return dest

    return copy


def b64(items: list[str]) -> list[bytes]:
    """Decode the manifest's base64 payloads."""
    return [base64.b64decode(x) for x in items]
