"""Fuzz: damaged jlog files make open, read, inspect and repair raise only documented errors."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mhafail.errors import MhafailError
from mhafail.jlog import Jlog, inspect, repair

_TARGETS = [
    "00000000",
    "00000001",
    "00000002",
    "00000000.idx",
    "00000001.idx",
    "metastore",
    "cp.73",  # subscriber "s"
    "cp.74",  # subscriber "t"
    "pre_commit",
]


def _base(root: Path, compress: bool) -> Path:
    """Three segments of records with built indexes, subscribers s (at the start) and t (midway)."""
    root.mkdir(parents=True)
    jlog = Jlog.create(root / "j", unit_limit=200, compress=compress)
    with jlog.writer() as writer:
        writer.write_many([b"record %03d " % i + b"x" * (i % 17) for i in range(20)])
    jlog.add_subscriber("s")
    jlog.add_subscriber("t")
    with jlog.reader("t") as reader:
        batch = reader.read_batch(7)
        reader.checkpoint(batch[-1].id)
        while reader.read_batch():  # builds and closes every index
            pass
    (jlog.path / "pre_commit").write_bytes(bytes(4))
    return jlog.path


_BASES: dict[bool, Path] = {}


@pytest.fixture(scope="module", autouse=True)
def _bases() -> object:
    """Build the two base jlogs once; each example works on a copy."""
    with tempfile.TemporaryDirectory() as tmp:
        for compress in (False, True):
            _BASES[compress] = _base(Path(tmp) / ("lz4" if compress else "plain"), compress)
        yield
        _BASES.clear()


def _mutate(path: Path, target: str, kind: str, where: int, data: bytes) -> None:
    """Damage one file: flip a byte, overwrite it with random bytes, or truncate it."""
    file = path / target
    raw = bytearray(file.read_bytes()) if file.exists() else bytearray()
    if kind == "flip" and raw:
        raw[where % len(raw)] ^= data[0] if data and data[0] else 0xFF
    elif kind == "replace":
        raw = bytearray(data)
    elif kind == "truncate":
        raw = raw[: where % (len(raw) + 1)]
    elif kind == "splice" and raw:
        at = where % len(raw)
        raw[at : at + len(data)] = data
    file.write_bytes(bytes(raw))


def _drain(path: Path, name: str) -> int:
    jlog = Jlog.open(path)
    with jlog.reader(name) as reader:
        count = 0
        while batch := reader.read_batch():
            count += len(batch)
            reader.checkpoint(batch[-1].id)
        return count


@settings(
    max_examples=200,
    deadline=5000,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    compress=st.booleans(),
    target=st.sampled_from(_TARGETS),
    kind=st.sampled_from(["flip", "flip", "flip", "replace", "truncate", "splice"]),
    where=st.integers(0, 1 << 16),
    data=st.binary(min_size=1, max_size=40),
)
def test_damaged_files_raise_only_documented_errors(
    compress: bool, target: str, kind: str, where: int, data: bytes
) -> None:
    """Damaged jlogs raise only MhafailError anywhere; after a clean repair, reads work."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "j"
        shutil.copytree(_BASES[compress], path)
        _mutate(path, target, kind, where, data)
        for name in ("s", "t"):
            with contextlib.suppress(MhafailError):
                _drain(path, name)
        try:
            inspect(path)
            report = repair(path)
        except MhafailError:
            return
        if report.remaining:
            return
        assert inspect(path).ok
        for name in ("s", "t"):
            if (path / ("cp." + name.encode().hex())).exists():
                _drain(path, name)


def test_fuzz_base_is_healthy() -> None:
    """The undamaged base jlogs inspect clean and read whole."""
    for base in _BASES.values():
        assert inspect(base).ok
    assert os.path.exists(_BASES[False] / "00000002")
